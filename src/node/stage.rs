//! Staging: one JuiceFS mount per volume per node, against the master the pinning
//! rule chose, after the previous writer's fence has replicated; and its release.

use super::core::{NodeCore, PROBE_TIMEOUT};
use super::fuse_fd;
use super::jfs::MountSpec;
use super::mount::{self, Health};
use super::paths::{self, PathPolicy};
use super::state::StagedVolume;
use crate::error::{Error, Result};
use crate::juicefs;
use crate::meta::MetaServer;
use crate::proto::csi::volume_capability::access_mode::Mode;
use crate::proto::csi::VolumeCapability;
use crate::volume::{self, context_keys, PublishContext, VolumeId};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::{info, warn};

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
    /// The live generation's database (0: the volume id's).
    pub db: u32,
    /// The retired generation to seed `db` from on the local master (0: none).
    pub seed: u32,
    /// The holder's lease in ms (0: none).
    pub lease_ms: u64,
    /// The run id of the registry server the lease must be renewed at ("": unchecked).
    pub registry: String,
}

impl StageRequest {
    /// From a NodeStage (or a NodePublish that must stage again) request's fields.
    pub fn from_rpc(
        staging_path: PathBuf,
        cap: &VolumeCapability,
        volume_context: &HashMap<String, String>,
        publish: &PublishContext,
        cache_root: &Path,
    ) -> Result<StageRequest> {
        let key = context_keys::CACHE_SIZE;
        let cache_size_mib = match volume_context.get(key) {
            Some(v) => {
                Some(v.parse().map_err(|_| Error::InvalidArgument(format!("{key}={v:?}: expected MiB")))?)
            }
            None => None,
        };
        // The cache holds volume data on the node's disk: only below the node's own
        // cache directory, whatever the context says.
        let cache_dir = match volume_context.get(context_keys::CACHE_DIR) {
            Some(dir) => {
                Some(PathPolicy::new(vec![cache_root.to_path_buf()]).check(dir, "volume context cache-dir")?)
            }
            None => None,
        };
        let mode = volume::mode(cap);
        Ok(StageRequest {
            staging_path,
            read_only: volume::is_reader_mode(mode),
            single_target: mode == Mode::SingleNodeSingleWriter,
            cache_size_mib,
            cache_dir,
            home: publish.home.clone(),
            epoch: publish.epoch,
            wait_fence: publish.wait_fence,
            db: publish.db,
            seed: publish.seed,
            lease_ms: publish.lease_ms,
            registry: publish.registry.clone(),
        })
    }

    /// The request that mounts a recorded volume again exactly as it was staged.
    pub fn again(v: &StagedVolume) -> StageRequest {
        StageRequest {
            staging_path: v.staging_path.clone(),
            read_only: v.read_only,
            single_target: v.single_target,
            cache_size_mib: v.cache_size_mib,
            cache_dir: v.cache_dir.clone(),
            home: v.home.clone(),
            epoch: v.epoch,
            wait_fence: 0,
            db: v.db,
            seed: 0,
            lease_ms: v.lease_ms,
            registry: String::new(),
        }
    }
}

impl NodeCore {
    /// Mounts the volume at its staging path, or confirms an existing healthy mount.
    pub async fn stage(&self, id: &VolumeId, req: &StageRequest) -> Result<()> {
        let path = &req.staging_path;
        if let Some(prev) = self.staged(id) {
            if prev.staging_path != *path {
                return Err(Error::FailedPrecondition(format!(
                    "volume {id} is already staged at {:?}; unstage it first",
                    prev.staging_path
                )));
            }
            if prev.home != req.home {
                return Err(Error::FailedPrecondition(format!(
                    "volume {id} is staged against another metadata master; unstage it first"
                )));
            }
            if prev.db != req.db {
                return Err(Error::FailedPrecondition(format!(
                    "volume {id} is staged here with an older metadata generation (database {}); it was taken over since: unstage it first",
                    prev.live_db(id)
                )));
            }
            super::lease::refuse_fenced(id, &prev)?;
        }
        let db = if req.db == 0 { id.db } else { req.db };
        if req.lease_ms > 0 && !req.read_only && req.home.is_none() {
            self.check_lease_server(id, &req.registry).await?;
        }
        let server = self.server_for(req.home.as_deref())?;
        let socket = self.fuse_socket(id);
        let mut created = Vec::new();
        // juicefs died, but its FUSE connection is held: a new juicefs resumes the same
        // kernel mount, so nothing is unmounted and no task notices but a stall. Such a
        // mount is known without probing it (a probe would only hang until the
        // timeout: requests wait for a daemon).
        let resume = mount::mount_at(path).is_some_and(|m| m.is_juicefs_of(&id.fs_name))
            && !self.cfg.juicefs.daemon_running(&id.mount_name())
            && fuse_fd::holder_running(&socket);
        let health = if resume { Health::Hung } else { self.juicefs_health(id, path).await };
        if health != (Health::Alive { root: true }) {
            if health != Health::Missing && !resume {
                mount::unmount_juicefs(path, &id.fs_name)?;
            }
            if req.seed > 0 && req.home.is_none() && !resume {
                self.seed_generation(id, req.seed, db).await?;
            }
            self.check_exists(&server, id, db).await?;
            // A writer through the home master waits too when the fence is given: in a
            // family with clones, its last writer may have written through a node's own.
            if req.wait_fence > 0 && !resume {
                self.await_fence(&server, id, db, req.wait_fence).await?;
            }
            let dir = if resume { None } else { Some(self.cfg.paths.open_dir(path, true)?) };
            if let Some(dir) = &dir {
                dir.seal(true);
                created = dir.created.clone();
            }
            let holder_log = self.cfg.juicefs.log_dir.join(format!("{}.holder.log", id.mount_name()));
            let start = {
                let (socket, log, at) = (socket.clone(), holder_log.clone(), path.clone());
                tokio::task::spawn_blocking(move || fuse_fd::ensure_holder(&socket, &log, &at))
            };
            let spec_file = fuse_fd::lease_spec_file(&socket);
            let leased = req.lease_ms > 0 && !req.read_only && req.home.is_none();
            let lease_spec = if leased {
                let needle = format!("--log={}", self.cfg.juicefs.log_path(&id.mount_name()).display());
                fuse_fd::write_atomic(&spec_file, &format!("{} {needle}", req.lease_ms))
            } else {
                std::fs::remove_file(&spec_file).or_else(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
            };
            lease_spec
                .map_err(|e| Error::Internal(format!("recording the lease of {id} in {spec_file:?}: {e}")))?;
            // No mount without its holder: one would not survive its juicefs, and
            // nothing would say so. Seen while the kelp binary was being replaced on
            // disk (spawning the holder met ENOENT); a retry finds the new one.
            if let Err(e) = start.await.map_err(std::io::Error::other).and_then(|r| r) {
                if let Some(dir) = &dir {
                    dir.seal(false);
                }
                return Err(Error::Unavailable(format!(
                    "cannot start the FUSE holder of {id}: {e}; nothing was mounted, retry (the kelp binary must be in place at its path)"
                )));
            }
            let subdir = id.subdir();
            let mount_name = id.mount_name();
            let spec = MountSpec {
                name: &mount_name,
                meta: server.url(),
                db,
                subdir: subdir.as_deref(),
                mount_point: path,
                read_only: req.read_only,
                cache_size_mib: req.cache_size_mib,
                cache_dir: req.cache_dir.as_deref(),
                fuse_socket: Some(&socket),
                sole_writer: req.epoch > 0 && !req.read_only,
            };
            let daemon = match self.cfg.juicefs.mount(&spec).await {
                Ok(daemon) => daemon,
                Err(e) => {
                    if let Some(dir) = &dir {
                        dir.seal(false);
                    }
                    return Err(e.into());
                }
            };
            self.watch_daemon(id, daemon);
            // juicefs was given the path, not the descriptor: check that it mounted
            // exactly the directory that was checked.
            if !mount::mount_at(path).is_some_and(|m| m.is_juicefs_of(&id.fs_name))
                || self.cfg.paths.open_dir(path, false).is_err()
            {
                let _ = mount::unmount(path);
                return Err(Error::InvalidArgument(format!(
                    "staging path {path:?} changed while it was being mounted; refusing it"
                )));
            }
            if resume {
                info!(volume_id = %id, path = ?path, "juicefs restarted on the held FUSE connection; the mount never went away");
            } else {
                info!(volume_id = %id, path = ?path, meta = %server.url(), db, read_only = req.read_only, epoch = req.epoch, lease_ms = req.lease_ms, "staged");
            }
        }
        self.update(|s| {
            let v = s.volumes.entry(id.clone()).or_insert_with(|| StagedVolume {
                staging_path: path.clone(),
                read_only: req.read_only,
                single_target: req.single_target,
                cache_size_mib: req.cache_size_mib,
                cache_dir: req.cache_dir.clone(),
                targets: Default::default(),
                idle_since: Some(crate::unix_now()),
                home: req.home.clone(),
                epoch: 0,
                created: Default::default(),
                db: req.db,
                lease_ms: req.lease_ms,
                fenced: None,
            });
            v.lease_ms = req.lease_ms;
            v.read_only = req.read_only;
            v.single_target = req.single_target;
            v.epoch = v.epoch.max(req.epoch);
            v.created.extend(created);
        })
        .await?;
        self.report_local_mounts().await;
        Ok(())
    }

    /// Unmounts the staged volume (and any target still bound to it) if this node
    /// staged it at `staging`; anything else is left alone (the spec's "OK, nothing
    /// to do").
    pub async fn unstage(&self, id: &VolumeId, staging: &Path) -> Result<()> {
        let Some(v) = self.staged(id) else { return Ok(()) };
        if v.staging_path != staging {
            warn!(volume_id = %id, asked = ?staging, staged = ?v.staging_path, "unstage of a path this volume is not staged at; nothing done");
            return Ok(());
        }
        self.release_volume(id, &v, true).await?;
        info!(volume_id = %id, path = ?staging, "unstaged");
        Ok(())
    }

    /// Unmounts every path of a staged volume and forgets it. `fence`: leave the
    /// release fence for the next writer; not for a volume that no longer exists,
    /// whose freed database must stay empty.
    pub(super) async fn release_volume(&self, id: &VolumeId, v: &StagedVolume, fence: bool) -> Result<()> {
        for t in v.targets.keys() {
            warn!(volume_id = %id, target = ?t, "target still published at unstage; unmounting it");
            self.release_path(id, v, t).await?;
        }
        self.release_path(id, v, &v.staging_path).await?;
        let _family = self.family_lock(id).await?;
        if fence {
            self.leave_fence(id, v).await?;
        }
        // Forget the stuck watch of a volume that is no longer here.
        self.stuck.lock().expect("stuck daemons").remove(id);
        self.update(|s| {
            s.volumes.remove(id);
        })
        .await?;
        drop(_family);
        self.report_local_mounts().await;
        Ok(())
    }

    /// The socket of the volume's FUSE holder.
    pub(super) fn fuse_socket(&self, id: &VolumeId) -> PathBuf {
        // Members of one family share db and tag; each has its own holder.
        let key = match &id.member {
            Some(m) => format!("{}-{m}", id.tag),
            None => id.tag.clone(),
        };
        fuse_fd::socket_path(&self.cfg.state_dir, id.db, &key)
    }

    /// Lets go of one path of a volume: unmounts the volume there (never another
    /// file system) and removes the directories kelp made for it. Files found in
    /// them are moved aside and recorded, never deleted.
    pub(super) async fn release_path(&self, id: &VolumeId, v: &StagedVolume, path: &Path) -> Result<()> {
        mount::unmount_juicefs(path, &id.fs_name)?;
        // Unsealed only once nothing of kelp's is mounted there (a foreign mount on
        // top made the unmount above fail).
        if let Ok(dir) = self.cfg.paths.open_dir(path, false) {
            dir.seal(false);
        }
        if path == v.staging_path {
            // The holder ends once the connection it held is gone; a new stage must
            // not find the old one.
            let socket = self.fuse_socket(id);
            let _ = std::fs::remove_file(fuse_fd::lease_spec_file(&socket));
            tokio::task::spawn_blocking(move || fuse_fd::wait_holder_gone(&socket, Duration::from_secs(3)))
                .await
                .map_err(|e| Error::Internal(format!("waiting for the FUSE holder: {e}")))?;
        }
        let mine = v.created_for(path);
        let set_aside = paths::remove_created(path, &mine);
        self.update(|s| {
            if let Some(v) = s.volumes.get_mut(id) {
                // Forget what is gone; shared parents still in use stay recorded.
                for c in mine.iter().filter(|c| !c.exists()) {
                    v.created.remove(c);
                }
            }
            s.set_aside.extend(set_aside);
        })
        .await
    }

    /// Health of the volume's JuiceFS mount at `path`: anything else mounted there
    /// counts as dead.
    pub(super) async fn juicefs_health(&self, id: &VolumeId, path: &Path) -> Health {
        match mount::mount_at(path) {
            None => Health::Missing,
            Some(m) if !m.is_juicefs_of(&id.fs_name) => Health::Dead,
            Some(_) => mount::health(path, PROBE_TIMEOUT).await,
        }
    }

    /// The volume's file system must exist in database `db` of `server` (and be the
    /// right one), and so must a tree-layout volume's directory.
    pub(super) async fn check_exists(&self, server: &MetaServer, id: &VolumeId, db: u32) -> Result<()> {
        match juicefs::read_setting(server, db).await {
            Ok(s) if s.name == id.fs_name && id.matches_uuid(&s.uuid) => match id.tree_path() {
                Some(path) if server.tree_inode(db, &path).await?.is_none() => Err(Error::NotFound(format!(
                    "volume {id} does not exist on metadata server {}: its file system has no directory /{}",
                    server.url(),
                    path.join("/")
                ))),
                _ => Ok(()),
            },
            Ok(_) | Err(juicefs::Error::Missing { .. }) => Err(Error::NotFound(format!(
                "volume {id} does not exist on metadata server {}",
                server.url()
            ))),
            // The master is short of databases. If the registry knows the volume, it
            // exists (and must not be dropped as vanished): this node cannot serve it
            // until its master is fixed. Otherwise the id names nothing.
            Err(juicefs::Error::Meta(crate::meta::Error::NoSuchDatabase { server, db })) => {
                let known = self.registry.volume(&id.fs_name).await?.is_some_and(|r| r.db == id.db);
                if !known {
                    return Err(Error::NotFound(format!("volume {id} does not exist")));
                }
                Err(Error::FailedPrecondition(format!(
                    "metadata server {server} has no database {db}, where volume {id} keeps its metadata: set `databases` above {db} (e.g. 1024) in that server's configuration and restart it. On KeyDB multi-master every peer needs the same value: a peer with fewer silently drops replicated writes to the others"
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Waits (bounded) until the local master holds the fence `want` for `id` in its
    /// live generation's database `db`.
    pub(super) async fn await_fence(
        &self,
        meta: &MetaServer,
        id: &VolumeId,
        db: u32,
        want: u64,
    ) -> Result<()> {
        let started = std::time::Instant::now();
        let labels = crate::metrics::VolumeLabels::new(id, &self.cfg.node_id, false);
        let m = crate::metrics::metrics();
        m.fence_waits.get_or_create(&labels).inc();
        let got = crate::wait::poll_until(self.cfg.fence_wait, Duration::from_millis(100), || async move {
            match meta.fence(db).await {
                Ok(have) if have >= want => match meta.unsettled().await {
                    Ok(None) => Some(Ok(have)),
                    Ok(Some(_)) => None,
                    Err(e) => Some(Err(e)),
                },
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            }
        })
        .await;
        match got {
            Some(Ok(have)) => {
                m.fence_wait_seconds.get_or_create(&labels).inc_by(started.elapsed().as_secs_f64());
                if have > 0 {
                    info!(volume_id = %id, fence = have, "previous writer's fence replicated; mounting");
                }
                Ok(())
            }
            Some(Err(e)) => Err(e.into()),
            None => {
                let have = meta.fence(db).await.unwrap_or(0);
                let state = match meta.unsettled().await {
                    Ok(Some(why)) if have >= want => {
                        format!("holds the previous writer's fence but is not whole ({why})")
                    }
                    Ok(Some(why)) => format!("has replicated only up to {have} and is not whole ({why})"),
                    _ => format!("has replicated only up to {have}"),
                };
                Err(Error::FailedPrecondition(format!(
                    "volume {id} was last written on another node (writer epoch {want}), and this node's metadata master {} {state} after {} s; check replication between the masters, and that each is up (the CO retries this)",
                    meta.url(),
                    self.cfg.fence_wait.as_secs()
                )))
            }
        }
    }

    /// Leaves this node's fence for the next writer, through its own master.
    /// Not for a fenced mount: it is no longer known to hold everything it committed
    /// (its juicefs was stopped or killed), and a volume taken over waits for no fence.
    ///
    /// The members of a family (a volume, its clones and restores) share one file
    /// system and so one holder and one fence: while another member still has a task
    /// writing here, the fence would tell the next node that this node is done when it
    /// is not. The epoch then passes to that member, which leaves the fence when its
    /// own last task goes. The caller holds [`NodeCore::family_lock`].
    pub(super) async fn leave_fence(&self, id: &VolumeId, v: &StagedVolume) -> Result<()> {
        if !(v.writes_locally() && v.epoch > 0) {
            return Ok(());
        }
        let writing_sibling = |sid: &VolumeId, s: &StagedVolume| {
            sid != id && sid.family() == id.family() && !s.targets.is_empty() && s.writes_locally()
        };
        let sibling =
            self.snapshot().volumes.into_iter().find(|(sid, s)| writing_sibling(sid, s)).map(|(sid, _)| sid);
        if let Some(sibling) = sibling {
            let epoch = v.epoch;
            self.update(|s| {
                if let Some(sv) = s.volumes.get_mut(&sibling) {
                    sv.epoch = sv.epoch.max(epoch);
                }
            })
            .await?;
            info!(volume_id = %id, sibling = %sibling, fence = epoch, "released; the fence waits for another member of this file system still written here");
            return Ok(());
        }
        self.meta.raise_fence(v.live_db(id), v.epoch).await?;
        info!(volume_id = %id, fence = v.epoch, "released: fence written for the next writer");
        Ok(())
    }

    /// Serialises fence decisions between the members of one family on this node.
    pub(super) async fn family_lock(&self, id: &VolumeId) -> Result<crate::locks::Guard> {
        self.locks.lock_rpc(&format!("family {}", id.family())).await
    }
}

impl NodeCore {
    /// Makes the new generation `db` of a volume taken over, on this node's master,
    /// from what that master holds of the retired generation `from`.
    async fn seed_generation(&self, id: &VolumeId, from: u32, db: u32) -> Result<()> {
        let started = std::time::Instant::now();
        // The registry named `from` (`check_generation`); it must also hold this very
        // file system before anything is copied out of it.
        match juicefs::read_setting(&self.meta, from).await {
            Ok(s) if s.name == id.fs_name && id.matches_uuid(&s.uuid) => {}
            Ok(_) | Err(juicefs::Error::Missing { .. }) => {
                return Err(Error::FailedPrecondition(format!(
                    "volume {id} was taken over, but database {from} of this node's metadata master {} does not hold its file system to continue from; check that it replicates from the other masters",
                    self.meta.url()
                )))
            }
            Err(e) => return Err(e.into()),
        }
        match self.meta.seed_generation(from, db).await? {
            Some(0) => Err(Error::FailedPrecondition(format!(
                "volume {id} was taken over, but this node's metadata master {} holds nothing of it in database {from} to continue from; check that it replicates from the other masters",
                self.meta.url()
            ))),
            Some(keys) => {
                info!(volume_id = %id, from_db = from, db, keys, ms = started.elapsed().as_millis() as u64,
                    "took over: new metadata generation seeded from this node's master");
                Ok(())
            }
            None => Ok(()),
        }
    }
}
