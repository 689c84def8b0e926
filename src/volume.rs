//! What a kelp volume is, independent of any RPC: its identity, the mapping from a
//! free-form Swarm name to valid bucket and JuiceFS names, its parameters, its
//! capacity, and which capabilities it can serve.

use crate::error::{require, Error, Result};
use crate::proto::csi::{
    volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume},
    CapacityRange, CreateVolumeRequest, VolumeCapability,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Every bucket kelp makes carries this prefix, so kelp never adopts or deletes a
/// bucket it did not make.
pub const BUCKET_PREFIX: &str = "kelp-";
const ID_PREFIX: &str = "kelp1";
/// Longest JuiceFS name that still leaves room for the prefix in a 63-byte bucket name.
const MAX_FS_NAME: usize = 63 - BUCKET_PREFIX.len();
const MAX_PARAMS: usize = 32;
const MAX_PARAM_VALUE: usize = 256;
const MAX_NAME: usize = 1024;

/// The CSI volume id: `kelp1:<db>:<uuid tag>:<fs name>`. It carries all a node needs
/// to mount (database number and file-system name) and stays valid across restarts.
/// The tag (first 8 hex digits of the file system's UUID) tells incarnations apart: a
/// volume deleted and created again under the same name may get the same database
/// back, but never the same tag, so a stale id never reaches the new volume.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VolumeId {
    pub db: u32,
    pub tag: String,
    pub fs_name: String,
}

const TAG_LEN: usize = 8;

impl VolumeId {
    pub fn new(db: u32, uuid: &str, fs_name: &str) -> VolumeId {
        let tag: String = uuid.chars().filter(char::is_ascii_hexdigit).take(TAG_LEN).collect();
        VolumeId { db, tag: tag.to_ascii_lowercase(), fs_name: fs_name.to_string() }
    }

    pub fn parse(id: &str) -> Option<VolumeId> {
        let mut parts = id.splitn(4, ':');
        if parts.next()? != ID_PREFIX {
            return None;
        }
        let db: u32 = parts.next()?.parse().ok()?;
        let tag = parts.next()?.to_string();
        let fs_name = parts.next()?.to_string();
        let tag_ok =
            tag.len() == TAG_LEN && tag.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        (db > 0 && tag_ok && is_valid_fs_name(&fs_name)).then_some(VolumeId { db, tag, fs_name })
    }

    /// Whether this id names the file system with `uuid`.
    pub fn matches_uuid(&self, uuid: &str) -> bool {
        VolumeId::new(self.db, uuid, &self.fs_name).tag == self.tag
    }

    pub fn bucket(&self) -> String {
        bucket_for(&self.fs_name)
    }
}

impl std::fmt::Display for VolumeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{ID_PREFIX}:{}:{}:{}", self.db, self.tag, self.fs_name)
    }
}

pub fn bucket_for(fs_name: &str) -> String {
    format!("{BUCKET_PREFIX}{fs_name}")
}

/// JuiceFS's name rule, further limited so the bucket name fits too.
pub fn is_valid_fs_name(s: &str) -> bool {
    let b = s.as_bytes();
    (3..=MAX_FS_NAME).contains(&b.len())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Maps any volume name to a valid file-system name, deterministically. Valid names
/// are kept; others are lower-cased, stripped to `[a-z0-9-]`, shortened, and given
/// a hash of the original so that `Media` and `media` stay two volumes.
pub fn fs_name_for(name: &str) -> String {
    if is_valid_fs_name(name) {
        return name.to_string();
    }
    let mut base = String::with_capacity(name.len());
    for c in name.chars().flat_map(char::to_lowercase) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' };
        if !(c == '-' && (base.is_empty() || base.ends_with('-'))) {
            base.push(c);
        }
    }
    base.truncate(MAX_FS_NAME - 9);
    let base = base.trim_end_matches('-');
    let hash = Sha256::digest(name.as_bytes());
    let suffix: String = hash[..4].iter().map(|b| format!("{b:02x}")).collect();
    if base.is_empty() {
        format!("vol-{suffix}")
    } else {
        format!("{base}-{suffix}")
    }
}

/// Checks the volume name the CO chose.
pub fn validate_name(name: &str) -> Result<()> {
    require(!name.is_empty(), "volume name is required")?;
    require(
        name.len() <= MAX_NAME,
        format!("volume name is {} bytes; at most {MAX_NAME} are accepted", name.len()),
    )?;
    require(!name.chars().any(char::is_control), "volume name contains control characters")
}

/// Per-volume choices, from `docker volume create --opt key=value`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Params {
    pub block_size_kib: u32,
    pub compression: String,
    pub trash_days: u32,
    pub inodes: u64,
    /// SeaweedFS replication code (xyz) for the bucket; `None` keeps the cluster default.
    pub replication: Option<String>,
    /// Opt-in: writers on several nodes use their local masters instead of the home
    /// master (faster, and unsafe: concurrent writes through two masters can be lost).
    #[serde(default)]
    pub shared_writers_local: bool,
    /// Seconds a single-node writer's node must have been silent before another node
    /// may take the volume over without a release; `None`: never.
    #[serde(default)]
    pub takeover_after: Option<i64>,
    /// Node-local read cache for this volume, MiB (default: the node's --cache-size).
    #[serde(default)]
    pub cache_size_mib: Option<u64>,
    /// Node-local cache directory for this volume (default: below the node's --cache-dir).
    #[serde(default)]
    pub cache_dir: Option<String>,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            block_size_kib: 4096,
            compression: "none".into(),
            trash_days: 1,
            inodes: 0,
            replication: None,
            shared_writers_local: false,
            takeover_after: None,
            cache_size_mib: None,
            cache_dir: None,
        }
    }
}

/// The keys `Params::parse` accepts, with what each means, for errors and `--help`.
pub const PARAM_KEYS: &[(&str, &str)] = &[
    ("block-size", "JuiceFS block size: KiB, or with a K or M suffix (64K to 16M, default 4M)"),
    ("compression", "none, lz4 or zstd (default none)"),
    ("trash-days", "days deleted files stay in .trash, 0 to disable (default 1)"),
    ("inodes", "maximum number of files, 0 for no limit (default 0)"),
    ("replication", "SeaweedFS replication code xyz for the bucket, e.g. 010 (default: the cluster's)"),
    ("shared-writers", "home (default) or local: where writers on several nodes send metadata; local is unsafe"),
    ("takeover-after", "never (default) or seconds a crashed writer's node must be silent before another node takes over"),
    ("cache-size", "node-local read cache for this volume, MiB (default: the node's --cache-size)"),
    ("cache-dir", "node-local cache directory for this volume, an absolute path (default: below the node's --cache-dir)"),
];

impl Params {
    /// Parses CSI parameters; an unknown key or a bad value is an error naming it.
    /// Keys the Kubernetes sidecars add (`csi.storage.k8s.io/...`) are ignored.
    pub fn parse(raw: &HashMap<String, String>) -> Result<Params> {
        require(raw.len() <= MAX_PARAMS, format!("{} parameters given; at most {MAX_PARAMS}", raw.len()))?;
        let mut p = Params::default();
        let mut keys: Vec<_> = raw.keys().collect();
        keys.sort();
        for key in keys {
            let value = raw[key].trim();
            if key.starts_with("csi.storage.k8s.io/") {
                continue;
            }
            require(
                value.len() <= MAX_PARAM_VALUE,
                format!("parameter {key:?} is {} bytes long; at most {MAX_PARAM_VALUE}", value.len()),
            )?;
            let bad = |why: &str| Error::InvalidArgument(format!("parameter {key}={value:?}: {why}"));
            match key.as_str() {
                "block-size" => {
                    let kib = parse_kib(value).ok_or_else(|| bad("expected KiB or a size like 4M"))?;
                    if !(64..=16384).contains(&kib) {
                        return Err(bad("must be between 64K and 16M"));
                    }
                    p.block_size_kib = kib;
                }
                "compression" => match value {
                    "none" | "lz4" | "zstd" => p.compression = value.into(),
                    _ => return Err(bad("expected none, lz4 or zstd")),
                },
                "trash-days" => {
                    p.trash_days =
                        value.parse().ok().filter(|d| *d <= 3650).ok_or_else(|| bad("expected 0 to 3650"))?
                }
                "inodes" => p.inodes = value.parse().map_err(|_| bad("expected a whole number"))?,
                "replication" => {
                    if value.len() != 3 || !value.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(bad("expected three digits xyz, e.g. 010"));
                    }
                    p.replication = Some(value.into());
                }
                "shared-writers" => match value {
                    "home" => p.shared_writers_local = false,
                    "local" => p.shared_writers_local = true,
                    _ => return Err(bad("expected home or local")),
                },
                "cache-size" => {
                    p.cache_size_mib = Some(value.parse().map_err(|_| bad("expected MiB, a whole number"))?)
                }
                "cache-dir" => {
                    if !value.starts_with('/') || value.split('/').any(|c| c == "..") {
                        return Err(bad("expected an absolute path without .."));
                    }
                    p.cache_dir = Some(value.into());
                }
                "takeover-after" => {
                    p.takeover_after = match value {
                        "never" => None,
                        v => Some(
                            v.parse()
                                .ok()
                                .filter(|s| *s >= 0)
                                .ok_or_else(|| bad("expected never or whole seconds"))?,
                        ),
                    }
                }
                _ => {
                    let known: Vec<_> = PARAM_KEYS.iter().map(|(k, _)| *k).collect();
                    return Err(Error::InvalidArgument(format!(
                        "unknown parameter {key:?}; known parameters are {}",
                        known.join(", ")
                    )));
                }
            }
        }
        Ok(p)
    }
}

fn parse_kib(v: &str) -> Option<u32> {
    let lower = v.to_ascii_lowercase();
    let (num, mult) = if let Some(n) = lower.strip_suffix('m') {
        (n, 1024)
    } else if let Some(n) = lower.strip_suffix('k') {
        (n, 1)
    } else {
        (lower.as_str(), 1)
    };
    num.parse::<u32>().ok()?.checked_mul(mult)
}

/// What the registry stores about a volume besides its database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    pub name: String,
    pub uuid: String,
    pub capacity_bytes: u64,
    pub params: Params,
    pub created_unix: i64,
    /// The volume's home master (no password): where shared writers send metadata.
    #[serde(default)]
    pub home_meta: String,
}

/// Chooses the capacity for a new volume: the required size if given, else the
/// limit, else unlimited (0).
pub fn capacity_for(range: Option<&CapacityRange>) -> Result<u64> {
    let Some(r) = range else { return Ok(0) };
    if r.required_bytes < 0 || r.limit_bytes < 0 {
        return Err(Error::OutOfRange("capacity must not be negative".into()));
    }
    if r.limit_bytes > 0 && r.required_bytes > r.limit_bytes {
        return Err(Error::OutOfRange(format!(
            "required_bytes {} is above limit_bytes {}",
            r.required_bytes, r.limit_bytes
        )));
    }
    Ok(if r.required_bytes > 0 { r.required_bytes } else { r.limit_bytes } as u64)
}

/// Whether an existing volume of `capacity` (0 = unlimited) satisfies `range`.
pub fn capacity_fits(capacity: u64, range: Option<&CapacityRange>) -> bool {
    let Some(r) = range else { return true };
    let required = r.required_bytes.max(0) as u64;
    let limit = r.limit_bytes.max(0) as u64;
    if capacity == 0 {
        return required == 0 && limit == 0;
    }
    capacity >= required && (limit == 0 || capacity <= limit)
}

/// Checks that every capability is one kelp serves: a mount (file system) volume, any
/// access mode, and ext-agnostic (`fs_type` empty or `juicefs`). Returns why not.
pub fn unsupported_capability(caps: &[VolumeCapability]) -> Option<String> {
    for cap in caps {
        match &cap.access_type {
            Some(AccessType::Mount(m)) => {
                if !m.fs_type.is_empty() && m.fs_type != "juicefs" {
                    return Some(format!("fs_type {:?} is not offered; kelp volumes are JuiceFS", m.fs_type));
                }
            }
            Some(AccessType::Block(_)) => {
                return Some("block access is not offered; create the volume with --type mount".into())
            }
            None => return Some("a capability has no access type".into()),
        }
        let mode = cap.access_mode.as_ref().map(|m| m.mode).unwrap_or(0);
        if Mode::try_from(mode).unwrap_or(Mode::Unknown) == Mode::Unknown {
            return Some("a capability has no access mode".into());
        }
    }
    None
}

/// Validates the capability list of CreateVolume / ValidateVolumeCapabilities.
pub fn validate_capabilities(caps: &[VolumeCapability]) -> Result<()> {
    require(!caps.is_empty(), "volume capabilities are required")?;
    for cap in caps {
        require(cap.access_type.is_some(), "every volume capability needs an access type (mount)")?;
        require(cap.access_mode.is_some(), "every volume capability needs an access mode")?;
    }
    Ok(())
}

/// Keys of the volume context that carry per-volume node settings.
pub mod context_keys {
    pub const CACHE_SIZE: &str = "cache-size";
    pub const CACHE_DIR: &str = "cache-dir";
}

/// Keys of the publish context the controller hands to nodes.
pub mod publish_keys {
    /// The master to mount against instead of the local one (no password).
    pub const META: &str = "kelp/meta";
    /// The node's writer epoch; it leaves it as the fence when it lets go.
    pub const EPOCH: &str = "kelp/epoch";
    /// The fence the local master must hold before a writer mounts.
    pub const FENCE: &str = "kelp/fence";
}

/// A file-system capability with access mode `mode`.
pub fn mount_capability(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

/// A CreateVolume request for a file-system volume of `bytes` (0: unlimited), as
/// kelp's own clients (`kelp client`, `kelp bench`) send it.
pub fn create_request(name: &str, bytes: i64, mode: Mode) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.to_string(),
        capacity_range: (bytes > 0).then_some(CapacityRange { required_bytes: bytes, limit_bytes: 0 }),
        volume_capabilities: vec![mount_capability(mode)],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_deterministically_to_valid_names() {
        assert_eq!(fs_name_for("media"), "media");
        for name in ["Media", "my_vol", "x", "---", "ÜberVolume", &"a".repeat(300), "a b/c:d"] {
            let fs = fs_name_for(name);
            assert!(is_valid_fs_name(&fs), "{name:?} -> {fs:?}");
            assert_eq!(fs, fs_name_for(name));
            assert!(bucket_for(&fs).len() <= 63);
        }
        assert_ne!(fs_name_for("Media"), fs_name_for("media"));
        assert_ne!(fs_name_for("a_b"), fs_name_for("a.b"));
    }

    #[test]
    fn volume_ids_round_trip_and_reject_garbage() {
        let id = VolumeId::new(7, "0A1B2C3D-9999-4000-8000-000000000000", "media");
        assert_eq!(id.to_string(), "kelp1:7:0a1b2c3d:media");
        assert_eq!(VolumeId::parse(&id.to_string()), Some(id.clone()));
        assert!(id.matches_uuid("0a1b2c3d-9999-4000-8000-000000000000"));
        assert!(!id.matches_uuid("ffffffff-9999-4000-8000-000000000000"));
        for bad in [
            "",
            "media",
            "kelp1:0:0a1b2c3d:media",
            "kelp1:x:0a1b2c3d:media",
            "kelp2:1:0a1b2c3d:media",
            "kelp1:1:0a1b2c3d:Bad_Name",
            "kelp1:1:media",
            "kelp1:1:xyz:media",
        ] {
            assert_eq!(VolumeId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn params_parse_and_name_bad_keys() {
        let raw = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let p = Params::parse(&raw(&[("block-size", "1M"), ("compression", "lz4"), ("replication", "010")]))
            .unwrap();
        assert_eq!((p.block_size_kib, p.compression.as_str()), (1024, "lz4"));
        let e = Params::parse(&raw(&[("colour", "blue")])).unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
        assert!(Params::parse(&raw(&[("block-size", "1G")])).is_err());
        assert!(Params::parse(&raw(&[("replication", "01")])).is_err());
        assert!(Params::parse(&raw(&[("trash-days", &"9".repeat(300))])).is_err());
    }

    #[test]
    fn capacity_rules() {
        let r = |req, lim| CapacityRange { required_bytes: req, limit_bytes: lim };
        assert_eq!(capacity_for(None).unwrap(), 0);
        assert_eq!(capacity_for(Some(&r(10, 20))).unwrap(), 10);
        assert_eq!(capacity_for(Some(&r(0, 20))).unwrap(), 20);
        assert!(capacity_for(Some(&r(30, 20))).is_err());
        assert!(capacity_fits(10, Some(&r(10, 10))));
        assert!(!capacity_fits(10, Some(&r(20, 0))));
        assert!(!capacity_fits(0, Some(&r(20, 0))));
        assert!(capacity_fits(0, None));
    }
}
