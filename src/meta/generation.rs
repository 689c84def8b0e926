//! Metadata generations. A takeover moves a volume to a fresh database, seeded on the
//! new holder's own master from the generation the old holder wrote, and retires the
//! old one. Whatever the old holder's master accepted and had not replicated (its
//! tail) stays in the retired generation: replication can still bring it to every
//! master after a partition heals, but only into that database, which no mount uses.
//!
//! The seed also records, in the retired database, a digest of every key as the new
//! holder saw it. Any key that differs from its digest later was written after the
//! takeover: that is how a tail is found and counted.

use super::registry::{generations_key, GENERATIONS};
use super::{MetaServer, Result};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

/// A retired generation, recorded when the takeover allocated its successor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    /// The node that held the volume and never released it.
    pub from_node: String,
    /// The node that took it over.
    pub to_node: String,
    /// The epoch of the takeover.
    pub epoch: u64,
    /// Unix time of the takeover, as the controller saw it.
    pub at_unix: i64,
    /// Keys written after the takeover, as last counted on the controller's master
    /// (`None`: not counted yet).
    #[serde(default)]
    pub tail_keys: Option<u64>,
}

/// How far a new generation moves JuiceFS's inode and slice counters past the old
/// one's: the old holder may have handed out numbers its master never replicated, and
/// the same slice number in both generations would name the same object in the bucket.
pub const COUNTER_JUMP: u64 = 1 << 30;

// Take an instant copy of every JuiceFS key of the database the script runs in, into
// the hash KEYS[1] (key -> DUMP), and record each key's digest in kelp:baseline. One
// script, so it is one instant of the source: nothing arriving by replication can land
// half in it. It never leaves its own database: KeyDB 6.3.4 replicates a script's
// writes to other databases into the caller's (docs/notes.md). Returns the keys
// copied; -1 when the copy exists already (a retry).
const SNAPSHOT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
redis.call('DEL', 'kelp:baseline')
local n = 0
for _, k in ipairs(redis.call('KEYS', '*')) do
  if string.sub(k, 1, 5) ~= 'kelp:' then
    local d = redis.call('DUMP', k)
    redis.call('HSET', 'kelp:baseline', k, redis.sha1hex(d))
    redis.call('HSET', KEYS[1], k, d)
    n = n + 1
  end
end
return n
"#;

// Count the keys of a retired generation (the database the script runs in) that differ
// from the digests taken when it was retired: {changed or new, gone}.
const TAIL: &str = r#"
if redis.call('EXISTS', 'kelp:baseline') == 0 then return {-1, -1} end
local changed = 0
local seen = 0
for _, k in ipairs(redis.call('KEYS', '*')) do
  if string.sub(k, 1, 5) ~= 'kelp:' then
    local want = redis.call('HGET', 'kelp:baseline', k)
    if want then seen = seen + 1 end
    if not want or want ~= redis.sha1hex(redis.call('DUMP', k)) then changed = changed + 1 end
  end
end
return {changed, redis.call('HLEN', 'kelp:baseline') - seen}
"#;

/// A key and its DUMP.
type KeyDump = (Vec<u8>, Vec<u8>);

/// Marks a seeded generation with the database it was seeded from.
const SEEDED_FROM: &str = "kelp:seeded-from";
/// Marks a generation being seeded, so that a retry may empty it again.
const SEEDING_FROM: &str = "kelp:seeding-from";

fn snapshot_key(to: u32) -> String {
    format!("kelp:seed:{to}")
}

/// What a count of a retired generation's tail found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail {
    /// Keys changed or added after the takeover.
    pub changed: u64,
    /// Keys deleted after the takeover.
    pub gone: u64,
}

impl Tail {
    pub fn keys(&self) -> u64 {
        self.changed + self.gone
    }
}

impl MetaServer {
    /// Seeds database `to` from `from` on this server (the new holder's master):
    /// an instant copy of `from` is taken in one script, then restored into `to` with
    /// plain commands, and `to` is marked seeded in the same transaction that moves
    /// its counters on. Every step can be repeated after a crash. Returns the keys
    /// copied; `None` when `to` was seeded before.
    pub async fn seed_generation(&self, from: u32, to: u32) -> Result<Option<u64>> {
        let mut src = self.database(from).await?;
        let mut dst = self.database(to).await?;
        let err = |e| self.err(e);
        let done: Option<u32> = dst.get(SEEDED_FROM).await.map_err(err)?;
        if done == Some(from) {
            return Ok(None);
        }
        // `to` is emptied below: it must be new, or hold what an interrupted seed of
        // this very file system left (nothing mounts it before it is marked). Anything
        // else, another file system above all, is refused untouched.
        let uuid = |setting: Option<String>| {
            setting.and_then(|j| {
                serde_json::from_str::<serde_json::Value>(&j).ok()?["UUID"].as_str().map(String::from)
            })
        };
        let theirs = uuid(src.get("setting").await.map_err(err)?);
        let Some(ours) = theirs else { return Ok(Some(0)) };
        let size: u64 = redis::cmd("DBSIZE").query_async(&mut dst).await.map_err(err)?;
        let resuming = dst.get::<_, Option<u32>>(SEEDING_FROM).await.map_err(err)? == Some(from)
            || (done.is_none() && uuid(dst.get("setting").await.map_err(err)?).as_deref() == Some(&ours));
        if size > 0 && !resuming {
            return Err(super::Error::WouldOverwrite {
                server: self.url.to_string(),
                db: to,
                detail: format!("it holds {size} keys of another file system or generation"),
            });
        }
        let snapshot = snapshot_key(to);
        let _: i64 = redis::Script::new(SNAPSHOT).key(&snapshot).invoke_async(&mut src).await.map_err(err)?;
        redis::pipe()
            .atomic()
            .cmd("FLUSHDB")
            .ignore()
            .cmd("SET")
            .arg(SEEDING_FROM)
            .arg(from)
            .ignore()
            .query_async::<()>(&mut dst)
            .await
            .map_err(err)?;
        let mut cursor: u64 = 0;
        let mut copied = 0u64;
        loop {
            let (next, batch): (u64, Vec<KeyDump>) = redis::cmd("HSCAN")
                .arg(&snapshot)
                .arg(cursor)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut src)
                .await
                .map_err(err)?;
            let mut pipe = redis::pipe();
            for (key, dump) in &batch {
                pipe.cmd("RESTORE").arg(key).arg(0).arg(dump).arg("REPLACE").ignore();
            }
            pipe.query_async::<()>(&mut dst).await.map_err(err)?;
            copied += batch.len() as u64;
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        if copied == 0 {
            return Ok(Some(0));
        }
        redis::pipe()
            .atomic()
            .cmd("INCRBY")
            .arg("nextinode")
            .arg(COUNTER_JUMP)
            .ignore()
            .cmd("INCRBY")
            .arg("nextchunk")
            .arg(COUNTER_JUMP)
            .ignore()
            .cmd("SET")
            .arg(SEEDED_FROM)
            .arg(from)
            .ignore()
            .cmd("DEL")
            .arg(SEEDING_FROM)
            .ignore()
            .query_async::<()>(&mut dst)
            .await
            .map_err(err)?;
        src.del::<_, ()>(&snapshot).await.map_err(err)?;
        Ok(Some(copied))
    }

    /// The tail of the retired generation in `db` as this server holds it; `None`
    /// when it holds no digests (the seed never reached it).
    pub async fn generation_tail(&self, db: u32) -> Result<Option<Tail>> {
        let mut c = self.database(db).await?;
        let (changed, gone): (i64, i64) =
            redis::Script::new(TAIL).invoke_async(&mut c).await.map_err(|e| self.err(e))?;
        Ok((changed >= 0).then_some(Tail { changed: changed as u64, gone: gone.max(0) as u64 }))
    }

    /// The retired generations of `fs_name`, by database.
    pub async fn generations(&self, fs_name: &str) -> Result<Vec<(u32, Generation)>> {
        let key = generations_key(fs_name);
        let all: Vec<(u32, String)> = self
            .registry(|mut c| {
                let key = key.clone();
                async move { c.hgetall(key).await }
            })
            .await?;
        let mut gens = all
            .into_iter()
            .map(|(db, j)| {
                serde_json::from_str::<Generation>(&j)
                    .map(|g| (db, g))
                    .map_err(|e| super::Error::Corrupt { key: key.clone(), detail: e.to_string() })
            })
            .collect::<Result<Vec<_>>>()?;
        gens.sort_by_key(|(_, g)| g.epoch);
        Ok(gens)
    }

    /// Every volume that has retired generations.
    pub async fn volumes_with_generations(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> =
            self.registry(|mut c| async move { c.smembers(GENERATIONS).await }).await?;
        names.sort();
        Ok(names)
    }

    pub async fn set_generation(&self, fs_name: &str, db: u32, g: &Generation) -> Result<()> {
        let key = generations_key(fs_name);
        let json = serde_json::to_string(g).expect("generation serialises");
        self.registry(|mut c| {
            let (key, json) = (key.clone(), json.clone());
            async move { c.hset::<_, _, _, ()>(key, db, json).await }
        })
        .await
    }

    /// Forgets that `fs_name` has retired generations (it is being deleted; their
    /// databases were dropped one by one). Idempotent.
    pub async fn forget_generations(&self, fs_name: &str) -> Result<()> {
        let key = generations_key(fs_name);
        self.registry(|mut c| {
            let key = key.clone();
            async move {
                redis::pipe().atomic().del(&key).srem(GENERATIONS, fs_name).query_async::<()>(&mut c).await
            }
        })
        .await
    }

    /// Gives a database that is already empty back to the free pool.
    pub async fn free_database(&self, db: u32) -> Result<()> {
        self.registry(|mut c| async move { c.srem::<_, _, ()>(super::registry::DATABASES, db).await }).await
    }

    /// Empties a retired generation and gives its database back (the operator is done
    /// with it, or the volume is deleted). Idempotent.
    pub async fn drop_generation(&self, fs_name: &str, db: u32) -> Result<()> {
        self.flush_database(db).await?;
        let key = generations_key(fs_name);
        self.registry(|mut c| {
            let key = key.clone();
            async move {
                redis::pipe()
                    .atomic()
                    .hdel(&key, db)
                    .srem(super::registry::DATABASES, db)
                    .query_async::<()>(&mut c)
                    .await?;
                let left: u64 = c.hlen(&key).await?;
                if left == 0 {
                    c.srem::<_, _, ()>(GENERATIONS, fs_name).await?;
                }
                Ok(())
            }
        })
        .await
    }
}
