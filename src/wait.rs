//! Bounded polling for conditions only the outside world changes (a mount becoming
//! ready, a replicated fence, a new capacity seen by a client): one loop instead of a
//! hand-written one at every such place.

use std::future::Future;
use std::time::{Duration, Instant};

/// Calls `check` every `every` until it returns `Some` or `within` has passed; a
/// last check runs at the deadline. Returns what the check found, or `None`.
pub async fn poll_until<T, F, Fut>(within: Duration, every: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        tokio::time::sleep(every.min(deadline - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_first_success_or_none_at_the_deadline() {
        let mut n = 0;
        let got = poll_until(Duration::from_secs(1), Duration::from_millis(1), || {
            n += 1;
            let v = (n == 3).then_some(n);
            async move { v }
        })
        .await;
        assert_eq!(got, Some(3));
        let never: Option<()> =
            poll_until(Duration::from_millis(20), Duration::from_millis(5), || async { None }).await;
        assert_eq!(never, None);
    }
}
