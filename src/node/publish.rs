//! Publishing: bind mounts of the staged volume into task targets, and their removal.
//! The last target going is the release a next single-node writer waits for.

use super::core::NodeCore;
use super::mount;
use super::state::StagedVolume;
use crate::error::{Error, Result};
use crate::volume::VolumeId;
use std::path::Path;
use tracing::{info, warn};

impl NodeCore {
    /// Bind-mounts the staged volume at `target`.
    pub async fn publish(&self, id: &VolumeId, target: &Path, read_only: bool) -> Result<()> {
        let Some(v) = self.staged(id) else {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is not staged on this node; stage it first"
            )));
        };
        super::lease::refuse_fenced(id, &v)?;
        if let Some(&ro) = v.targets.get(target) {
            if mount::mount_at(target).is_some_and(|m| m.is_juicefs_of(&id.fs_name)) {
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
        let read_only = read_only || v.read_only;
        let created = self.bind_target(id, &v, target, read_only)?;
        info!(volume_id = %id, target = ?target, read_only, "published");
        self.update(|s| {
            if let Some(v) = s.volumes.get_mut(id) {
                v.targets.insert(target.to_path_buf(), read_only);
                v.idle_since = None;
                v.created.extend(created);
            }
        })
        .await
    }

    /// Binds the staging mount onto `target` through descriptors of the checked
    /// directories, never onto a path that already holds a mount (no stacking).
    /// Returns the directories it had to create.
    pub(super) fn bind_target(
        &self,
        id: &VolumeId,
        v: &StagedVolume,
        target: &Path,
        read_only: bool,
    ) -> Result<Vec<std::path::PathBuf>> {
        if let Some(m) = mount::mount_at(target) {
            return Err(mount::Error::Foreign {
                path: target.display().to_string(),
                fs_type: m.fs_type,
                mounted: m.source,
            }
            .into());
        }
        let source = self.cfg.paths.open_dir(&v.staging_path, false)?;
        let dir = self.cfg.paths.open_dir(target, true)?;
        dir.seal(true);
        if let Err(e) = mount::bind(&source.proc_path(), &dir.proc_path()) {
            dir.seal(false);
            return Err(e.into());
        }
        if read_only {
            // A descriptor opened now resolves to the new mount's root.
            let remounted = self
                .cfg
                .paths
                .open_dir(target, false)
                .and_then(|mounted| mount::remount_read_only(&mounted.proc_path()).map_err(Error::from));
            if let Err(e) = remounted {
                let _ = mount::unmount_juicefs(target, &id.fs_name);
                dir.seal(false);
                return Err(e);
            }
        }
        Ok(dir.created)
    }

    /// Unmounts `target` if this node published the volume there; any other path is
    /// left alone (the spec's "OK, nothing to do").
    pub async fn unpublish(&self, id: &VolumeId, target: &Path) -> Result<()> {
        let Some(v) = self.staged(id).filter(|v| v.targets.contains_key(target)) else {
            warn!(volume_id = %id, target = ?target, "unpublish of a target this node did not publish; nothing done");
            return Ok(());
        };
        self.release_path(id, &v, target).await?;
        // The task is gone, so every file it wrote is closed and committed: the last
        // target going is the release a next writer waits for.
        let family = self.family_lock(id).await?;
        if v.targets.keys().all(|t| t == target) {
            self.leave_fence(id, &v).await?;
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
        drop(family);
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
