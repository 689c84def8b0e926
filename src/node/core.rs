//! The node's shared state: configuration, the metadata servers it talks to, the
//! per-volume operation guards, and what it has staged (in memory and on disk). The
//! operations on one volume live beside it: `stage`, `publish`, `repair`, `stats`.

use super::jfs::JuicefsConfig;
use super::paths::PathPolicy;
use super::state::{NodeState, StagedVolume, StateFile};
use crate::error::{Error, Result};
use crate::locks::VolumeLocks;
use crate::meta::{findings, redact, Finding, MetaServer, NodeRecord};
use crate::volume::VolumeId;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

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
    /// How often the repair loop checks mounts.
    pub repair_interval: Duration,
    /// How long a juicefs may leave its own files unanswered before repair ends it.
    pub stuck_daemon_after: Duration,
    /// How long a mount may answer nothing while its metadata master answers before
    /// repair ends its juicefs (`wedge`); `None`: never.
    pub wedged_after: Option<Duration>,
    /// How long a single-node writer waits for the previous writer's fence.
    pub fence_wait: Duration,
    /// This node's master as other nodes reach it (no password), announced.
    pub advertise: String,
    /// Where the orchestrator's staging and target paths may be.
    pub paths: PathPolicy,
    /// The size above which a helper's log is rotated (`logs`).
    pub log_cap: u64,
    /// The controllers' `--backup-interval` (the same setting on every node): a
    /// volume's health is faulty when its family's last backup is older than twice
    /// this; 0: backups are off and its health says nothing of them.
    pub backup_interval: u64,
}

pub struct NodeCore {
    pub cfg: NodeConfig,
    /// The metadata master local to this node.
    pub meta: MetaServer,
    /// Where the node announces itself (usually the same server).
    pub(super) registry: MetaServer,
    pub locks: VolumeLocks,
    /// Held only to read or change the map, never across I/O.
    state: Mutex<NodeState>,
    /// Serialises writes of the state file; each write takes the newest state.
    writer: tokio::sync::Mutex<()>,
    state_file: std::sync::Arc<StateFile>,
    pub(super) lease: Mutex<super::state::LeaseClock>,
    /// When the node last announced itself successfully (its heartbeat).
    pub(super) announced: Mutex<Option<std::time::Instant>>,
    /// Woken when a juicefs this driver started ends, so repair looks at once rather
    /// than at the next interval (a held mount stalls until a new daemon serves it).
    pub(super) daemon_ended: std::sync::Arc<tokio::sync::Notify>,
    /// Since when each volume's juicefs has not answered its own files (repair).
    pub(super) stuck: Mutex<std::collections::HashMap<VolumeId, std::time::Instant>>,
    /// The silences of mounts whose master answers (repair, `wedge`).
    pub(super) wedges: Mutex<super::wedge::Watch>,
    /// Serialises reports of the local mount count, so an older count never lands
    /// after a newer one.
    mounts_report: tokio::sync::Mutex<()>,
    /// What the reaper's last pass found orphaned (`reap`).
    pub(super) reap_seen: Mutex<std::collections::HashSet<String>>,
    /// When the reaper first sent each orphaned process SIGTERM (`reap`).
    pub(super) reap_termed: Mutex<std::collections::HashMap<nix::unistd::Pid, std::time::Instant>>,
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
            writer: Default::default(),
            state_file: std::sync::Arc::new(state_file),
            lease: Default::default(),
            announced: Default::default(),
            daemon_ended: Default::default(),
            stuck: Default::default(),
            wedges: Default::default(),
            reap_seen: Default::default(),
            reap_termed: Default::default(),
            mounts_report: Default::default(),
        })
    }

    /// Announces this node with a fresh timestamp (its heartbeat) and what is wrong
    /// with its master's configuration. Returns those findings.
    pub async fn announce(&self) -> Result<Vec<Finding>> {
        // The checks must not stop the heartbeat: a master that cannot be read now is
        // reported by the heartbeat's own failure, or checked on the next beat.
        // A master that does not answer is down, or rejoining its peers after a crash
        // (deploy/swarm/kelp-keydb.sh keeps it unreachable until it is whole).
        let found = match self.meta.master_config().await {
            Ok(c) => findings(&c),
            Err(crate::meta::Error::Unreachable { .. }) => {
                vec![Finding::unreachable(&self.meta.url().to_string())]
            }
            Err(_) => Vec::new(),
        };
        let record = NodeRecord {
            node_id: self.cfg.node_id.clone(),
            local_meta: self.cfg.advertise.clone(),
            updated_unix: crate::unix_now(),
            warnings: found.iter().map(ToString::to_string).collect(),
        };
        self.registry.register_node(&record).await?;
        *self.announced.lock().expect("heartbeat clock") = Some(std::time::Instant::now());
        Ok(found)
    }

    /// Tells this node's master how many volumes are mounted against it, so that a
    /// master stopped with its node (a drain) can wait for their release
    /// (`meta::mounts`). A failure is only logged: the count is written again after
    /// every stage and release and on every repair pass.
    pub async fn report_local_mounts(&self) {
        let _one_at_a_time = self.mounts_report.lock().await;
        let count =
            self.state.lock().expect("node state").volumes.values().filter(|v| v.home.is_none()).count();
        if let Err(e) = self.meta.set_local_mounts(&self.cfg.node_id, count).await {
            tracing::debug!(error = %e, count, "cannot record this node's local mounts in its master");
        }
    }

    /// The master a volume is mounted against: its home when given, else the local one.
    pub fn server_for(&self, home: Option<&str>) -> Result<MetaServer> {
        match home {
            None => Ok(self.meta.clone()),
            Some(u) => self.meta.peer(u).map_err(|e| {
                Error::InvalidArgument(format!("publish context names a bad master {:?}: {e}", redact(u)))
            }),
        }
    }

    /// Refuses a publish context that names a master other than this node's own or
    /// the volume's registered home: kelp sends its metadata password to no one else.
    pub async fn check_home(&self, id: &VolumeId, home: Option<&str>) -> Result<()> {
        let Some(home) = home else { return Ok(()) };
        // kelp names masters to nodes without credentials; one that carries some was
        // not written by kelp, and is never repeated.
        if crate::meta::MetaUrl::parse(home)
            .map_or(true, |u| u.password().is_some() || u.public_url() != home)
        {
            return Err(Error::InvalidArgument(format!(
                "the publish context names metadata master {:?}, which is not an address kelp hands out (redis://host:port, no credentials)",
                redact(home)
            )));
        }
        if home == self.cfg.advertise || home == self.meta.url().public_url() {
            return Ok(());
        }
        let registered = match self.registry.volume(&id.fs_name).await? {
            Some(record) => Some(crate::volume::Spec::of(&record)?.home_meta),
            None => None,
        };
        if registered.as_deref() == Some(home) {
            return Ok(());
        }
        Err(Error::InvalidArgument(format!(
            "the publish context names metadata master {:?}, which is neither this node's master nor the home master the registry lists for volume {id}; kelp connects with its password only to those",
            redact(home)
        )))
    }

    pub fn snapshot(&self) -> NodeState {
        self.state.lock().expect("node state").clone()
    }

    pub fn staged(&self, id: &VolumeId) -> Option<StagedVolume> {
        self.state.lock().expect("node state").volumes.get(id).cloned()
    }

    /// Changes the state and saves it durably before returning. The file is written
    /// on a blocking thread, outside the state lock, so neither the runtime nor other
    /// volumes' readers wait on the fsync.
    pub(super) async fn update(&self, f: impl FnOnce(&mut NodeState)) -> Result<()> {
        f(&mut self.state.lock().expect("node state"));
        let _writing = self.writer.lock().await;
        // Taken under the writer lock: a later change is never overtaken by an older one.
        let data = self.state.lock().expect("node state").to_bytes();
        let file = self.state_file.clone();
        let saved = tokio::task::spawn_blocking(move || file.save_bytes(&data))
            .await
            .map_err(|e| Error::Internal(format!("saving node state: {e}")))?;
        saved.map_err(|e| {
            Error::Internal(format!("cannot save node state in {}: {e}", self.state_file.path().display()))
        })
    }
}
