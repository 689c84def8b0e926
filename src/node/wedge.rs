//! Whether a staged mount is wedged: its metadata master answers, yet the mount has
//! answered nothing for `--wedged-after`. juicefs 1.4.2 can keep a request that was
//! in flight across a metadata outage for minutes after the server is back
//! (docs/notes.md, "A call in flight across a metadata outage"); its daemon still
//! serves its own files, so the stuck-daemon watch never fires, and a slow master is
//! no reason to act. Only the two together are.
//!
//! "Answers nothing" is read two ways, because juicefs answers a stat of its root
//! even when it cannot reach the server (it falls back to a made-up attribute after
//! 300 ms), so a stat alone does not see the wedge that was found:
//!
//! - the root does not answer a stat within the probe timeout; or
//! - the kernel has requests waiting on the mount's FUSE connection
//!   (`/sys/fs/fuse/connections/<minor>/waiting`) at every pass, and juicefs has
//!   completed no operation but the kinds kelp's own probes make (`getattr`,
//!   `lookup`, `statfs`), no object request and hardly a transaction, as its own
//!   counters say ([`progress`]).
//!
//! The decision lives here, apart from the probes and the kill (`repair`), so the
//! clock's rules are unit-tested: it starts at the first pass that sees the master
//! answer and the mount silent, and any pass that sees the master down (an outage
//! is a stall, judged from its end), nothing waiting, or progress, starts it over.

use crate::volume::VolumeId;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// What one repair pass saw of a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The volume's metadata master answered a PING.
    pub master: bool,
    /// A stat of the mount's root answered within the probe timeout.
    pub root: bool,
    /// Requests waiting on the mount's FUSE connection; `None` when unknown (no
    /// fusectl), which leaves only the root's silence to go by.
    pub waiting: Option<u64>,
    /// juicefs's count of completed operations that show progress ([`progress`]);
    /// `None` when its metrics could not be read.
    pub progress: Option<u64>,
}

impl Seen {
    /// A mount that is not there to judge (dead or missing: repair remounts it).
    pub fn gone() -> Seen {
        Seen { master: false, root: false, waiting: None, progress: None }
    }
}

/// What to do about a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Answers, is idle, or its master does not answer (a stall, not a wedge).
    Fine,
    /// Silent while the master answers, for this long: not yet the bound.
    Silent(Duration),
    /// Silent while the master answers for at least the bound: heal it.
    Wedged(Duration),
}

/// A silence being timed: since when, and the progress count it started at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Silence {
    pub since: Instant,
    pub progress: Option<u64>,
}

/// The judgement of one pass, given the silence running before it (if any). Returns
/// the silence to remember and the verdict.
pub fn judge(prev: Option<Silence>, seen: Seen, now: Instant, bound: Duration) -> (Option<Silence>, Verdict) {
    if !seen.master {
        return (None, Verdict::Fine);
    }
    let stuck_requests = seen.waiting.is_some_and(|w| w > 0) && seen.progress.is_some();
    if seen.root && !stuck_requests {
        return (None, Verdict::Fine);
    }
    let silence = match prev {
        // Progress since the silence began: a busy mount, not a wedged one; time
        // afresh from here.
        Some(p) if seen.root && p.progress != seen.progress => {
            Silence { since: now, progress: seen.progress }
        }
        Some(p) => p,
        None => Silence { since: now, progress: seen.progress },
    };
    let silent = now.saturating_duration_since(silence.since);
    let verdict = if silent >= bound { Verdict::Wedged(silent) } else { Verdict::Silent(silent) };
    (Some(silence), verdict)
}

/// How many metadata transactions count as one step of progress. A blocked lock
/// request (`flock`, `F_SETLKW`) retries its transaction every 1 to 10 ms, so a
/// waiting lock shows as progress within a second; juicefs's own background
/// transactions (a session refresh every 12 s) cross a step about once in 13
/// minutes, too seldom to hide a wedge.
const TRANSACTIONS_PER_STEP: f64 = 64.0;

/// The progress count in a juicefs scrape: its completed FUSE operations except
/// those kelp's own probes and stats cause, its object requests (a long upload
/// shows progress there while the FUSE call that waits for it does not), and its
/// metadata transactions in steps of [`TRANSACTIONS_PER_STEP`].
pub fn progress(scrape: &str) -> Option<u64> {
    let mut found = false;
    let mut sum = 0f64;
    for line in scrape.lines() {
        let weight = if let Some(rest) = line.strip_prefix("juicefs_fuse_ops_total{") {
            found = true;
            let probe =
                ["getattr", "lookup", "statfs"].iter().any(|m| rest.contains(&format!("method=\"{m}\"")));
            if probe {
                0.0
            } else {
                1.0
            }
        } else if line.starts_with("juicefs_object_request_durations_histogram_seconds_count{") {
            1.0
        } else if line.starts_with("juicefs_transaction_durations_histogram_seconds_count") {
            1.0 / TRANSACTIONS_PER_STEP
        } else {
            0.0
        };
        if let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).filter(|_| weight > 0.0)
        {
            found = true;
            sum += v * weight;
        }
    }
    found.then_some(sum.floor() as u64)
}

/// Where fusectl lists the kernel's FUSE connections.
pub const FUSECTL: &str = "/sys/fs/fuse/connections";

/// Mounts fusectl at [`FUSECTL`] when nothing is mounted there (systemd does so on
/// most hosts; a plugin's container or a bare host may not have it). Returns whether
/// the connections can be read; without them only a root that does not answer a
/// stat counts as a wedge.
pub fn ensure_fusectl() -> bool {
    let dir = Path::new(FUSECTL);
    let mounted = super::mount::mount_at(dir).is_some_and(|m| m.fs_type == "fusectl");
    mounted || (dir.is_dir() && sys_mount::Mount::builder().fstype("fusectl").mount("fusectl", dir).is_ok())
}

/// Requests waiting on the FUSE connection of the mount whose device is `device`
/// (`major:minor` from mountinfo): fusectl names each connection by its minor.
pub fn waiting(connections: &Path, device: &str) -> Option<u64> {
    let minor = device.split(':').nth(1)?;
    std::fs::read_to_string(connections.join(minor).join("waiting")).ok()?.trim().parse().ok()
}

/// Since when each staged volume has been silent while its master answered.
#[derive(Default)]
pub struct Watch(HashMap<VolumeId, Silence>);

impl Watch {
    /// Judges this pass for `id` and remembers the silence. A wedged verdict
    /// forgets it: the heal starts a new daemon, which is judged afresh.
    pub fn judge(&mut self, id: &VolumeId, seen: Seen, bound: Duration) -> Verdict {
        let (silence, verdict) = judge(self.0.get(id).copied(), seen, Instant::now(), bound);
        match (silence, verdict) {
            (Some(s), Verdict::Silent(_)) => {
                self.0.insert(id.clone(), s);
            }
            _ => {
                self.0.remove(id);
            }
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(30);
    /// The wedge that was found: the root answers (juicefs makes its attributes up),
    /// one request waits, and nothing completes.
    const STUCK: Seen = Seen { master: true, root: true, waiting: Some(1), progress: Some(7) };

    #[test]
    fn an_answering_idle_or_busy_mount_is_fine() {
        let t = Instant::now();
        let idle = Seen { waiting: Some(0), ..STUCK };
        assert_eq!(judge(None, idle, t, BOUND), (None, Verdict::Fine));
        let unknown = Seen { waiting: None, ..STUCK };
        assert_eq!(judge(None, unknown, t, BOUND), (None, Verdict::Fine));
        let no_metrics = Seen { progress: None, ..STUCK };
        assert_eq!(judge(None, no_metrics, t, BOUND), (None, Verdict::Fine));
    }

    #[test]
    fn without_its_master_a_silent_mount_is_a_stall() {
        let t = Instant::now();
        let prev = Some(Silence { since: t, progress: Some(7) });
        for root in [true, false] {
            let down = Seen { master: false, root, ..STUCK };
            assert_eq!(judge(prev, down, t + BOUND * 10, BOUND), (None, Verdict::Fine));
        }
    }

    #[test]
    fn waiting_requests_without_progress_are_wedged_at_the_bound() {
        let t = Instant::now();
        let (s, v) = judge(None, STUCK, t, BOUND);
        assert_eq!(v, Verdict::Silent(Duration::ZERO));
        let almost = t + BOUND - Duration::from_secs(1);
        assert_eq!(judge(s, STUCK, almost, BOUND).1, Verdict::Silent(BOUND - Duration::from_secs(1)));
        assert_eq!(judge(s, STUCK, t + BOUND, BOUND), (s, Verdict::Wedged(BOUND)));
    }

    #[test]
    fn progress_restarts_the_clock() {
        let t = Instant::now();
        let (s, _) = judge(None, STUCK, t, BOUND);
        let moved = Seen { progress: Some(8), ..STUCK };
        let (s2, v) = judge(s, moved, t + BOUND, BOUND);
        assert_eq!(v, Verdict::Silent(Duration::ZERO));
        assert_eq!(s2, Some(Silence { since: t + BOUND, progress: Some(8) }));
    }

    #[test]
    fn a_root_that_does_not_answer_is_silence_whatever_else() {
        let t = Instant::now();
        let hung = Seen { master: true, root: false, waiting: None, progress: None };
        let (s, _) = judge(None, hung, t, BOUND);
        assert_eq!(judge(s, hung, t + BOUND, BOUND).1, Verdict::Wedged(BOUND));
        // Counters that move do not excuse a root that does not answer.
        let (s, _) = judge(None, Seen { root: false, ..STUCK }, t, BOUND);
        let moved = Seen { root: false, progress: Some(99), ..STUCK };
        assert_eq!(judge(s, moved, t + BOUND, BOUND).1, Verdict::Wedged(BOUND));
    }

    #[test]
    fn the_watch_forgets_on_recovery_and_on_a_verdict() {
        let mut w = Watch::default();
        let id = VolumeId::parse("kelp1:3:0a1b2c3d:abc").expect("an id");
        assert_eq!(w.judge(&id, STUCK, BOUND), Verdict::Silent(Duration::ZERO));
        assert_eq!(w.judge(&id, Seen { master: false, ..STUCK }, BOUND), Verdict::Fine);
        assert!(w.0.is_empty());
        assert!(matches!(w.judge(&id, STUCK, BOUND), Verdict::Silent(d) if d < Duration::from_secs(1)));
        assert!(matches!(w.judge(&id, STUCK, Duration::ZERO), Verdict::Wedged(_)));
        assert!(w.0.is_empty());
    }

    #[test]
    fn progress_counts_what_kelp_does_not_cause() {
        let scrape = "\
# HELP juicefs_fuse_ops_total FUSE operations
juicefs_fuse_ops_total{instance=\"vm\",method=\"create\"} 1
juicefs_fuse_ops_total{instance=\"vm\",method=\"getattr\"} 40
juicefs_fuse_ops_total{instance=\"vm\",method=\"lookup\"} 9
juicefs_fuse_ops_total{instance=\"vm\",method=\"statfs\"} 3
juicefs_fuse_ops_total{instance=\"vm\",method=\"write\"} 5
juicefs_fuse_ops_totally_other 100
juicefs_object_request_durations_histogram_seconds_count{instance=\"vm\",method=\"PUT\",storage_class=\"STANDARD\"} 2
juicefs_object_request_durations_histogram_seconds_sum{method=\"PUT\"} 0.5
juicefs_transaction_durations_histogram_seconds_count{instance=\"vm\"} 130
";
        assert_eq!(progress(scrape), Some(10), "1 + 5 + 2, and 130 transactions are 2 steps");
        assert_eq!(progress("juicefs_fuse_ops_total{method=\"getattr\"} 4\n"), Some(0));
        assert_eq!(progress("juicefs_other 4\n"), None);
    }

    #[test]
    fn waiting_is_read_by_the_connection_minor() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("52")).unwrap();
        std::fs::write(dir.path().join("52/waiting"), "3\n").unwrap();
        assert_eq!(waiting(dir.path(), "0:52"), Some(3));
        assert_eq!(waiting(dir.path(), "0:53"), None);
        assert_eq!(waiting(dir.path(), "bogus"), None);
    }
}
