//! Bounded polling: the one way tests wait for something another process changes.

use std::time::{Duration, Instant};

/// Calls `check` every `every` until it returns `Some` or `within` has passed; a last
/// check runs at the deadline. Returns what the check found, or `None`.
pub fn poll_until<T>(within: Duration, every: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(every.min(deadline - now));
    }
}

/// [`poll_until`] for async tests: the crate's own bounded poll, whose check may await
/// and whose pause does not block the runtime.
pub use kelp::wait::poll_until as poll_until_async;
