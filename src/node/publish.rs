//! Publishing: bind mounts of the staged volume into task targets, and their removal.
//! The last target going is the release a next single-node writer waits for.

use super::core::NodeCore;
use super::mount;
use crate::error::{Error, Result};
use crate::volume::VolumeId;
use std::path::Path;
use tracing::info;

impl NodeCore {
    /// Bind-mounts the staged volume at `target`.
    pub async fn publish(&self, id: &VolumeId, target: &Path, read_only: bool) -> Result<()> {
        let Some(v) = self.staged(id) else {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is not staged on this node; stage it first"
            )));
        };
        if let Some(&ro) = v.targets.get(target) {
            if mount::mount_at(target).is_some() {
                if ro != read_only {
                    return Err(Error::AlreadyExists(format!(
                        "{target:?} is already published with read_only={ro}"
                    )));
                }
                return Ok(());
            }
        } else if v.single_target && !v.targets.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is single-writer and already published at {:?}",
                v.targets.keys().next().map(|p| p.as_path()).unwrap_or(Path::new(""))
            )));
        }
        std::fs::create_dir_all(target).map_err(mount::io("create", target))?;
        mount::bind(&v.staging_path, target, read_only || v.read_only)?;
        info!(volume_id = %id, target = ?target, read_only, "published");
        self.update(|s| {
            if let Some(v) = s.volumes.get_mut(id) {
                v.targets.insert(target.to_path_buf(), read_only || v.read_only);
                v.idle_since = None;
            }
        })
        .await
    }

    /// Unmounts and removes `target`; unknown targets succeed.
    pub async fn unpublish(&self, id: &VolumeId, target: &Path) -> Result<()> {
        mount::unmount(target)?;
        mount::remove_dir(target)?;
        if let Some(v) = self.staged(id) {
            // The task is gone, so every file it wrote is closed and committed: the
            // last target going is the release a next writer waits for.
            if v.targets.keys().all(|t| t == target) {
                self.leave_fence(id, &v).await?;
            }
        }
        self.update(|s| {
            if let Some(v) = s.volumes.get_mut(id) {
                v.targets.remove(target);
                if v.targets.is_empty() {
                    v.idle_since = Some(crate::unix_now());
                }
            }
        })
        .await?;
        info!(volume_id = %id, target = ?target, "unpublished");
        Ok(())
    }

    /// Raises the epoch a publish gave this node.
    pub async fn note_epoch(&self, id: &VolumeId, epoch: u64) -> Result<()> {
        self.update(|s| {
            if let Some(v) = s.volumes.get_mut(id) {
                v.epoch = v.epoch.max(epoch);
            }
        })
        .await
    }
}
