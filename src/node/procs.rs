//! Finding and signalling this node's helper processes (juicefs daemons, FUSE
//! holders) by an argument only kelp gave them: kelp may have been restarted since it
//! started them, so it never relies on remembered pids.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The processes one of whose arguments is exactly `arg`.
pub fn with_arg(arg: &str) -> Vec<Pid> {
    with_an_arg(|a| a == arg)
}

/// The processes one of whose arguments satisfies `wanted`.
pub fn with_an_arg(wanted: impl Fn(&str) -> bool) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            // juicefs rewrites its argv in place, so arguments may be NUL- or space-separated.
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let line = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            line.split(' ').any(&wanted).then_some(Pid::from_raw(pid))
        })
        .collect()
}

/// Sends `signal` to each of `pids`; returns how many got it (a process that has just
/// ended is not an error).
pub fn signal(pids: &[Pid], signal: Signal) -> usize {
    pids.iter().filter(|p| kill(**p, signal).is_ok()).count()
}
