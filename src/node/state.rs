//! What this node has staged and published, kept on disk so a restarted driver knows
//! which mounts are its own. Written atomically (temp file + rename) after every
//! change; a torn write can never leave a half file.

use crate::volume::VolumeId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    pub volumes: BTreeMap<VolumeId, StagedVolume>,
    /// Directories found holding files when kelp let go of a path it had mounted on
    /// (something wrote there while nothing was mounted), moved aside for the operator.
    #[serde(default)]
    pub set_aside: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagedVolume {
    pub staging_path: PathBuf,
    /// Mounted with `--read-only` (a reader-only access mode).
    pub read_only: bool,
    /// SINGLE_NODE_SINGLE_WRITER: at most one target.
    pub single_target: bool,
    pub cache_size_mib: Option<u64>,
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Published targets and whether each is a read-only bind.
    pub targets: BTreeMap<PathBuf, bool>,
    /// Unix time since when no target publishes the volume (for the idle release).
    #[serde(default)]
    pub idle_since: Option<i64>,
    /// The home master it is mounted against (no password); `None`: the local one.
    #[serde(default)]
    pub home: Option<String>,
    /// This node's writer epoch, left as the fence on release (0: not a fenced writer).
    #[serde(default)]
    pub epoch: u64,
    /// Directories kelp created for the staging path and targets: the only ones it
    /// removes when it lets go of them.
    #[serde(default)]
    pub created: BTreeSet<PathBuf>,
    /// The database of the metadata generation mounted (0: the volume id's).
    #[serde(default)]
    pub db: u32,
    /// The holder's lease (ms) for a writer that may be taken over; 0: no lease.
    #[serde(default)]
    pub lease_ms: u64,
    /// Set while the mount is fenced because this node's lease lapsed.
    #[serde(default)]
    pub fenced: Option<Fenced>,
}

/// Why a mount is fenced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fenced {
    /// The lease lapsed: juicefs is stopped, I/O waits. Renewed while still the
    /// holder, it continues where it stopped.
    Stalled { since_unix: i64 },
    /// Another node took the volume over: juicefs and the FUSE connection are gone,
    /// so every access fails; only an unpublish and unstage remain.
    TakenOver { by_node: String },
}

impl StagedVolume {
    /// The directories kelp created that lie on the way to `path` (or are it).
    pub fn created_for(&self, path: &Path) -> Vec<PathBuf> {
        self.created.iter().filter(|c| path.starts_with(c)).cloned().collect()
    }

    /// Writes through this node's own master, with a mount that still holds everything
    /// it committed (not fenced): what a release must leave a fence for.
    pub fn writes_locally(&self) -> bool {
        self.fenced.is_none() && self.home.is_none() && !self.read_only
    }

    /// The database of the generation this node mounts for volume `id`.
    pub fn live_db(&self, id: &VolumeId) -> u32 {
        if self.db == 0 {
            id.db
        } else {
            self.db
        }
    }

    /// A writer whose lease decides whether it may go on writing.
    pub fn leased(&self) -> bool {
        self.lease_ms > 0 && !self.read_only && self.home.is_none()
    }
}

pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(dir: &Path) -> StateFile {
        StateFile { path: dir.join("node-state.json") }
    }

    pub fn load(&self) -> std::io::Result<NodeState> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", self.path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NodeState::default()),
            Err(e) => Err(e),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `data` (a serialised [`NodeState`]) durably: temp file, fsync, rename.
    /// Blocking; callers on the async runtime run it with `spawn_blocking`.
    pub fn save_bytes(&self, data: &[u8]) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)
    }

    pub fn save(&self, state: &NodeState) -> std::io::Result<()> {
        self.save_bytes(&state.to_bytes())
    }
}

impl NodeState {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("node state always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_disk() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        assert_eq!(f.load().unwrap(), NodeState::default());
        let mut s = NodeState::default();
        s.volumes.insert(
            VolumeId::parse("kelp1:1:0a1b2c3d:abc").unwrap(),
            StagedVolume {
                staging_path: "/s".into(),
                read_only: false,
                single_target: false,
                cache_size_mib: Some(10),
                cache_dir: None,
                targets: [(PathBuf::from("/t"), true)].into(),
                idle_since: None,
                home: None,
                epoch: 3,
                created: Default::default(),
                db: 7,
                lease_ms: 3000,
                fenced: Some(Fenced::Stalled { since_unix: 1 }),
            },
        );
        f.save(&s).unwrap();
        assert_eq!(f.load().unwrap(), s);
    }
}

/// When this node last renewed its lease, by its own monotonic clock (kept by
/// `lease`, read by every stage of a leased volume).
#[derive(Debug, Default)]
pub struct LeaseClock {
    /// When the last renewal that worked was sent (the lease runs from then at the
    /// latest). `None` since start: nothing is known to be covered.
    pub(super) last_ok: Option<std::time::Instant>,
    /// The run id of the registry server that renewal reached.
    pub(super) server: Option<String>,
}
