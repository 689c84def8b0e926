//! NodeGetVolumeStats and NodeExpandVolume's wait: usage from statfs of the mount
//! (JuiceFS reports its Capacity as the size) and a condition that names the fault.

use super::core::{NodeCore, PROBE_TIMEOUT};
use super::mount::{self, Health};
use crate::backup::policy;
use crate::error::{Error, Result};
use crate::proto::csi::{volume_usage::Unit, VolumeCondition, VolumeUsage};
use std::path::Path;
use std::time::Duration;

/// statfs on a blocking thread with a timeout, so a hung FUSE server cannot hang the
/// RPC that asked.
pub(super) async fn statfs(path: &Path) -> Option<nix::sys::statvfs::Statvfs> {
    let p = path.to_path_buf();
    let probe = tokio::task::spawn_blocking(move || nix::sys::statvfs::statvfs(&p));
    tokio::time::timeout(PROBE_TIMEOUT, probe).await.ok()?.ok()?.ok()
}

impl NodeCore {
    /// Usage of the mount at `path` and its condition (abnormal when the mount or the
    /// metadata server is gone, and when the metadata backups of `family`, the volume's
    /// file system, are missing or stale).
    pub async fn stats(
        &self,
        path: &Path,
        home: Option<&str>,
        family: &str,
    ) -> (Vec<VolumeUsage>, VolumeCondition) {
        let health = mount::health(path, PROBE_TIMEOUT).await;
        let server = self.server_for(home).unwrap_or_else(|_| self.meta.clone());
        let meta = server.ping().await;
        let via = match home {
            Some(_) => format!("metadata: the volume's home master {}", server.url()),
            None => format!("metadata: this node's master {}", server.url()),
        };
        let abnormal = |message: String| VolumeCondition { abnormal: true, message };
        let condition = match (&health, &meta) {
            (Health::Alive { .. }, Ok(())) => {
                VolumeCondition { abnormal: false, message: format!("mounted, {via}") }
            }
            (Health::Alive { .. }, Err(e)) => abnormal(e.to_string()),
            (Health::Dead, _) => abnormal(format!(
                "the JuiceFS mount is dead (transport endpoint is not connected); kelp remounts it; {via}"
            )),
            (Health::Hung, _) => abnormal(format!("the JuiceFS mount does not answer; {via}")),
            (Health::Missing, _) => abnormal("the volume path is missing".into()),
        };
        let stat = match health {
            Health::Alive { .. } => statfs(path).await,
            _ => None,
        };
        // A full volume fails every write (ENOSPC at the root layout's capacity, EDQUOT
        // at the tree layout's directory quota) while the mount is healthy.
        let condition = match &stat {
            Some(s) if !condition.abnormal && s.blocks() > 0 && s.blocks_available() == 0 => abnormal(format!(
                "capacity exhausted: the volume is full ({} bytes); delete files or expand it (ControllerExpandVolume); {via}",
                s.blocks() * s.fragment_size()
            )),
            Some(s) if !condition.abnormal && s.files() > 0 && s.files_free() == 0 => abnormal(format!(
                "capacity exhausted: the volume's inode limit ({} files) is reached; {via}",
                s.files()
            )),
            _ => condition,
        };
        let condition = match self.backup_health(family).await {
            Some((faulty, note)) if faulty && !condition.abnormal => {
                abnormal(format!("{note}; {}", condition.message))
            }
            Some((faulty, note)) => VolumeCondition {
                abnormal: condition.abnormal || faulty,
                message: format!("{}; {note}", condition.message),
            },
            None => condition,
        };
        (stat.map(usage).unwrap_or_default(), condition)
    }

    /// What the family's backups add to its health ([`policy::health`]), from the
    /// registry's record of its last good backup (one read; the volume record too
    /// while it has none). Nothing when backups are off or the registry does not
    /// answer within the probe timeout: the mount's own health is what the call is for.
    async fn backup_health(&self, family: &str) -> Option<(bool, String)> {
        let interval = self.cfg.backup_interval;
        if interval == 0 {
            return None;
        }
        let read = async {
            let last = self.registry.last_backup(family).await.ok()?;
            let created = match last {
                Some(_) => None,
                None => {
                    let rec = self.registry.volume(family).await.ok()??;
                    crate::volume::Spec::of(&rec).ok().map(|s| s.created_unix)
                }
            };
            Some((last.map(|r| r.taken_unix), created))
        };
        let (last, created) = tokio::time::timeout(PROBE_TIMEOUT, read).await.ok()??;
        policy::health(last, created, crate::unix_now(), interval)
    }
}

/// The condition of a fenced mount, told without touching it (a stalled one would
/// not answer).
pub fn fenced_condition(f: &super::state::Fenced) -> VolumeCondition {
    let message = match f {
        super::state::Fenced::Stalled { since_unix } => format!(
            "fenced: this node's lease lapsed {} s ago (the registry server is unreachable); I/O waits until it is renewed",
            crate::unix_now() - since_unix
        ),
        super::state::Fenced::TakenOver { by_node } => format!(
            "fenced: node {by_node:?} took the volume over while this node was cut off; every access here fails until the task is stopped"
        ),
    };
    VolumeCondition { abnormal: true, message }
}

fn usage(s: nix::sys::statvfs::Statvfs) -> Vec<VolumeUsage> {
    let bsize = s.fragment_size();
    let total = s.blocks() * bsize;
    let files = s.files();
    let ffree = s.files_free();
    vec![
        VolumeUsage {
            available: (s.blocks_available() * bsize) as i64,
            total: total as i64,
            used: total.saturating_sub(s.blocks_free() * bsize) as i64,
            unit: Unit::Bytes as i32,
        },
        VolumeUsage {
            available: ffree as i64,
            total: files as i64,
            used: files.saturating_sub(ffree) as i64,
            unit: Unit::Inodes as i32,
        },
    ]
}

/// Waits until statfs of the mount shows at least `wanted` bytes (clients pick up a new
/// Capacity on their heartbeat); returns the size seen.
pub async fn wait_for_capacity(path: &Path, wanted: u64, within: Duration) -> Result<u64> {
    let size = || async { statfs(path).await.map(|s| s.blocks() * s.fragment_size()) };
    let seen = crate::wait::poll_until(within, Duration::from_millis(500), || async {
        size().await.filter(|total| wanted == 0 || *total >= wanted)
    })
    .await;
    match seen {
        Some(total) => Ok(total),
        None => Err(Error::Unavailable(format!(
            "the mount at {path:?} still shows {} bytes, not {wanted}; JuiceFS applies a new capacity on its next heartbeat, retry shortly",
            size().await.unwrap_or(0)
        ))),
    }
}
