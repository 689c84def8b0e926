//! Decisions about backups, apart from taking them: when a family is due, which of its
//! backups to keep, what an object is called, and whether the last one is too old.

use crate::meta::VolumeState;
use std::collections::HashSet;

/// Where a family's backups live in its bucket: beside JuiceFS's data prefix
/// (`<fs name>/chunks/`), never under it, so `juicefs gc` never sees them.
pub const DIR: &str = "kelp-backups";
const SUFFIX: &str = ".kbak";

/// How many backups survive pruning: the newest of each of the last `hourly` hours
/// that have one, and of each of the last `daily` days (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub hourly: usize,
    pub daily: usize,
}

/// Whether a family whose last good backup was at `last` (none yet: `None`) is due at
/// `now`, with backups every `interval` seconds.
pub fn due(last: Option<i64>, now: i64, interval: u64) -> bool {
    match last {
        None => true,
        Some(t) => now - t >= interval as i64 || now < t,
    }
}

/// The backups to delete, given every backup's time: what no rule keeps. The newest
/// is always kept (it is the newest of its hour).
pub fn prune(times: &[i64], keep: Retention) -> Vec<i64> {
    let mut sorted: Vec<i64> = times.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted.dedup();
    let mut kept = HashSet::new();
    for (period, count) in [(3600, keep.hourly.max(1)), (86_400, keep.daily)] {
        let mut seen = Vec::new();
        for &t in &sorted {
            let bucket = t.div_euclid(period);
            if !seen.contains(&bucket) {
                if seen.len() == count {
                    break;
                }
                seen.push(bucket);
                kept.insert(t);
            }
        }
    }
    sorted.into_iter().filter(|t| !kept.contains(t)).collect()
}

/// Whether a last backup at `last` is older than twice the schedule (the alert's rule,
/// and the health line of `kelp admin volumes`).
pub fn stale(last: Option<i64>, now: i64, interval: u64) -> bool {
    interval > 0 && last.is_none_or(|t| now - t > 2 * interval as i64)
}

/// What a volume's health (NodeGetVolumeStats) says of its family's backups, and
/// whether that is a fault: `None` when backups are off (`interval` 0). `last`: the
/// last good backup's time; `created`: the family's, which gives a family that has
/// none yet its first interval (it is due at once, and backed up within a tick).
pub fn health(last: Option<i64>, created: Option<i64>, now: i64, interval: u64) -> Option<(bool, String)> {
    if interval == 0 {
        return None;
    }
    Some(match (last, created) {
        (Some(t), _) if stale(last, now, interval) => (
            true,
            format!(
                "metadata backup stale: the last good one is {} s old, more than twice the backup interval ({interval} s); losing the metadata cluster now loses every write since (`kelp admin volumes`, the controller's log)",
                now - t
            ),
        ),
        (Some(t), _) => (false, format!("last metadata backup {} s ago", now - t)),
        (None, Some(c)) if now - c <= interval as i64 => {
            (false, format!("no metadata backup yet (the first is due within {interval} s)"))
        }
        (None, _) => (
            true,
            format!(
                "no metadata backup: none was taken within the backup interval ({interval} s); losing the metadata cluster now loses the volume (`kelp admin volumes`, the controller's log)"
            ),
        ),
    })
}

/// What a backup that has just been written must undo, seen from the founder's
/// registry record read again afterwards. A DeleteVolume may have run while the
/// backup was read and written: the filer makes the directories it writes into, so
/// the object would bring the deleted bucket back, and the backup's record would
/// outlive the volume. (A delete marks the record `Deleting` before it deletes the
/// bucket, so a delete that started before this check is seen by it, and one that
/// starts after it deletes the object with the bucket.)
#[derive(Debug, PartialEq, Eq)]
pub enum Afterwards {
    /// The family is still there: keep the backup.
    Keep,
    /// The family is gone or going: drop the bucket (the delete drops it too) and the
    /// backup's record.
    DropBucket,
    /// The name now belongs to another volume: drop only this backup's object (and
    /// the record it wrote, as for `DropBucket`).
    DropObject,
}

/// `now`: the founder's record now, as (spec, state) (`None`: gone); `spec`: the one
/// the backup was taken of.
pub fn afterwards(now: Option<(&str, VolumeState)>, spec: &str) -> Afterwards {
    match now {
        Some((s, VolumeState::Ready | VolumeState::Retired)) if s == spec => Afterwards::Keep,
        None => Afterwards::DropBucket,
        Some((s, _)) if s == spec => Afterwards::DropBucket,
        Some(_) => Afterwards::DropObject,
    }
}

/// The object name of a backup taken at `unix`: UTC time, sortable, readable.
pub fn object_name(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z{SUFFIX}", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// The time an object name stands for, if it is one of [`object_name`]'s.
pub fn time_of(name: &str) -> Option<i64> {
    let s = name.strip_suffix(SUFFIX)?;
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let n = |from: usize, to: usize| s.get(from..to)?.parse::<i64>().ok();
    let (y, m, d) = (n(0, 4)?, n(4, 6)?, n(6, 8)?);
    let (hh, mm, ss) = (n(9, 11)?, n(11, 13)?, n(13, 15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 59 {
        return None;
    }
    Some(days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Howard Hinnant's algorithms: days since 1970-01-01 to (year, month, day) and back.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + (m <= 2) as i64, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = y - (m <= 2) as i64;
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_utc_times_and_read_back() {
        assert_eq!(object_name(0), "19700101T000000Z.kbak");
        // 2026-12-07 19:40:32 UTC
        assert_eq!(object_name(1_796_672_432), "20261207T194032Z.kbak");
        for t in [0, 951_782_400, 1_796_672_432, 4_102_444_799] {
            assert_eq!(time_of(&object_name(t)), Some(t));
        }
        assert_eq!(time_of("20261307T194032Z.kbak"), None);
        assert_eq!(time_of("notes.txt"), None);
        assert_eq!(time_of("20261207T194032Z"), None);
    }

    #[test]
    fn a_family_is_due_after_its_interval_or_when_it_has_none() {
        assert!(due(None, 100, 600));
        assert!(!due(Some(100), 699, 600));
        assert!(due(Some(100), 700, 600));
        // A clock that went back must not stop backups until it catches up.
        assert!(due(Some(1000), 100, 600));
    }

    #[test]
    fn pruning_keeps_the_newest_of_each_recent_hour_and_day() {
        let keep = Retention { hourly: 2, daily: 2 };
        let h = 3600;
        let d = 86_400;
        // Every 10 min for 3 hours of day 10, then one on each of days 7, 8 and 9.
        let mut times: Vec<i64> = (0..18).map(|i| 10 * d + i * 600).collect();
        times.extend([7 * d + 5, 8 * d + 5, 9 * d + 5]);
        let gone = prune(&times, keep);
        let kept: Vec<i64> = times.iter().copied().filter(|t| !gone.contains(t)).collect();
        // Hours: the newest of hours 2 and 1 of day 10; days: day 10's newest and day 9's.
        let mut expected = vec![9 * d + 5, 10 * d + 11 * 600, 10 * d + 17 * 600];
        expected.sort_unstable();
        let mut kept = kept;
        kept.sort_unstable();
        assert_eq!(kept, expected);
        assert!(10 * d + 2 * h > 10 * d + 11 * 600);
        assert!(prune(&[5], Retention { hourly: 0, daily: 0 }).is_empty(), "the newest always stays");
    }

    #[test]
    fn a_backup_of_a_volume_deleted_meanwhile_is_undone() {
        use VolumeState::*;
        assert_eq!(afterwards(Some(("a", Ready)), "a"), Afterwards::Keep);
        assert_eq!(afterwards(Some(("a", Retired)), "a"), Afterwards::Keep);
        assert_eq!(afterwards(Some(("a", Deleting)), "a"), Afterwards::DropBucket);
        assert_eq!(afterwards(None, "a"), Afterwards::DropBucket);
        // Deleted and made again under the same name: its bucket is the new volume's.
        assert_eq!(afterwards(Some(("b", Ready)), "a"), Afterwards::DropObject);
        assert_eq!(afterwards(Some(("b", Creating)), "a"), Afterwards::DropObject);
    }

    #[test]
    fn the_health_line_faults_a_stale_or_missing_backup_only() {
        let faulty = |last, created, now| health(last, created, now, 600).map(|(f, _)| f);
        assert_eq!(faulty(Some(100), Some(0), 1300), Some(false));
        assert_eq!(faulty(Some(100), Some(0), 1301), Some(true));
        // None yet: fine for the first interval after the family was made, not after.
        assert_eq!(faulty(None, Some(100), 700), Some(false));
        assert_eq!(faulty(None, Some(100), 701), Some(true));
        assert_eq!(faulty(None, None, 100), Some(true), "a family with no known birth and no backup");
        assert_eq!(health(None, None, 100, 0), None, "backups off: nothing to say");
        let (_, text) = health(Some(100), None, 2000, 600).unwrap();
        assert!(text.contains("1900 s old") && text.contains("600 s"), "{text}");
        let (_, text) = health(Some(100), None, 160, 600).unwrap();
        assert_eq!(text, "last metadata backup 60 s ago");
    }

    #[test]
    fn a_backup_is_stale_after_twice_the_schedule() {
        assert!(stale(None, 100, 600));
        assert!(!stale(Some(100), 1300, 600));
        assert!(stale(Some(100), 1301, 600));
        assert!(!stale(None, 100, 0), "backups off: nothing to alert on");
    }
}
