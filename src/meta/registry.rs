//! kelp's registry in database 0: which volume owns which database, in what state,
//! and which nodes exist. Allocation and release are Lua scripts, so two controllers
//! (or a controller racing its own retry after a crash) can never hand one database to
//! two volumes, and a released database is reused.

use super::generation::Generation;
use super::keys::{generations_key, GENERATIONS, NODES, QUARANTINE};
pub(super) use super::keys::{holder_key, volume_key, DATABASES, VOLUMES};
use super::{Error, MetaServer, Result};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

/// Where a volume is in its life. A volume is usable only when `Ready`; the other two
/// states mark work a crashed controller left for its retry to finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeState {
    Creating,
    Ready,
    Deleting,
    /// Deleted by its user while clones or snapshots still live in its file system:
    /// no longer a volume, but its name keeps the family's bucket until they go.
    Retired,
}

impl VolumeState {
    fn as_str(self) -> &'static str {
        match self {
            VolumeState::Creating => "creating",
            VolumeState::Ready => "ready",
            VolumeState::Deleting => "deleting",
            VolumeState::Retired => "retired",
        }
    }
    fn parse(s: &str) -> Option<VolumeState> {
        match s {
            "creating" => Some(VolumeState::Creating),
            "ready" => Some(VolumeState::Ready),
            "deleting" => Some(VolumeState::Deleting),
            "retired" => Some(VolumeState::Retired),
            _ => None,
        }
    }
}

/// Everything kelp remembers about one volume. `spec` is the caller's JSON (the
/// controller's volume description); the registry only guards `db` and `state`.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeRecord {
    pub fs_name: String,
    pub db: u32,
    pub state: VolumeState,
    pub spec: String,
}

/// Outcome of [`MetaServer::reserve_volume`].
#[derive(Debug)]
pub enum Reservation {
    /// A database was allocated and a `Creating` record written.
    New(VolumeRecord),
    /// The name was already registered; the caller decides if it is compatible.
    Existing(VolumeRecord),
}

/// Which node holds a single-node-writer volume (see `pinning`).
pub use crate::pinning::Holder;

/// A node's announcement, refreshed while its node service runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: String,
    /// The node's metadata master as other nodes reach it (never with a password).
    pub local_meta: String,
    pub updated_unix: i64,
    /// Problems the node found with its master's configuration (`meta::findings`).
    #[serde(default)]
    pub warnings: Vec<String>,
}

// Allocate the lowest free database number >= 1 and register the volume, atomically.
// KEYS: volume key, databases set, volumes index. ARGV: fs name, spec json, db count.
const RESERVE: &str = r#"
local cur = redis.call('HGETALL', KEYS[1])
if #cur > 0 then return {0, cur} end
local limit = tonumber(ARGV[3])
for db = 1, limit - 1 do
  if redis.call('SISMEMBER', KEYS[2], db) == 0 then
    redis.call('SADD', KEYS[2], db)
    redis.call('HSET', KEYS[1], 'db', db, 'state', 'creating', 'spec', ARGV[2])
    redis.call('ZADD', KEYS[3], 0, ARGV[1])
    return {1, db}
  end
end
return {2, limit}
"#;

// Drop the record and give its database back, only if it still names that database.
// KEYS: volume key, databases set, volumes index. ARGV: fs name, db.
const RELEASE: &str = r#"
local db = redis.call('HGET', KEYS[1], 'db')
if db == ARGV[2] then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('SREM', KEYS[2], db)
  return 1
end
return 0
"#;

// Give up a fresh reservation whose database is not empty: the name is forgotten, the
// database stays allocated and is quarantined. KEYS: volume key, volumes index,
// quarantine set. ARGV: fs name, db.
const QUARANTINE_DB: &str = r#"
if redis.call('HGET', KEYS[1], 'db') == ARGV[2] then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
redis.call('SADD', KEYS[3], ARGV[2])
return 1
"#;

// Compare-and-set of a holder record on its epoch, and on a takeover the new
// metadata generation: the lowest free database, with the generation it replaces
// recorded for inspection. KEYS: holder key, databases set, generations of the volume,
// generations index. ARGV: expected epoch (0 = no record), node, epoch, released,
// wait fence, db, seed, new generation (1/0), db count, fs name, generation json.
// Returns the live db (0 = the volume id's), -1 when raced, -2 when no db is free.
const SET_HOLDER: &str = r#"
local cur = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if cur ~= tonumber(ARGV[1]) then return -1 end
local db = tonumber(ARGV[6])
if ARGV[8] == '1' then
  db = nil
  for d = 1, tonumber(ARGV[9]) - 1 do
    if redis.call('SISMEMBER', KEYS[2], d) == 0 then db = d break end
  end
  if not db then return -2 end
  redis.call('SADD', KEYS[2], db)
  redis.call('HSET', KEYS[3], ARGV[7], ARGV[11])
  redis.call('SADD', KEYS[4], ARGV[10])
end
redis.call('HSET', KEYS[1], 'node', ARGV[2], 'epoch', ARGV[3], 'released', ARGV[4], 'wait', ARGV[5], 'db', db, 'seed', ARGV[7])
return db
"#;

impl MetaServer {
    /// Every field of the registry hash `key` (none when it does not exist).
    async fn hash(&self, key: &str) -> Result<Vec<(String, String)>> {
        self.registry(|mut c| async move { c.hgetall(key).await }).await
    }

    pub async fn holder(&self, fs_name: &str) -> Result<Option<Holder>> {
        let key = holder_key(fs_name);
        let fields = self.hash(&key).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let get =
            |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or_default();
        let num = |name: &str| get(name).parse::<u64>().map_err(|e| corrupt(&key, e));
        // Records from before generations have no db or seed: the volume id's db.
        let opt = |name: &str| match get(name) {
            "" => Ok(0),
            v => v.parse::<u32>().map_err(|e| corrupt(&key, e)),
        };
        Ok(Some(Holder {
            node: get("node").to_string(),
            epoch: num("epoch")?,
            released: get("released") == "1",
            wait_fence: num("wait")?,
            db: opt("db")?,
            seed: opt("seed")?,
        }))
    }

    /// Replaces the holder record if its epoch is still `expected_epoch` (0: none yet).
    /// With `new_generation`, allocates the database of the volume's next metadata
    /// generation in the same step and records `next.seed` as its predecessor.
    /// Returns the record written (its `db` filled in), or `None` when another
    /// publish got there first.
    pub async fn swap_holder(
        &self,
        fs_name: &str,
        expected_epoch: u64,
        next: &Holder,
        new_generation: Option<&Generation>,
        databases: u32,
    ) -> Result<Option<Holder>> {
        let key = holder_key(fs_name);
        let script = redis::Script::new(SET_HOLDER);
        let json = new_generation.map(|g| serde_json::to_string(g).expect("generation serialises"));
        let done: i64 = self
            .registry(|mut c| {
                let mut inv = script.key(&key);
                inv.key(DATABASES)
                    .key(generations_key(fs_name))
                    .key(GENERATIONS)
                    .arg(expected_epoch)
                    .arg(&next.node)
                    .arg(next.epoch)
                    .arg(next.released as u8)
                    .arg(next.wait_fence)
                    .arg(next.db)
                    .arg(next.seed)
                    .arg(new_generation.is_some() as u8)
                    .arg(databases)
                    .arg(fs_name)
                    .arg(json.clone().unwrap_or_default());
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        match done {
            -1 => Ok(None),
            -2 => Err(Error::NoFreeDatabase { server: self.url().to_string(), databases }),
            db => Ok(Some(Holder { db: db as u32, ..next.clone() })),
        }
    }

    pub async fn drop_holder(&self, fs_name: &str) -> Result<()> {
        let key = holder_key(fs_name);
        self.registry(|mut c| {
            let key = key.clone();
            async move { c.del::<_, ()>(key).await }
        })
        .await
    }

    /// Registers `fs_name` in state `Creating` with a fresh database, or returns the
    /// record it already has.
    pub async fn reserve_volume(&self, fs_name: &str, spec: &str, databases: u32) -> Result<Reservation> {
        let key = volume_key(fs_name);
        let script = redis::Script::new(RESERVE);
        let reply: (i64, redis::Value) = self
            .registry(|mut c| {
                let mut inv = script.key(&key);
                inv.key(DATABASES).key(VOLUMES).arg(fs_name).arg(spec).arg(databases);
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        match reply {
            (1, v) => {
                let db: u32 = redis::from_redis_value(v).map_err(|e| corrupt(&key, e))?;
                Ok(Reservation::New(VolumeRecord {
                    fs_name: fs_name.into(),
                    db,
                    state: VolumeState::Creating,
                    spec: spec.into(),
                }))
            }
            (0, v) => {
                let fields: Vec<(String, String)> =
                    redis::from_redis_value(v).map_err(|e| corrupt(&key, e))?;
                Ok(Reservation::Existing(record_from_fields(fs_name, fields)?))
            }
            _ => Err(Error::NoFreeDatabase { server: self.url().to_string(), databases }),
        }
    }

    pub async fn volume(&self, fs_name: &str) -> Result<Option<VolumeRecord>> {
        let key = volume_key(fs_name);
        let fields = self.hash(&key).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        record_from_fields(fs_name, fields).map(Some)
    }

    pub async fn set_volume_state(&self, fs_name: &str, state: VolumeState) -> Result<()> {
        let key = volume_key(fs_name);
        self.registry(|mut c| {
            let key = key.clone();
            async move { c.hset::<_, _, _, ()>(key, "state", state.as_str()).await }
        })
        .await
    }

    /// Replaces the volume's spec (e.g. after an expansion).
    pub async fn set_volume_spec(&self, fs_name: &str, spec: &str) -> Result<()> {
        let key = volume_key(fs_name);
        self.registry(|mut c| {
            let key = key.clone();
            async move { c.hset::<_, _, _, ()>(key, "spec", spec).await }
        })
        .await
    }

    /// Forgets the volume and frees its database. Idempotent.
    pub async fn release_volume(&self, fs_name: &str, db: u32) -> Result<()> {
        let script = redis::Script::new(RELEASE);
        let key = volume_key(fs_name);
        let _: i64 = self
            .registry(|mut c| {
                let mut inv = script.key(&key);
                inv.key(DATABASES).key(VOLUMES).arg(fs_name).arg(db);
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        Ok(())
    }

    /// Forgets the fresh reservation of `fs_name` and quarantines its database `db`.
    pub async fn quarantine_database(&self, fs_name: &str, db: u32) -> Result<()> {
        let key = volume_key(fs_name);
        let script = redis::Script::new(QUARANTINE_DB);
        let _: i64 = self
            .registry(|mut c| {
                let mut inv = script.key(&key);
                inv.key(VOLUMES).key(QUARANTINE).arg(fs_name).arg(db);
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        Ok(())
    }

    /// The quarantined databases.
    pub async fn quarantined(&self) -> Result<Vec<u32>> {
        self.registry(|mut c| async move { c.smembers(QUARANTINE).await }).await
    }

    /// Returns a quarantined (and by now emptied) database to the free pool.
    pub async fn release_quarantined(&self, db: u32) -> Result<()> {
        self.registry(|mut c| async move {
            redis::pipe().atomic().srem(QUARANTINE, db).srem(DATABASES, db).query_async::<()>(&mut c).await
        })
        .await
    }

    /// Up to `count` registered volume names in lexical order, after `after` (exclusive)
    /// or from the start. Paging by name rather than offset keeps a page token valid
    /// when volumes are created or deleted between pages.
    pub async fn volume_names_after(&self, after: Option<&str>, count: usize) -> Result<Vec<String>> {
        let min = after.map(|a| format!("({a}")).unwrap_or_else(|| "-".into());
        let mut cmd = redis::cmd("ZRANGEBYLEX");
        cmd.arg(VOLUMES).arg(min).arg("+").arg("LIMIT").arg(0).arg(count);
        self.registry(|mut c| {
            let cmd = cmd.clone();
            async move { cmd.query_async(&mut c).await }
        })
        .await
    }

    pub async fn register_node(&self, node: &NodeRecord) -> Result<()> {
        let json = serde_json::to_string(node).expect("node record serialises");
        self.registry(|mut c| {
            let json = json.clone();
            async move { c.hset::<_, _, _, ()>(NODES, &node.node_id, json).await }
        })
        .await
    }

    /// Every node that ever announced itself, by id.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>> {
        let all: Vec<(String, String)> = self.registry(|mut c| async move { c.hgetall(NODES).await }).await?;
        let mut nodes: Vec<NodeRecord> = all
            .into_iter()
            .map(|(_, j)| serde_json::from_str(&j).map_err(|e| corrupt(NODES, e)))
            .collect::<Result<_>>()?;
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(nodes)
    }

    pub async fn node(&self, node_id: &str) -> Result<Option<NodeRecord>> {
        let json: Option<String> = self.registry(|mut c| async move { c.hget(NODES, node_id).await }).await?;
        json.map(|j: String| serde_json::from_str(&j).map_err(|e| corrupt(NODES, e))).transpose()
    }
}

pub(super) fn record_from_fields(fs_name: &str, fields: Vec<(String, String)>) -> Result<VolumeRecord> {
    let key = volume_key(fs_name);
    let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let db = get("db").and_then(|d| d.parse().ok());
    let state = get("state").as_deref().and_then(VolumeState::parse);
    match (db, state, get("spec")) {
        (Some(db), Some(state), Some(spec)) => Ok(VolumeRecord { fs_name: fs_name.into(), db, state, spec }),
        _ => Err(Error::Corrupt { key, detail: "missing db, state or spec".into() }),
    }
}

fn corrupt(key: &str, e: impl std::fmt::Display) -> Error {
    Error::Corrupt { key: key.into(), detail: e.to_string() }
}
