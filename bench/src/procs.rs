//! Finding the mount processes a measurement prices (their memory) by an argument
//! they were started with: kelp's juicefs by its `--log=` path, `weed mount` and a
//! by-hand juicefs by their mount point.

/// Pids of the processes one of whose arguments is exactly `arg`.
pub(crate) fn with_arg(arg: &str) -> Vec<i32> {
    with_an_arg(|a| a == arg)
}

/// Pids of the processes one of whose arguments satisfies `wanted`.
pub(crate) fn with_an_arg(wanted: impl Fn(&str) -> bool) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            // juicefs rewrites its argv in place, so arguments may be NUL- or space-separated.
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let line = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            line.split(' ').any(&wanted).then_some(pid)
        })
        .collect()
}
