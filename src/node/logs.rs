//! Bounding the logs the node's helpers write: each volume's juicefs log and FUSE
//! holder log in the node's log directory. Nothing else rotates them, and a node
//! keeps volumes for months, so the node does: on each repair pass, a log over the
//! cap is copied to `<log>.1` (replacing the previous one) and truncated in place.
//! The writers keep their descriptors, opened with `O_APPEND`, so their next line
//! lands at the new end; the lines written between the copy and the truncation are
//! lost, the usual price of copy-and-truncate for a writer that cannot be told to
//! reopen. A log is thus at most the cap plus one pass's writing, and its `.1` at
//! most that again. The logs of a volume no longer staged here are removed once
//! nothing has written them for [`KEEP_UNSTAGED`], so volumes that come and go do not
//! leave their logs behind for good.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the logs of a volume no longer staged here are kept after their last line.
pub const KEEP_UNSTAGED: Duration = Duration::from_secs(7 * 24 * 3600);

/// The mount name a file of the log directory belongs to: `<name>.log`,
/// `<name>.holder.log` and their `.1` copies.
fn mount_name(file: &str) -> Option<&str> {
    let file = file.strip_suffix(".1").unwrap_or(file);
    let file = file.strip_suffix(".log")?;
    Some(file.strip_suffix(".holder").unwrap_or(file))
}

/// Whether `file`, unwritten for `age`, is a log of a volume not staged here (`staged`
/// holds their mount names) that has been kept long enough.
pub fn stale(file: &str, age: Duration, staged: &HashSet<String>, keep: Duration) -> bool {
    mount_name(file).is_some_and(|m| !staged.contains(m)) && age >= keep
}

/// The previous file of `log`, kept after a rotation.
pub fn previous(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Whether a file of `len` bytes named `name` is a log this node bounds, and is over
/// `cap`: the helpers' `.log` files, not the kept `.1` copies.
pub fn needs_rotation(name: &str, len: u64, cap: u64) -> bool {
    name.ends_with(".log") && len > cap
}

/// Copies `log` to its previous file and truncates it, if it is over `cap`; returns
/// the size it had when rotated.
pub fn rotate_if_over(log: &Path, cap: u64) -> io::Result<Option<u64>> {
    let len = std::fs::metadata(log)?.len();
    let name = log.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if !needs_rotation(name, len, cap) {
        return Ok(None);
    }
    let prev = previous(log);
    let tmp = prev.with_extension("1.tmp");
    std::fs::copy(log, &tmp)?;
    std::fs::rename(&tmp, &prev)?;
    std::fs::OpenOptions::new().write(true).open(log)?.set_len(0)?;
    Ok(Some(len))
}

/// Removes the stale logs in `dir` (see [`stale`]) and rotates every other one that
/// is over `cap`; returns the rotated files with the sizes they had.
pub fn bound(dir: &Path, cap: u64, staged: &HashSet<String>, keep: Duration) -> Vec<(PathBuf, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| {
            let path = e.path();
            let age = e.metadata().ok()?.modified().ok()?.elapsed().unwrap_or_default();
            if stale(&e.file_name().to_string_lossy(), age, staged, keep) {
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        tracing::info!(log = ?path, "removed the log of a volume no longer staged here")
                    }
                    Err(err) => tracing::warn!(log = ?path, error = %err, "cannot remove an old log"),
                }
                return None;
            }
            match rotate_if_over(&path, cap) {
                Ok(rotated) => rotated.map(|len| (path, len)),
                Err(err) => {
                    tracing::warn!(log = ?path, error = %err, "cannot rotate a log over its cap");
                    None
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn only_logs_over_the_cap_rotate() {
        assert!(!needs_rotation("vol.log", 100, 100), "at the cap");
        assert!(needs_rotation("vol.log", 101, 100));
        assert!(needs_rotation("vol.holder.log", 101, 100));
        assert!(!needs_rotation("vol.log.1", 10_000, 100), "the kept copy is never rotated again");
        assert!(!needs_rotation("node-state.json", 10_000, 100));
        assert_eq!(previous(Path::new("/l/vol.log")), Path::new("/l/vol.log.1"));
    }

    #[test]
    fn only_old_logs_of_volumes_not_staged_here_go() {
        let staged: HashSet<String> = ["fs.abc".to_string()].into();
        let (week, hour) = (KEEP_UNSTAGED, Duration::from_secs(3600));
        for f in ["fs.def.log", "fs.def.holder.log", "fs.def.log.1", "fs.def.holder.log.1", "plain.log"] {
            assert!(stale(f, week, &staged, week), "{f}");
            assert!(!stale(f, hour, &staged, week), "{f} is recent");
        }
        for f in ["fs.abc.log", "fs.abc.holder.log", "fs.abc.log.1", "node-state.json", "x.lock"] {
            assert!(!stale(f, week * 10, &staged, week), "{f}");
        }
    }

    #[test]
    fn a_writer_holding_the_log_open_goes_on_at_its_new_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("vol.holder.log");
        let mut writer = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        writer.write_all(&[b'x'; 300]).unwrap();
        assert_eq!(rotate_if_over(&log, 1000).unwrap(), None);
        writer.write_all(&[b'y'; 800]).unwrap();
        let staged: HashSet<String> = ["vol".to_string()].into();
        let rotated = bound(dir.path(), 1000, &staged, KEEP_UNSTAGED);
        assert_eq!(rotated, vec![(log.clone(), 1100)]);
        assert_eq!(std::fs::metadata(previous(&log)).unwrap().len(), 1100);
        writer.write_all(b"after\n").unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), b"after\n", "appended at the start, no hole");
        // A second rotation replaces the kept copy, which is never rotated itself.
        writer.write_all(&[b'z'; 2000]).unwrap();
        assert_eq!(bound(dir.path(), 1000, &staged, KEEP_UNSTAGED).len(), 1);
        assert_eq!(std::fs::metadata(previous(&log)).unwrap().len(), 2006);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "the log and one previous file");
        // Once the volume is no longer staged here, its logs go when old enough.
        bound(dir.path(), 1000, &HashSet::new(), Duration::ZERO);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
