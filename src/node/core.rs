//! The node's mount logic, shared by the RPC handlers and the supervisor: stage,
//! publish, unpublish, unstage and repair one volume. Callers hold the volume's
//! operation guard; every method is idempotent.

use super::jfs::{JuicefsConfig, MountSpec};
use super::mount::{self, Health};
use super::state::{NodeState, StagedVolume, StateFile};
use crate::error::{Error, Result};
use crate::juicefs;
use crate::keydb::MetaServer;
use crate::locks::VolumeLocks;
use crate::volume::VolumeId;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use tracing::{info, warn};

/// How long a health probe of a mount may take before the mount counts as hung.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: String,
    pub max_volumes: i64,
    pub juicefs: JuicefsConfig,
    pub state_dir: PathBuf,
    /// A staged volume nothing publishes is released after this long (Swarm may never
    /// send NodeUnstageVolume).
    pub idle_release: Duration,
    /// How often the supervisor checks mounts.
    pub repair_interval: Duration,
    /// How long a single-node writer waits for the previous writer's fence.
    pub fence_wait: Duration,
    /// This node's master as other nodes reach it (no password), announced.
    pub advertise: String,
}

pub struct NodeCore {
    pub cfg: NodeConfig,
    /// The metadata master local to this node.
    pub meta: MetaServer,
    /// Where the node announces itself (usually the same server).
    registry: MetaServer,
    pub locks: VolumeLocks,
    state: Mutex<NodeState>,
    state_file: StateFile,
}

/// What a stage request asks for.
#[derive(Debug, Clone)]
pub struct StageRequest {
    pub staging_path: PathBuf,
    pub read_only: bool,
    pub single_target: bool,
    pub cache_size_mib: Option<u64>,
    /// Per-volume cache directory (default: below the node's).
    pub cache_dir: Option<PathBuf>,
    /// Mount against this master (the volume's home) instead of the local one.
    pub home: Option<String>,
    /// This node's writer epoch (single-node writers; 0 otherwise).
    pub epoch: u64,
    /// The fence the local master must hold before mounting.
    pub wait_fence: u64,
}

impl NodeCore {
    pub fn new(cfg: NodeConfig, meta: MetaServer, registry: MetaServer) -> std::io::Result<NodeCore> {
        let state_file = StateFile::new(&cfg.state_dir);
        let state = state_file.load()?;
        Ok(NodeCore {
            cfg,
            meta,
            registry,
            locks: VolumeLocks::default(),
            state: Mutex::new(state),
            state_file,
        })
    }

    /// Announces this node with a fresh timestamp: its heartbeat.
    pub async fn announce(&self) -> Result<()> {
        let record = crate::keydb::NodeRecord {
            node_id: self.cfg.node_id.clone(),
            local_meta: self.cfg.advertise.clone(),
            updated_unix: crate::unix_now(),
        };
        self.registry.register_node(&record).await.map_err(Into::into)
    }

    /// The master a volume is mounted against: its home when given, else the local one.
    pub fn server_for(&self, home: Option<&str>) -> Result<MetaServer> {
        match home {
            None => Ok(self.meta.clone()),
            Some(u) => {
                let url = crate::keydb::MetaUrl::parse(u).map_err(|e| {
                    Error::InvalidArgument(format!("publish context names a bad master {u:?}: {e}"))
                })?;
                Ok(MetaServer::new(url.with_password(self.meta.url().password())))
            }
        }
    }

    /// Waits (bounded) until the local master holds the fence `want` for `id`.
    async fn await_fence(&self, id: &VolumeId, want: u64) -> Result<()> {
        let deadline = std::time::Instant::now() + self.cfg.fence_wait;
        loop {
            let have = self.meta.fence(id.db).await?;
            if have >= want {
                if have > 0 {
                    info!(volume_id = %id, fence = have, "previous writer's fence replicated; mounting");
                }
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::FailedPrecondition(format!(
                    "volume {id} was last written on another node (writer epoch {want}), and this node's metadata master {} has replicated only up to {have} after {} s; check replication between the masters (the CO retries this)",
                    self.meta.url(),
                    self.cfg.fence_wait.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Leaves this node's fence for the next writer, through its own master.
    async fn leave_fence(&self, id: &VolumeId, v: &StagedVolume) -> Result<()> {
        if v.home.is_none() && v.epoch > 0 && !v.read_only {
            self.meta.raise_fence(id.db, v.epoch).await?;
            info!(volume_id = %id, fence = v.epoch, "released: fence written for the next writer");
        }
        Ok(())
    }

    /// Raises the epoch a publish gave this node.
    pub fn note_epoch(&self, volume_id: &str, epoch: u64) -> Result<()> {
        self.update(|s| {
            if let Some(v) = s.volumes.get_mut(volume_id) {
                v.epoch = v.epoch.max(epoch);
            }
        })
    }

    pub fn snapshot(&self) -> NodeState {
        self.state.lock().expect("state").clone()
    }

    pub fn staged(&self, volume_id: &str) -> Option<StagedVolume> {
        self.state.lock().expect("state").volumes.get(volume_id).cloned()
    }

    fn update(&self, f: impl FnOnce(&mut NodeState)) -> Result<()> {
        let mut s = self.state.lock().expect("state");
        f(&mut s);
        self.state_file.save(&s).map_err(|e| {
            Error::Internal(format!("cannot save node state in {}: {e}", self.cfg.state_dir.display()))
        })
    }

    /// Mounts the volume at its staging path, or confirms an existing healthy mount.
    pub async fn stage(&self, volume_id: &str, id: &VolumeId, req: &StageRequest) -> Result<()> {
        let path = &req.staging_path;
        if let Some(prev) = self.staged(volume_id) {
            if prev.staging_path != *path {
                return Err(Error::FailedPrecondition(format!(
                    "volume {volume_id} is already staged at {}; unstage it first",
                    prev.staging_path.display()
                )));
            }
        }
        if let Some(prev) = self.staged(volume_id) {
            if prev.home != req.home {
                return Err(Error::FailedPrecondition(format!(
                    "volume {volume_id} is staged against another metadata master; unstage it first"
                )));
            }
        }
        let server = self.server_for(req.home.as_deref())?;
        match self.juicefs_health(path).await {
            Health::Alive { root: true } => {}
            state => {
                if state != Health::Missing {
                    mount::unmount(path)?;
                }
                self.check_exists(&server, id).await?;
                if req.home.is_none() && req.wait_fence > 0 {
                    self.await_fence(id, req.wait_fence).await?;
                }
                std::fs::create_dir_all(path).map_err(mount::io("create", path))?;
                self.cfg
                    .juicefs
                    .mount(&MountSpec {
                        fs_name: &id.fs_name,
                        meta: server.url(),
                        db: id.db,
                        mount_point: path,
                        read_only: req.read_only,
                        cache_size_mib: req.cache_size_mib,
                        cache_dir: req.cache_dir.as_deref(),
                    })
                    .await?;
                info!(volume_id, path = %path.display(), meta = %server.url(), read_only = req.read_only, epoch = req.epoch, "staged");
            }
        }
        self.update(|s| {
            let v = s.volumes.entry(volume_id.to_string()).or_insert_with(|| StagedVolume {
                staging_path: path.clone(),
                read_only: req.read_only,
                single_target: req.single_target,
                cache_size_mib: req.cache_size_mib,
                cache_dir: req.cache_dir.clone(),
                targets: Default::default(),
                idle_since: Some(crate::unix_now()),
                home: req.home.clone(),
                epoch: 0,
            });
            v.read_only = req.read_only;
            v.single_target = req.single_target;
            v.epoch = v.epoch.max(req.epoch);
        })
    }

    /// Health of a JuiceFS mount at `path`: anything else mounted there counts as dead.
    async fn juicefs_health(&self, path: &Path) -> Health {
        match mount::mount_at(path) {
            None => Health::Missing,
            Some(m) if !m.fs_type.starts_with("fuse.juicefs") => Health::Dead,
            Some(_) => mount::health(path, PROBE_TIMEOUT).await,
        }
    }

    /// The volume's file system must exist in `server` (and be the right one).
    async fn check_exists(&self, server: &MetaServer, id: &VolumeId) -> Result<()> {
        match juicefs::read_setting(server, id.db).await {
            Ok(s) if s.name == id.fs_name && id.matches_uuid(&s.uuid) => Ok(()),
            Ok(_) | Err(juicefs::Error::Missing { .. }) => Err(Error::NotFound(format!(
                "volume {id} does not exist on metadata server {}",
                server.url()
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Bind-mounts the staged volume at `target`.
    pub async fn publish(&self, volume_id: &str, target: &Path, read_only: bool) -> Result<()> {
        let Some(v) = self.staged(volume_id) else {
            return Err(Error::FailedPrecondition(format!(
                "volume {volume_id} is not staged on this node; stage it first"
            )));
        };
        if let Some(&ro) = v.targets.get(target) {
            if mount::mount_at(target).is_some() {
                if ro != read_only {
                    return Err(Error::AlreadyExists(format!(
                        "{} is already published with read_only={ro}",
                        target.display()
                    )));
                }
                return Ok(());
            }
        } else if v.single_target && !v.targets.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "volume {volume_id} is single-writer and already published at {}",
                v.targets.keys().next().map(|p| p.display().to_string()).unwrap_or_default()
            )));
        }
        std::fs::create_dir_all(target).map_err(mount::io("create", target))?;
        mount::bind(&v.staging_path, target, read_only || v.read_only)?;
        info!(volume_id, target = %target.display(), read_only, "published");
        self.update(|s| {
            if let Some(v) = s.volumes.get_mut(volume_id) {
                v.targets.insert(target.to_path_buf(), read_only || v.read_only);
                v.idle_since = None;
            }
        })
    }

    /// Unmounts and removes `target`; unknown targets succeed.
    pub async fn unpublish(&self, volume_id: &str, target: &Path) -> Result<()> {
        mount::unmount(target)?;
        mount::remove_dir(target)?;
        if let (Some(v), Some(id)) = (self.staged(volume_id), VolumeId::parse(volume_id)) {
            // The task is gone, so every file it wrote is closed and committed: the
            // last target going is the release a next writer waits for.
            if v.targets.keys().all(|t| t == target) {
                self.leave_fence(&id, &v).await?;
            }
        }
        self.update(|s| {
            if let Some(v) = s.volumes.get_mut(volume_id) {
                v.targets.remove(target);
                if v.targets.is_empty() {
                    v.idle_since = Some(crate::unix_now());
                }
            }
        })?;
        info!(volume_id, target = %target.display(), "unpublished");
        Ok(())
    }

    /// Unmounts the staged volume (and any target still bound to it).
    pub async fn unstage(&self, volume_id: &str, staging: &Path) -> Result<()> {
        if let Some(v) = self.staged(volume_id) {
            for t in v.targets.keys() {
                warn!(volume_id, target = %t.display(), "target still published at unstage; unmounting it");
                mount::unmount(t)?;
                mount::remove_dir(t)?;
            }
        }
        mount::unmount(staging)?;
        mount::remove_dir(staging)?;
        if let (Some(v), Some(id)) = (self.staged(volume_id), VolumeId::parse(volume_id)) {
            self.leave_fence(&id, &v).await?;
        }
        self.update(|s| {
            s.volumes.remove(volume_id);
        })?;
        info!(volume_id, path = %staging.display(), "unstaged");
        Ok(())
    }

    /// Brings a staged volume back to health: remounts a dead or missing JuiceFS
    /// mount at the same path and re-binds every target. Returns whether it acted.
    pub async fn repair(&self, volume_id: &str) -> Result<bool> {
        let Some(v) = self.staged(volume_id) else { return Ok(false) };
        let Some(id) = VolumeId::parse(volume_id) else { return Ok(false) };
        let mut acted = false;
        let health = self.juicefs_health(&v.staging_path).await;
        if health == Health::Hung {
            // A slow metadata server makes a mount slow, not dead; remounting would
            // only break the tasks using it.
            warn!(volume_id, path = %v.staging_path.display(), "staged mount does not answer; leaving it");
            return Ok(false);
        }
        if health != (Health::Alive { root: true }) {
            warn!(volume_id, path = %v.staging_path.display(), "staged mount is dead or gone; remounting");
            for t in v.targets.keys() {
                mount::unmount(t)?;
            }
            let req = StageRequest {
                staging_path: v.staging_path.clone(),
                read_only: v.read_only,
                single_target: v.single_target,
                cache_size_mib: v.cache_size_mib,
                cache_dir: v.cache_dir.clone(),
                home: v.home.clone(),
                epoch: v.epoch,
                wait_fence: 0,
            };
            self.stage(volume_id, &id, &req).await?;
            acted = true;
        }
        for (t, &ro) in &v.targets {
            let bound = mount::mount_at(t).is_some()
                && mount::health(t, PROBE_TIMEOUT).await == (Health::Alive { root: true });
            if !bound {
                mount::unmount(t)?;
                std::fs::create_dir_all(t).map_err(mount::io("create", t))?;
                mount::bind(&v.staging_path, t, ro)?;
                info!(volume_id, target = %t.display(), "target re-bound");
                acted = true;
            }
        }
        Ok(acted)
    }

    /// Forgets a volume whose file system no longer exists, unmounting what is left.
    pub async fn drop_vanished(&self, volume_id: &str) -> Result<bool> {
        let Some(v) = self.staged(volume_id) else { return Ok(false) };
        let Some(id) = VolumeId::parse(volume_id) else { return Ok(false) };
        match self.check_exists(&self.server_for(v.home.as_deref())?, &id).await {
            Err(Error::NotFound(_)) => {
                warn!(volume_id, "volume no longer exists; removing its mounts");
                self.unstage(volume_id, &v.staging_path).await?;
                Ok(true)
            }
            Err(e) => Err(e),
            Ok(()) => Ok(false),
        }
    }
}
