//! Metadata generations. A takeover moves a volume to a fresh database, seeded on the
//! new holder's own master from the generation the old holder wrote, and retires the
//! old one. Whatever the old holder's master accepted and had not replicated (its
//! tail) stays in the retired generation: replication can still bring it to every
//! master after a partition heals, but only into that database, which no mount uses.
//!
//! The seed also records, in the retired database, a digest of every key's content as
//! the new holder saw it. Read on the old holder's own master, where a tail is
//! written, any key of a file that differs from its digest was written there after the
//! takeover: that is how a tail is found, counted and named file by file. Digests are
//! of content read through commands, never of `DUMP`: two masters holding the same
//! value often encode it differently.

use super::keys::{generations_key, GENERATIONS};
use super::{MetaServer, Result};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

/// A retired generation, recorded when the takeover allocated its successor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    /// The node that held the volume and never released it.
    pub from_node: String,
    /// The node that took it over.
    pub to_node: String,
    /// The epoch of the takeover.
    pub epoch: u64,
    /// Unix time of the takeover, as the controller saw it.
    pub at_unix: i64,
    /// Keys of files written after the takeover (changed, new or deleted), as last
    /// counted on the old holder's master (`None`: not counted yet).
    #[serde(default)]
    pub tail_keys: Option<u64>,
    /// Other keys that differ there: usage counters, sessions, id counters. They carry
    /// no file data; reported apart so that they never pass for lost writes.
    #[serde(default)]
    pub tail_other: Option<u64>,
    /// The master the tail was counted on (no credentials).
    #[serde(default)]
    pub counted_on: Option<String>,
    /// Two counts in a row agreed on a master that could be read: the report is final.
    #[serde(default)]
    pub settled: bool,
    /// The files the tail touches (at most [`TAIL_FILES`]), for recovery.
    #[serde(default)]
    pub tail_files: Vec<TailFile>,
}

/// A file (or directory) of a retired generation with writes after the takeover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TailFile {
    pub inode: u64,
    /// Its path in the retired generation, when it still has one there.
    pub path: Option<String>,
    /// How many of its keys differ (attributes, entries, chunks, xattrs...).
    pub keys: u32,
}

/// At most this many files of a tail are named.
pub const TAIL_FILES: usize = 100;

/// How far a new generation moves JuiceFS's inode and slice counters past the old
/// one's: the old holder may have handed out numbers its master never replicated, and
/// the same slice number in both generations would name the same object in the bucket.
pub const COUNTER_JUMP: u64 = 1 << 30;

// A key's content as commands read it, independent of how the server encodes it:
// type, then every element in a canonical order, each length-prefixed.
const CONTENT_DIGEST: &str = r#"
local function lp(t, s) t[#t + 1] = #s .. ':' .. s end
local function content(k)
  local t = redis.call('TYPE', k)['ok']
  local out = { t }
  if t == 'string' then lp(out, redis.call('GET', k))
  elseif t == 'hash' then
    local h = redis.call('HGETALL', k)
    local f = {}
    for j = 1, #h, 2 do f[#f + 1] = #h[j] .. ':' .. h[j] .. #h[j + 1] .. ':' .. h[j + 1] end
    table.sort(f)
    for _, e in ipairs(f) do out[#out + 1] = e end
  elseif t == 'set' then
    local m = redis.call('SMEMBERS', k)
    table.sort(m)
    for _, e in ipairs(m) do lp(out, e) end
  elseif t == 'list' then
    for _, e in ipairs(redis.call('LRANGE', k, 0, -1)) do lp(out, e) end
  elseif t == 'zset' then
    for _, e in ipairs(redis.call('ZRANGE', k, 0, -1, 'WITHSCORES')) do lp(out, e) end
  end
  return redis.sha1hex(table.concat(out, ','))
end
"#;

// Take an instant copy of every JuiceFS key of the database the script runs in, into
// the hash KEYS[1] (key -> DUMP), and record each key's content digest in
// kelp:baseline2. One script, so it is one instant of the source: nothing arriving
// by replication can land half in it. It never leaves its own database: KeyDB 6.3.4
// replicates a script's writes to other databases into the caller's (docs/notes.md).
// Returns the keys copied; -1 when the copy exists already (a retry).
const SNAPSHOT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
redis.call('DEL', 'kelp:baseline2')
local n = 0
for _, k in ipairs(redis.call('KEYS', '*')) do
  if string.sub(k, 1, 5) ~= 'kelp:' then
    redis.call('HSET', 'kelp:baseline2', k, content(k))
    redis.call('HSET', KEYS[1], k, redis.call('DUMP', k))
    n = n + 1
  end
end
return n
"#;

// Compare the retired generation (the database the script runs in) with the digests
// taken when it was retired. Keys of files (attributes, entries, chunks, xattrs,
// parents, symlinks: i, d, c, x, p, s followed by the inode) are counted and named
// (at most ARGV[1]); every other key (counters, usage, sessions) is only counted.
// Returns {0} without digests, {-2} with only those of an older kelp (by encoding,
// not comparable), else {1, files changed or new, files deleted, others, names...}.
const TAIL: &str = r#"
if redis.call('EXISTS', 'kelp:baseline2') == 0 then
  if redis.call('EXISTS', 'kelp:baseline') == 1 then return {-2} end
  return {0}
end
local cap = tonumber(ARGV[1])
local function of_file(k)
  return string.match(k, '^[idxps]%d+$') or string.match(k, '^c%d+_%d+$')
end
local changed, gone, other = 0, 0, 0
local names = {}
local function differs(k)
  if of_file(k) then
    if #names < cap then names[#names + 1] = k end
    return 1
  end
  other = other + 1
  return 0
end
for _, k in ipairs(redis.call('KEYS', '*')) do
  if string.sub(k, 1, 5) ~= 'kelp:' then
    local want = redis.call('HGET', 'kelp:baseline2', k)
    if not want or want ~= content(k) then changed = changed + differs(k) end
  end
end
for _, k in ipairs(redis.call('HKEYS', 'kelp:baseline2')) do
  if redis.call('EXISTS', k) == 0 then gone = gone + differs(k) end
end
local out = { 1, changed, gone, other }
for _, k in ipairs(names) do out[#out + 1] = k end
return out
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// The server holds no digests of this generation (the seed has not reached it).
    NotYet,
    /// Retired by a kelp that digested encodings, which masters do not share.
    NotComparable,
    Counted {
        /// Keys of files changed or added after the takeover.
        changed: u64,
        /// Keys of files deleted after the takeover.
        gone: u64,
        /// Other keys that differ (counters, usage, sessions).
        other: u64,
        /// The differing keys of files, at most [`TAIL_FILES`] times a few.
        file_keys: Vec<String>,
    },
}

impl Tail {
    /// Keys of files that differ; `None` when nothing could be counted.
    pub fn keys(&self) -> Option<u64> {
        match self {
            Tail::Counted { changed, gone, .. } => Some(changed + gone),
            _ => None,
        }
    }
}

/// The inode a JuiceFS key of a file belongs to (`i12`, `d12`, `c12_0`...).
pub fn inode_of_key(key: &str) -> Option<u64> {
    let rest = key.strip_prefix(['i', 'd', 'x', 'p', 's']).or_else(|| key.strip_prefix('c'))?;
    let digits = if key.starts_with('c') { rest.split_once('_')?.0 } else { rest };
    digits.parse().ok()
}

/// The parent inode recorded in a JuiceFS attribute record (bytes 63..71).
fn parent_of(attr: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(attr.get(63..71)?.try_into().ok()?))
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
        let _: i64 = redis::Script::new(&format!("{CONTENT_DIGEST}{SNAPSHOT}"))
            .key(&snapshot)
            .invoke_async(&mut src)
            .await
            .map_err(err)?;
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

    /// The tail of the retired generation in `db` as this server holds it.
    pub async fn generation_tail(&self, db: u32) -> Result<Tail> {
        let mut c = self.database(db).await?;
        let script = redis::Script::new(&format!("{CONTENT_DIGEST}{TAIL}"));
        let reply: Vec<redis::Value> =
            script.arg(TAIL_FILES * 8).invoke_async(&mut c).await.map_err(|e| self.err(e))?;
        let int = |i: usize| match reply.get(i) {
            Some(redis::Value::Int(n)) => *n,
            _ => 0,
        };
        Ok(match int(0) {
            -2 => Tail::NotComparable,
            1 => Tail::Counted {
                changed: int(1).max(0) as u64,
                gone: int(2).max(0) as u64,
                other: int(3).max(0) as u64,
                file_keys: reply[4..]
                    .iter()
                    .filter_map(|v| match v {
                        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
                        _ => None,
                    })
                    .collect(),
            },
            _ => Tail::NotYet,
        })
    }

    /// The files behind a tail's keys, each with its path in database `db` where it
    /// still has one (found by walking parent records up to the root).
    pub async fn tail_files(&self, db: u32, file_keys: &[String]) -> Result<Vec<TailFile>> {
        let mut counts: std::collections::BTreeMap<u64, u32> = Default::default();
        for ino in file_keys.iter().filter_map(|k| inode_of_key(k)) {
            *counts.entry(ino).or_default() += 1;
        }
        let mut c = self.database(db).await?;
        let mut files = Vec::new();
        for (inode, keys) in counts.into_iter().take(TAIL_FILES) {
            let path = self.path_of(&mut c, inode).await?;
            files.push(TailFile { inode, path, keys });
        }
        Ok(files)
    }

    async fn path_of(&self, c: &mut redis::aio::MultiplexedConnection, inode: u64) -> Result<Option<String>> {
        let err = |e| self.err(e);
        let mut names = Vec::new();
        let mut ino = inode;
        while ino != 1 {
            if names.len() > 255 {
                return Ok(None);
            }
            let attr: Option<Vec<u8>> = c.get(format!("i{ino}")).await.map_err(err)?;
            let Some(parent) = attr.as_deref().and_then(parent_of) else { return Ok(None) };
            let entries: Vec<(Vec<u8>, Vec<u8>)> = c.hgetall(format!("d{parent}")).await.map_err(err)?;
            let name = entries
                .into_iter()
                .find(|(_, v)| v.get(1..9).is_some_and(|b| u64::from_be_bytes(b.try_into().unwrap()) == ino));
            let Some((name, _)) = name else { return Ok(None) };
            names.push(String::from_utf8_lossy(&name).into_owned());
            ino = parent;
        }
        names.reverse();
        Ok(Some(format!("/{}", names.join("/"))))
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
        self.registry(|mut c| async move { c.srem::<_, _, ()>(super::keys::DATABASES, db).await }).await
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
                    .srem(super::keys::DATABASES, db)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_keys_name_their_inode_and_others_none() {
        for (key, ino) in [
            ("i12", Some(12)),
            ("d1", Some(1)),
            ("c77_3", Some(77)),
            ("x9", Some(9)),
            ("p4", Some(4)),
            ("s5", Some(5)),
        ] {
            assert_eq!(inode_of_key(key), ino, "{key}");
        }
        for key in ["nextinode", "dirUsedSpace", "i", "c12", "c_1", "session7x", "delfiles", "sliceRef"] {
            assert_eq!(inode_of_key(key), None, "{key}");
        }
    }

    #[test]
    fn the_parent_is_read_where_juicefs_keeps_it() {
        let mut attr = vec![0u8; 72];
        attr[63..71].copy_from_slice(&4242u64.to_be_bytes());
        assert_eq!(parent_of(&attr), Some(4242));
        assert_eq!(parent_of(&attr[..60]), None);
    }
}
