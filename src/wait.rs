//! Waiting for what only the outside world changes (a mount becoming ready, a
//! replicated fence, a master coming back, a crashed server): bounded polling and
//! retry schedules, written once instead of a hand-made loop at every such place.

use backon::{BackoffBuilder, ExponentialBuilder};
use std::future::Future;
use std::time::{Duration, Instant};

/// An endless retry schedule: pauses double from `first` up to `cap`, each with
/// random jitter of up to its own length, so that nodes restarted together do not
/// retry in lockstep against the same server.
pub fn backoff(first: Duration, cap: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::new()
        .with_min_delay(first)
        .with_max_delay(cap)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Calls `check` until it returns `Some` or `within` has passed; a last check runs at
/// the deadline. Pauses start at a sixteenth of `every` and grow to `every`, so a
/// condition that is met quickly is seen quickly and a slow one is not polled hard.
/// Returns what the check found, or `None`.
pub async fn poll_until<T, F, Fut>(within: Duration, every: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    let mut pauses = ExponentialBuilder::new()
        .with_min_delay(every / 16)
        .with_max_delay(every)
        .without_max_times()
        .build();
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        let pause = pauses.next().unwrap_or(every);
        tokio::time::sleep(pause.min(deadline - now)).await;
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

    #[test]
    fn backoff_grows_to_its_cap_and_goes_on() {
        let (first, cap) = (Duration::from_millis(100), Duration::from_secs(2));
        let pauses: Vec<_> = backoff(first, cap).take(50).collect();
        assert_eq!(pauses.len(), 50, "the schedule never ends by itself");
        assert!(pauses[0] >= first && pauses[0] < 2 * first, "{:?}", pauses[0]);
        // Jitter adds at most the pause itself, so no pause exceeds twice the cap.
        assert!(pauses.iter().all(|&p| p >= first && p < 2 * cap), "{pauses:?}");
        assert!(pauses[40..].iter().all(|&p| p >= cap), "{pauses:?}");
    }
}
