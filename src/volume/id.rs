//! The CSI volume id, parsed once at the RPC edge and passed on typed from there.

use super::names::{bucket_for, is_valid_fs_name};
use crate::error::{require, Error, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const ID_PREFIX: &str = "kelp1";
const TAG_LEN: usize = 8;

/// The CSI volume id: `kelp1:<db>:<uuid tag>:<fs name>[:<member>]`. It carries all
/// a node needs to mount (database number, file-system name and, for the tree layout,
/// the volume's own directory) and stays valid across restarts. The tag (first 8 hex
/// digits of the file system's UUID) tells incarnations apart: a volume deleted and
/// created again under the same name may get the same database back, but never the
/// same tag, so a stale id never reaches the new volume. Ids without a member are
/// root-layout volumes, every volume made before the tree layout; they keep working.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VolumeId {
    pub db: u32,
    pub tag: String,
    pub fs_name: String,
    /// The tree-layout volume's directory below `/.kelp/v/` (8 hex digits).
    pub member: Option<String>,
}

/// Where tree-layout volumes' directories live, below the file system's root.
pub const MEMBERS_DIR: [&str; 2] = [".kelp", "v"];

impl VolumeId {
    pub fn new(db: u32, uuid: &str, fs_name: &str) -> VolumeId {
        VolumeId { db, tag: tag_of(uuid), fs_name: fs_name.to_string(), member: None }
    }

    /// The id of a tree-layout volume whose directory is named after `member_uuid`.
    pub fn with_member(self, member_uuid: Option<&str>) -> VolumeId {
        VolumeId { member: member_uuid.map(tag_of), ..self }
    }

    pub fn parse(id: &str) -> Option<VolumeId> {
        let mut parts = id.split(':');
        if parts.next()? != ID_PREFIX {
            return None;
        }
        let db: u32 = parts.next()?.parse().ok()?;
        let tag = parts.next()?.to_string();
        let fs_name = parts.next()?.to_string();
        let member = parts.next().map(str::to_string);
        if parts.next().is_some() || !member.as_deref().is_none_or(is_tag) {
            return None;
        }
        // Redis-protocol servers number their databases with a C int.
        (db > 0 && db <= i32::MAX as u32 && is_tag(&tag) && is_valid_fs_name(&fs_name)).then_some(VolumeId {
            db,
            tag,
            fs_name,
            member,
        })
    }

    /// The path of the volume's directory as juicefs's `--subdir` takes it; `None`
    /// for a root-layout volume.
    pub fn subdir(&self) -> Option<String> {
        self.member.as_ref().map(|m| format!("/{}/{}/{m}", MEMBERS_DIR[0], MEMBERS_DIR[1]))
    }

    /// The id of the volume's family: its file system, without the member (a volume,
    /// its clones and restores share it).
    pub fn family(&self) -> VolumeId {
        VolumeId { member: None, ..self.clone() }
    }

    /// The name this volume's mount goes by on a node (its juicefs log, cache and
    /// daemon): the file-system name for a root-layout volume, and the file system
    /// plus the member for a tree-layout one, since the members of one family (a
    /// volume, its clones and restores) share the file system and may be mounted on
    /// one node at once.
    pub fn mount_name(&self) -> String {
        match &self.member {
            Some(m) => format!("{}.{m}", self.fs_name),
            None => self.fs_name.clone(),
        }
    }

    /// The components of [`VolumeId::subdir`].
    pub fn tree_path(&self) -> Option<[&str; 3]> {
        self.member.as_deref().map(|m| [MEMBERS_DIR[0], MEMBERS_DIR[1], m])
    }

    /// The id of a request that needs an existing volume: empty is an argument error
    /// (csi-sanity checks that before existence), and an id kelp could never have
    /// issued names no volume.
    pub fn from_request(id: &str) -> Result<VolumeId> {
        require(!id.is_empty(), "volume_id is required")?;
        VolumeId::parse(id).ok_or_else(|| Error::NotFound(format!("volume {id:?} does not exist")))
    }

    /// Whether this id names the file system with `uuid`.
    pub fn matches_uuid(&self, uuid: &str) -> bool {
        VolumeId::new(self.db, uuid, &self.fs_name).tag == self.tag
    }

    pub fn bucket(&self) -> String {
        bucket_for(&self.fs_name)
    }
}

fn tag_of(uuid: &str) -> String {
    let tag: String = uuid.chars().filter(char::is_ascii_hexdigit).take(TAG_LEN).collect();
    tag.to_ascii_lowercase()
}

fn is_tag(s: &str) -> bool {
    s.len() == TAG_LEN && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl std::fmt::Display for VolumeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{ID_PREFIX}:{}:{}:{}", self.db, self.tag, self.fs_name)?;
        match &self.member {
            Some(m) => write!(f, ":{m}"),
            None => Ok(()),
        }
    }
}

/// Stored as the id string (the node state file keys volumes by it).
impl Serialize for VolumeId {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VolumeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<VolumeId, D::Error> {
        let s = String::deserialize(d)?;
        VolumeId::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("not a kelp volume id: {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "kelp1:2147483648:0a1b2c3d:media",
            "kelp1:4000000000:0a1b2c3d:media",
            "kelp1:x:0a1b2c3d:media",
            "kelp2:1:0a1b2c3d:media",
            "kelp1:1:0a1b2c3d:Bad_Name",
            "kelp1:1:media",
            "kelp1:1:xyz:media",
            "kelp1:1:0a1b2c3d:media:",
            "kelp1:1:0a1b2c3d:media:XYZ",
            "kelp1:1:0a1b2c3d:media:0a1b2c3d:more",
        ] {
            assert_eq!(VolumeId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn tree_layout_ids_carry_their_member() {
        let id = VolumeId::new(7, "0a1b2c3d-9999", "media").with_member(Some("FEEDBEEF-0000"));
        assert_eq!(id.to_string(), "kelp1:7:0a1b2c3d:media:feedbeef");
        assert_eq!(VolumeId::parse(&id.to_string()), Some(id.clone()));
        assert_eq!(id.subdir().as_deref(), Some("/.kelp/v/feedbeef"));
        assert_eq!(id.tree_path(), Some([".kelp", "v", "feedbeef"]));
        let old = VolumeId::parse("kelp1:7:0a1b2c3d:media").unwrap();
        assert_eq!((old.member.clone(), old.subdir()), (None, None));
    }

    #[test]
    fn request_ids_get_the_codes_csi_sanity_expects() {
        assert!(matches!(VolumeId::from_request(""), Err(Error::InvalidArgument(_))));
        assert!(matches!(VolumeId::from_request("made-up"), Err(Error::NotFound(_))));
    }

    #[test]
    fn serialises_as_its_string() {
        let id = VolumeId::new(3, "0a1b2c3d-0000", "abc");
        let json = serde_json::to_string(&std::collections::BTreeMap::from([(id.clone(), 1)])).unwrap();
        assert_eq!(json, r#"{"kelp1:3:0a1b2c3d:abc":1}"#);
        let back: std::collections::BTreeMap<VolumeId, i32> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.keys().next(), Some(&id));
    }
}

const SNAPSHOT_PREFIX: &str = "kelp-snap1";

/// Where snapshots' trees live, below the family's root.
pub const SNAPSHOTS_DIR: [&str; 2] = [".kelp", "s"];

/// The CSI snapshot id: `kelp-snap1:<db>:<family tag>:<family fs name>:<snapshot tag>`.
/// It names the family its tree lives in, so a restore finds the file system from
/// the id alone; the tag names the tree, `/.kelp/s/<tag>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotId {
    pub family: VolumeId,
    pub tag: String,
}

impl SnapshotId {
    /// The snapshot of a tree-layout volume's family, named after `uuid`.
    pub fn new(source: &VolumeId, uuid: &str) -> SnapshotId {
        SnapshotId { family: source.family(), tag: tag_of(uuid) }
    }

    pub fn parse(id: &str) -> Option<SnapshotId> {
        let rest = id.strip_prefix(SNAPSHOT_PREFIX)?.strip_prefix(':')?;
        let (family, tag) = rest.rsplit_once(':')?;
        let family = VolumeId::parse(&format!("{ID_PREFIX}:{family}"))?;
        (family.member.is_none() && is_tag(tag)).then(|| SnapshotId { family, tag: tag.to_string() })
    }

    /// The components of the snapshot's tree below the family's root.
    pub fn tree_path(&self) -> [&str; 3] {
        [SNAPSHOTS_DIR[0], SNAPSHOTS_DIR[1], &self.tag]
    }
}

impl std::fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = &self.family;
        write!(f, "{SNAPSHOT_PREFIX}:{}:{}:{}:{}", v.db, v.tag, v.fs_name, self.tag)
    }
}

#[cfg(test)]
mod snapshot_tests {
    use super::*;

    #[test]
    fn snapshot_ids_round_trip_and_name_their_family() {
        let vol = VolumeId::parse("kelp1:3:0a1b2c3d:data:11223344").unwrap();
        let snap = SnapshotId::new(&vol, "aabbccdd-0000");
        let text = snap.to_string();
        assert_eq!(text, "kelp-snap1:3:0a1b2c3d:data:aabbccdd");
        let back = SnapshotId::parse(&text).unwrap();
        assert_eq!(back, snap);
        assert_eq!(back.family.member, None);
        assert_eq!(back.tree_path(), [".kelp", "s", "aabbccdd"]);
        for bad in [
            "",
            "kelp-snap1:3:0a1b2c3d:data",
            "kelp1:3:0a1b2c3d:data:aabbccdd",
            "kelp-snap1:3:0a1b2c3d:data:zz",
        ] {
            assert_eq!(SnapshotId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn members_of_one_family_have_their_own_mount_names() {
        let a = VolumeId::parse("kelp1:3:0a1b2c3d:data:11223344").unwrap();
        let b = VolumeId::parse("kelp1:3:0a1b2c3d:data:55667788").unwrap();
        let root = VolumeId::parse("kelp1:3:0a1b2c3d:data").unwrap();
        assert_ne!(a.mount_name(), b.mount_name());
        assert_eq!(root.mount_name(), "data");
    }
}
