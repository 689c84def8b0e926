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
    table().into_iter().filter(|p| p.args.iter().any(|a| wanted(a))).map(|p| p.pid).collect()
}

/// A process and its arguments, as one scan of /proc saw them.
#[derive(Debug, Clone, PartialEq)]
pub struct Process {
    pub pid: Pid,
    pub args: Vec<String>,
}

impl Process {
    /// The argument after `flag` (given as `flag value`).
    pub fn arg_after(&self, flag: &str) -> Option<&str> {
        self.args.iter().position(|a| a == flag).and_then(|i| self.args.get(i + 1)).map(String::as_str)
    }
}

/// Every process with a command line (not kernel threads, not zombies), in one scan.
pub fn table() -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args = split_args(&cmdline);
            (!args.is_empty()).then_some(Process { pid: Pid::from_raw(pid), args })
        })
        .collect()
}

/// juicefs rewrites its argv in place, so arguments may be NUL- or space-separated.
fn split_args(cmdline: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(cmdline)
        .replace('\0', " ")
        .split(' ')
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect()
}

/// Sends `signal` to each of `pids`; returns how many got it (a process that has just
/// ended is not an error).
pub fn signal(pids: &[Pid], signal: Signal) -> usize {
    pids.iter().filter(|p| kill(**p, signal).is_ok()).count()
}
