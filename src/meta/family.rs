//! The registry's view of a family: the file system of a tree-layout volume, shared
//! by the volume (its founder), the clones and restores made from it, and their
//! snapshots (docs/snapshots.md). A family lives as long as one of them does; its
//! database and bucket go with the last.
//!
//! Keys, all in database 0 and named after the family's file system:
//! - `kelp:members:<fs>`: member tag -> the clone's own name key (`kelp:vol:<name>`);
//!   the founder is not listed, its record is `kelp:vol:<fs>` itself;
//! - `kelp:fsnaps:<fs>`: the names of the family's snapshots;
//! - `kelp:pubs:<fs>`: `<member>@<node>` -> the role each member is published with,
//!   so the family's one holder is released only when its node has let go of every
//!   member, and writers of the family never use two masters at once;
//! - `kelp:snaps` (one hash for all families): snapshot name -> its record.

use super::registry::{record_from_fields, volume_key, VolumeRecord, VOLUMES};
use super::{Error, MetaServer, Result};
use crate::pinning::Role;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

pub(super) const SNAPSHOTS: &str = "kelp:snaps";

pub(super) fn members_key(fs: &str) -> String {
    format!("kelp:members:{fs}")
}

pub(super) fn family_snapshots_key(fs: &str) -> String {
    format!("kelp:fsnaps:{fs}")
}

pub(super) fn publications_key(fs: &str) -> String {
    format!("kelp:pubs:{fs}")
}

/// What kelp remembers of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub name: String,
    /// The snapshot id handed out (`kelp-snap1:...`).
    pub id: String,
    pub source_volume_id: String,
    pub created_unix: i64,
    /// The source volume's capacity: what a restore needs at least.
    pub size_bytes: u64,
    /// The copy is complete; false while a creation is unfinished (a crash).
    pub ready: bool,
}

/// Outcome of reserving a name for a new snapshot or member.
#[derive(Debug)]
pub enum Claim<T> {
    New,
    Existing(T),
}

// Register a clone in its family unless the name is taken. KEYS: volume key,
// volumes index, members. ARGV: own name key, db, spec, member tag.
const RESERVE_MEMBER: &str = r#"
local cur = redis.call('HGETALL', KEYS[1])
if #cur > 0 then return cur end
redis.call('HSET', KEYS[1], 'db', ARGV[2], 'state', 'creating', 'spec', ARGV[3])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[4], ARGV[1])
return {}
"#;

// Forget a clone. KEYS: volume key, volumes index, members. ARGV: own name key, tag.
const FORGET_MEMBER: &str = r#"
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('HGET', KEYS[3], ARGV[2]) == ARGV[1] then redis.call('HDEL', KEYS[3], ARGV[2]) end
return 1
"#;

// Claim a snapshot name. KEYS: snapshots, the family's snapshots. ARGV: name, json.
const RESERVE_SNAPSHOT: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then return cur end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return ''
"#;

// Withdraw one publication and release the family's holder if `node` now publishes
// no member as a single-node writer. KEYS: holder, publications. ARGV: node, field.
const UNPUBLISH: &str = r#"
redis.call('HDEL', KEYS[2], ARGV[2])
local suffix = '@' .. ARGV[1]
local flat = redis.call('HGETALL', KEYS[2])
for i = 1, #flat, 2 do
  if flat[i + 1] == 'single' and string.sub(flat[i], -#suffix) == suffix then return 0 end
end
if redis.call('HGET', KEYS[1], 'node') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'released', 1)
  return 1
end
return 0
"#;

impl MetaServer {
    /// Registers the clone `name_key` (state creating) in the family of `fs`, or
    /// returns the record the name already has.
    pub async fn reserve_member(
        &self,
        fs: &str,
        name_key: &str,
        db: u32,
        tag: &str,
        spec: &str,
    ) -> Result<Claim<VolumeRecord>> {
        let key = volume_key(name_key);
        let script = redis::Script::new(RESERVE_MEMBER);
        let fields: Vec<(String, String)> = self
            .registry(|mut c| {
                let mut inv = script.key(&key);
                inv.key(VOLUMES).key(members_key(fs)).arg(name_key).arg(db).arg(spec).arg(tag);
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        if fields.is_empty() {
            return Ok(Claim::New);
        }
        Ok(Claim::Existing(record_from_fields(name_key, fields)?))
    }

    /// Forgets the clone `name_key` of the family of `fs`. Idempotent.
    pub async fn forget_member(&self, fs: &str, name_key: &str, tag: &str) -> Result<()> {
        let key = volume_key(name_key);
        let script = redis::Script::new(FORGET_MEMBER);
        let _: i64 = self
            .registry(|mut c| {
                let mut inv = script.key(&key);
                inv.key(VOLUMES).key(members_key(fs)).arg(name_key).arg(tag);
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        Ok(())
    }

    /// The name key of the clone with member tag `tag` in the family of `fs`.
    pub async fn member(&self, fs: &str, tag: &str) -> Result<Option<String>> {
        let key = members_key(fs);
        self.registry(|mut c| {
            let key = key.clone();
            async move { c.hget(key, tag).await }
        })
        .await
    }

    /// How many clones and snapshots keep the family of `fs` alive besides its founder.
    pub async fn family_dependants(&self, fs: &str) -> Result<(u64, u64)> {
        let (m, s) = (members_key(fs), family_snapshots_key(fs));
        self.registry(|mut c| {
            let (m, s) = (m.clone(), s.clone());
            async move { redis::pipe().hlen(m).scard(s).query_async(&mut c).await }
        })
        .await
    }

    /// Forgets what the registry keeps about the family beyond its founder's record.
    pub async fn forget_family(&self, fs: &str) -> Result<()> {
        let keys = [members_key(fs), family_snapshots_key(fs), publications_key(fs)];
        self.registry(|mut c| {
            let keys = keys.clone();
            async move { c.del::<_, ()>(&keys[..]).await }
        })
        .await
    }

    /// Claims the snapshot name for `record`, or returns the snapshot it names.
    pub async fn reserve_snapshot(&self, fs: &str, record: &SnapshotRecord) -> Result<Claim<SnapshotRecord>> {
        let json = serde_json::to_string(record).expect("snapshot record serialises");
        let script = redis::Script::new(RESERVE_SNAPSHOT);
        let cur: String = self
            .registry(|mut c| {
                let mut inv = script.key(SNAPSHOTS);
                inv.key(family_snapshots_key(fs)).arg(&record.name).arg(&json);
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        if cur.is_empty() {
            return Ok(Claim::New);
        }
        Ok(Claim::Existing(parse_snapshot(&cur)?))
    }

    /// Rewrites a snapshot's record (its creation finished).
    pub async fn set_snapshot(&self, record: &SnapshotRecord) -> Result<()> {
        let json = serde_json::to_string(record).expect("snapshot record serialises");
        self.registry(|mut c| {
            let json = json.clone();
            async move { c.hset::<_, _, _, ()>(SNAPSHOTS, &record.name, json).await }
        })
        .await
    }

    pub async fn snapshot_by_name(&self, name: &str) -> Result<Option<SnapshotRecord>> {
        let json: Option<String> =
            self.registry(|mut c| async move { c.hget(SNAPSHOTS, name).await }).await?;
        json.as_deref().map(parse_snapshot).transpose()
    }

    /// Every snapshot, ordered by name.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        let all: Vec<(String, String)> =
            self.registry(|mut c| async move { c.hgetall(SNAPSHOTS).await }).await?;
        let mut out = all.iter().map(|(_, j)| parse_snapshot(j)).collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Forgets the snapshot `name` of the family of `fs`. Idempotent.
    pub async fn forget_snapshot(&self, fs: &str, name: &str) -> Result<()> {
        let key = family_snapshots_key(fs);
        self.registry(|mut c| {
            let key = key.clone();
            async move {
                redis::pipe().atomic().hdel(SNAPSHOTS, name).srem(key, name).query_async::<()>(&mut c).await
            }
        })
        .await
    }

    /// Records that `member` is published on `node` with `role`.
    pub async fn record_publication(&self, fs: &str, member: &str, node: &str, role: Role) -> Result<()> {
        let key = publications_key(fs);
        let field = format!("{member}@{node}");
        self.registry(|mut c| {
            let (key, field) = (key.clone(), field.clone());
            async move { c.hset::<_, _, _, ()>(key, field, role.as_str()).await }
        })
        .await
    }

    /// The family's publications: (`member`, `node`, role).
    pub async fn publications(&self, fs: &str) -> Result<Vec<(String, String, Role)>> {
        let key = publications_key(fs);
        let all: Vec<(String, String)> = self
            .registry(|mut c| {
                let key = key.clone();
                async move { c.hgetall(key).await }
            })
            .await?;
        Ok(all
            .into_iter()
            .filter_map(|(f, role)| {
                let (m, n) = f.split_once('@')?;
                Some((m.to_string(), n.to_string(), Role::parse(&role)?))
            })
            .collect())
    }

    /// Withdraws `member`'s publication on `node`; the family's holder becomes
    /// released once `node` writes no member of it. Idempotent.
    pub async fn withdraw_publication(&self, fs: &str, member: &str, node: &str) -> Result<()> {
        let holder = super::registry::holder_key(fs);
        let script = redis::Script::new(UNPUBLISH);
        let field = format!("{member}@{node}");
        let _: i64 = self
            .registry(|mut c| {
                let mut inv = script.key(&holder);
                inv.key(publications_key(fs)).arg(node).arg(&field);
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        Ok(())
    }
}

fn parse_snapshot(json: &str) -> Result<SnapshotRecord> {
    serde_json::from_str(json).map_err(|e| Error::Corrupt { key: SNAPSHOTS.into(), detail: e.to_string() })
}
