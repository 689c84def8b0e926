//! Per-volume choices: the `--opt key=value` map of `docker volume create`, checked
//! once at CreateVolume and stored with the volume.

use crate::error::{require, Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

const MAX_PARAMS: usize = 32;
/// The trash period of a volume that may be taken over, unless more is asked for.
pub const TAKEOVER_TRASH_DAYS: u32 = 1;
const MAX_PARAM_VALUE: usize = 256;

/// Per-volume choices, from `docker volume create --opt key=value`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Params {
    pub block_size_kib: u32,
    pub compression: String,
    pub trash_days: u32,
    pub inodes: u64,
    /// SeaweedFS replication code (xyz) for the bucket; `None` keeps the cluster default.
    pub replication: Option<String>,
    /// Seconds a single-node writer's lease must have lapsed before another node may
    /// take the volume over without a release; `None`: never. The holder's lease is
    /// derived from it (`pinning::lease_ms`).
    #[serde(default)]
    pub takeover_after: Option<i64>,
    /// Node-local read cache for this volume, MiB (default: the node's --cache-size).
    #[serde(default)]
    pub cache_size_mib: Option<u64>,
    /// Whether SeaweedFS fsyncs this volume's data before acknowledging it.
    #[serde(default = "Durability::before_the_parameter")]
    pub durability: Durability,
    /// Node-local cache directory for this volume (default: below the node's --cache-dir).
    #[serde(default)]
    pub cache_dir: Option<String>,
    /// Where the volume's files live in its file system.
    #[serde(default = "Layout::before_the_parameter")]
    pub layout: Layout,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            block_size_kib: 4096,
            compression: "none".into(),
            // Not juicefs's 1: with a trash, deleting files on a full volume frees
            // nothing for a day and the application stays on ENOSPC.
            trash_days: 0,
            inodes: 0,
            replication: None,
            takeover_after: None,
            cache_size_mib: None,
            cache_dir: None,
            durability: Durability::Strict,
            layout: Layout::Tree,
        }
    }
}

/// Where a volume's files live in its JuiceFS file system (docs/snapshots.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// In the volume's own directory `/.kelp/v/<member>`, mounted with juicefs's
    /// `--subdir`, its size a directory quota: snapshots and clones can then live
    /// beside it in the same file system and share its data.
    Tree,
    /// At the file system's root, its size the file system's capacity: how every
    /// volume was made before the tree layout, and what a plain `juicefs mount` of
    /// the whole file system shows as the volume.
    Root,
    /// Made before the parameter existed: at the root, and a repeated CreateVolume
    /// may ask for either value.
    Unrecorded,
}

impl Layout {
    fn before_the_parameter() -> Layout {
        Layout::Unrecorded
    }
}

/// How a volume's data is written to SeaweedFS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Volume servers fsync every write before acknowledging it (a filer.conf rule
    /// for the bucket), so an acknowledged fsync survives a power loss.
    Strict,
    /// No fsync rule: faster writes; a power loss of a volume server can lose data
    /// acknowledged in the seconds before it (unless the bucket is replicated).
    Relaxed,
    /// Made before the parameter existed: its bucket has no fsync rule (as relaxed),
    /// and a repeated CreateVolume may ask for either value.
    Unrecorded,
}

impl Durability {
    pub fn fsync(self) -> bool {
        self == Durability::Strict
    }

    fn before_the_parameter() -> Durability {
        Durability::Unrecorded
    }
}

/// Why `shared-writers=local` is gone: measured on three KeyDB 6.3.4 active-replica
/// masters, JuiceFS cannot run one file system through two masters at once.
pub const SHARED_WRITERS_LOCAL_REFUSED: &str = "removed because it corrupts data: with writers on two \
nodes using their own KeyDB multi-master servers, one 10 s run handed out 747 inode numbers twice \
and left 711 files holding the other node's bytes, and the masters never converged (counters such as \
nextinode are not conflict-free under multi-master). Leave shared-writers unset: writers on several \
nodes use the volume's home master";

/// The keys `Params::parse` accepts, with what each means, for errors and `--help`.
pub const PARAM_KEYS: &[(&str, &str)] = &[
    ("block-size", "JuiceFS block size: KiB, or with a K or M suffix (64K to 16M, default 4M)"),
    ("compression", "none, lz4 or zstd (default none)"),
    ("trash-days", "days deleted files stay in .trash and keep using space, 0 to disable (default 0; 1 with takeover-after, which needs at least 1)"),
    ("inodes", "maximum number of files, 0 for no limit (default 0)"),
    ("replication", "SeaweedFS replication code xyz for the bucket, e.g. 010 (default: the cluster's)"),
    ("shared-writers", "home (the only choice): writers on several nodes send metadata to the volume's home master"),
    ("takeover-after", "never (default) or seconds (at least 8) a single writer's lease must have lapsed before another node takes over; the holder fences itself after (seconds - 2) / 2"),
    ("durability", "strict (default: SeaweedFS fsyncs every write before acknowledging it) or relaxed (no fsync: faster, a power loss can lose recent writes)"),
    ("cache-size", "node-local read cache for this volume, MiB (default: the node's --cache-size)"),
    ("cache-dir", "node-local cache directory for this volume, an absolute path (default: below the node's --cache-dir)"),
    ("layout", "tree (default: the volume is a directory of its file system with a directory quota, ready for snapshots and clones; writes past the size fail with EDQUOT) or root (the volume is the whole file system, as before kelp had snapshots; writes past the size fail with ENOSPC)"),
];

impl Params {
    /// Whether a CreateVolume asking for `asked` asks for this volume as it exists.
    pub fn matches_request(&self, asked: &Params) -> bool {
        let mut mine = self.clone();
        if mine.durability == Durability::Unrecorded {
            mine.durability = asked.durability;
        }
        if mine.layout == Layout::Unrecorded {
            mine.layout = asked.layout;
        }
        mine == *asked
    }

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
                    if crate::seaweedfs::Replication::parse(value).is_none() {
                        return Err(bad(
                            "expected a SeaweedFS replication code xyz (x other data centres, at most 2; y other racks; z other servers in the rack), e.g. 010",
                        ));
                    }
                    p.replication = Some(value.into());
                }
                "shared-writers" => match value {
                    "home" => {}
                    "local" => return Err(bad(SHARED_WRITERS_LOCAL_REFUSED)),
                    _ => return Err(bad("expected home")),
                },
                "durability" => {
                    p.durability = match value {
                        "strict" => Durability::Strict,
                        "relaxed" => Durability::Relaxed,
                        _ => return Err(bad("expected strict or relaxed")),
                    }
                }
                "layout" => {
                    p.layout = match value {
                        "tree" => Layout::Tree,
                        "root" => Layout::Root,
                        _ => return Err(bad("expected tree or root")),
                    }
                }
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
                        v => {
                            let secs: i64 = v
                                .parse()
                                .ok()
                                .filter(|s| *s >= 0)
                                .ok_or_else(|| bad("expected never or whole seconds"))?;
                            let min = crate::pinning::MIN_TAKEOVER_AFTER;
                            if secs < min {
                                return Err(bad(&format!(
                                    "at least {min} s: the holder fences itself after a lease of half of it less {} ms, and the lease must survive two lost renewals",
                                    crate::pinning::CLOCK_MARGIN_MS
                                )));
                            }
                            Some(secs)
                        }
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
        if p.takeover_after.is_some() && p.trash_days == 0 {
            // A holder that is cut off goes on until its lease ends, and may compact,
            // overwrite or delete files meanwhile. Without a trash JuiceFS deletes the
            // objects those held at once, objects the new holder's generation still
            // reads (measured: 404s on files written before the cut). With one, they
            // are only deleted by a client of the old generation after the trash
            // period, and no such client runs again.
            if raw.contains_key("trash-days") {
                return Err(Error::InvalidArgument(format!(
                    "parameter trash-days=0 cannot go with takeover-after: a taken-over holder's last deletions would remove data the new holder still reads; use trash-days={TAKEOVER_TRASH_DAYS} or more"
                )));
            }
            p.trash_days = TAKEOVER_TRASH_DAYS;
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(Params::parse(&raw(&[("replication", "999")])).is_err());
        assert!(Params::parse(&raw(&[("trash-days", &"9".repeat(300))])).is_err());
        assert_eq!(Params::parse(&raw(&[])).unwrap().trash_days, 0, "no trash unless asked for");
        let e = Params::parse(&raw(&[("shared-writers", "local")])).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)) && e.to_string().contains("747 inode numbers"), "{e}");
        assert!(Params::parse(&raw(&[("shared-writers", "home")])).is_ok());
    }

    /// A volume made before `shared-writers=local` was removed still loads; it is
    /// mounted through its home master like every shared writer.
    #[test]
    fn takeover_needs_a_lease_worth_having_and_a_trash() {
        let raw = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        for short in ["0", "3", "7"] {
            let e = Params::parse(&raw(&[("takeover-after", short)])).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(ref m) if m.contains("at least 8")), "{short}: {e:?}");
        }
        let p = Params::parse(&raw(&[("takeover-after", "8")])).unwrap();
        assert_eq!((p.takeover_after, p.trash_days), (Some(8), TAKEOVER_TRASH_DAYS));
        let p = Params::parse(&raw(&[("takeover-after", "30"), ("trash-days", "7")])).unwrap();
        assert_eq!(p.trash_days, 7);
        let e = Params::parse(&raw(&[("takeover-after", "30"), ("trash-days", "0")])).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(ref m) if m.contains("trash-days=0")), "{e:?}");
        assert_eq!(Params::parse(&raw(&[("takeover-after", "never")])).unwrap().trash_days, 0);
    }

    #[test]
    fn a_stored_spec_with_the_removed_opt_in_still_loads() {
        let mut stored = serde_json::to_value(Params::default()).unwrap();
        stored["shared_writers_local"] = true.into();
        let p: Params = serde_json::from_value(stored).unwrap();
        assert_eq!(p, Params::default());
    }

    #[test]
    fn layout_is_tree_unless_asked_and_old_volumes_keep_the_root() {
        let raw = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(Params::parse(&raw(&[])).unwrap().layout, Layout::Tree);
        assert_eq!(Params::parse(&raw(&[("layout", "root")])).unwrap().layout, Layout::Root);
        assert!(Params::parse(&raw(&[("layout", "flat")])).is_err());
        let mut old = serde_json::to_value(Params::default()).unwrap();
        old.as_object_mut().unwrap().remove("layout");
        let p: Params = serde_json::from_value(old).unwrap();
        assert_eq!(p.layout, Layout::Unrecorded);
        assert!(p.matches_request(&Params::default()), "a repeated CreateVolume still matches");
        assert!(!Params::default().matches_request(&Params::parse(&raw(&[("layout", "root")])).unwrap()));
    }

    #[test]
    fn durability_is_strict_unless_asked_and_old_volumes_have_no_rule() {
        let raw = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(Params::parse(&raw(&[])).unwrap().durability.fsync());
        assert!(!Params::parse(&raw(&[("durability", "relaxed")])).unwrap().durability.fsync());
        assert!(Params::parse(&raw(&[("durability", "sometimes")])).is_err());
        let mut old = serde_json::to_value(Params::default()).unwrap();
        old.as_object_mut().unwrap().remove("durability");
        let p: Params = serde_json::from_value(old).unwrap();
        assert!(!p.durability.fsync(), "their buckets have no fsync rule");
        assert!(p.matches_request(&Params::default()), "a repeated CreateVolume still matches");
        assert!(
            !Params::default().matches_request(&Params::parse(&raw(&[("durability", "relaxed")])).unwrap())
        );
    }
}
