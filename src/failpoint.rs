//! Crash injection for the crash-safety tests: when `KELP_FAILPOINT` names a point,
//! the process aborts there, exactly as a `kill -9` at that instant would leave it.
//! Unset in production; reading it costs one comparison per point.

use std::sync::OnceLock;

fn armed() -> Option<&'static str> {
    static POINT: OnceLock<Option<String>> = OnceLock::new();
    POINT.get_or_init(|| std::env::var("KELP_FAILPOINT").ok().filter(|s| !s.is_empty())).as_deref()
}

/// Aborts the process if `name` is the armed point.
pub fn hit(name: &str) {
    if armed() == Some(name) {
        eprintln!("kelp: failpoint {name} reached, aborting");
        std::process::abort();
    }
}

/// Panics if `name` is the armed point, once: the first time it writes the file named
/// by `KELP_FAILPOINT_ONCE` and later runs (a restarted process) pass. The driver is
/// built with `panic = "abort"`, so a panic anywhere ends the process, as a bug would.
pub fn panic_once(name: &str) {
    if armed() != Some(name) {
        return;
    }
    if let Ok(marker) = std::env::var("KELP_FAILPOINT_ONCE") {
        if std::fs::OpenOptions::new().write(true).create_new(true).open(&marker).is_err() {
            return;
        }
    }
    panic!("kelp: failpoint {name} reached, panicking");
}
