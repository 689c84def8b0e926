//! Processes the tests start or must end, always by pid: children are killed when
//! their handle drops, shared servers when the test binary exits, and daemons the
//! tests did not start themselves are found through /proc, never by a pattern.

use std::process::Child;
use std::sync::{Mutex, OnceLock};

/// A process killed (by pid) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// Kills it. A supervising script (`*.sh`) loses whatever it started first (its
    /// server, its pollers), so a test that panics half-way leaves none of them
    /// holding a port; other processes' children are left alone (a killed driver's
    /// mounts must outlive it).
    pub fn kill(&mut self) {
        if self.name.ends_with(".sh") && self.is_running() {
            let mut below = children(self.pid() as i32);
            let mut i = 0;
            while i < below.len() {
                let more = children(below[i]);
                below.extend(more);
                i += 1;
            }
            kill_pids(&below);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Pids of shared servers, killed at exit.
static SHARED_PIDS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

extern "C" fn kill_shared() {
    if let Ok(pids) = SHARED_PIDS.lock() {
        kill_pids(&pids);
    }
}

/// Kills `pid` when the test binary exits (for servers shared by its tests).
pub fn register_shared(pid: u32) {
    static HOOK: OnceLock<()> = OnceLock::new();
    HOOK.get_or_init(|| unsafe {
        libc::atexit(kill_shared);
    });
    SHARED_PIDS.lock().unwrap().push(pid as i32);
}

/// The command line of `pid`, its arguments joined by spaces (as `ps` shows it).
pub fn cmdline(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " ").trim_end().to_string())
}

/// The direct children of `pid`.
pub fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| c.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<i32>>())
        .collect()
}

/// Pids (other than this process) whose command line contains `needle`, from
/// /proc/*/cmdline.
pub fn pids_with_cmdline(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me && cmdline(pid).is_some_and(|c| c.contains(needle)))
        .collect()
}

/// `juicefs mount` processes whose command line contains `needle`. juicefs rewrites
/// its own command line (hiding the metadata URL), so tests find the daemons kelp
/// started by the log file kelp gave them (`<state dir>/logs/<fs name>[.<member>].log`).
pub fn juicefs_pids_with(needle: &str) -> Vec<i32> {
    pids_with_cmdline(needle)
        .into_iter()
        .filter(|&pid| cmdline(pid).is_some_and(|c| c.contains("juicefs mount")))
        .collect()
}

pub fn kill_pids(pids: &[i32]) {
    for &pid in pids {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}
