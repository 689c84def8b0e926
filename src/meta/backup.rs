//! What backups need of the metadata servers: a point-in-time read of one family's
//! whole database (one script, so no commit lands half way through it), loading such
//! a read into a database, the family's registry records, when each family was last
//! backed up, and the lease that lets one controller take backups (docs/operations.md,
//! "Metadata backups").

use super::dump::{Key, Kind, VolumeEntry};
use super::family::{family_snapshots_key, members_key, publications_key, SNAPSHOTS};
use super::registry::{holder_key, volume_key, DATABASES, VOLUMES};
use super::{Error, MetaServer, Result};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Last good backup per family: fs name -> [`BackupRecord`] JSON.
const BACKUPS: &str = "kelp:backups";
/// Which controller takes backups now: its node id, with a time to live.
const LEASE: &str = "kelp:backup:lease";
/// JuiceFS's format record; a database without it holds no file system.
pub const SETTING: &str = "setting";

/// Every key of the database with its type and elements, as one script: the server
/// runs nothing else meanwhile, so the read is a state that existed. Read-only, so it
/// replicates nothing. Returns the keys flat (name, type, elements) and the server's
/// clock before and after, for the stall.
const DUMP: &str = r#"
local t0 = redis.call('TIME')
local out = {}
for _, k in ipairs(redis.call('KEYS', '*')) do
  local t = redis.call('TYPE', k)['ok']
  local v
  if t == 'string' then v = { redis.call('GET', k) }
  elseif t == 'hash' then v = redis.call('HGETALL', k)
  elseif t == 'list' then v = redis.call('LRANGE', k, 0, -1)
  elseif t == 'set' then v = redis.call('SMEMBERS', k)
  elseif t == 'zset' then v = redis.call('ZRANGE', k, 0, -1, 'WITHSCORES')
  else return redis.error_reply('KELP_UNKNOWN_TYPE ' .. k .. ' ' .. t) end
  out[#out + 1] = k
  out[#out + 1] = t
  out[#out + 1] = v
end
local t1 = redis.call('TIME')
return { out, t0, t1 }
"#;

/// A read of a whole database can take seconds on a large family.
const DUMP_TIMEOUT: Duration = Duration::from_secs(120);
/// Commands per pipeline when loading, and elements per command.
const BATCH: usize = 1000;

/// The last good backup of a family, as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    pub taken_unix: i64,
    pub object: String,
    pub bytes: u64,
    pub keys: u64,
    pub stall_ms: u64,
}

/// A database's content read by [`MetaServer::dump_database`].
#[derive(Debug)]
pub struct Dump {
    pub keys: Vec<Key>,
    /// Microseconds the script ran (the server's own clock): the stall it caused.
    pub stall_us: u64,
}

impl MetaServer {
    /// Reads every key of database `db` at one point in time.
    pub async fn dump_database(&self, db: u32) -> Result<Dump> {
        let client = redis::Client::open(self.url().connection_info(db))
            .map_err(|e| super::unreachable(self.url(), e))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(DUMP_TIMEOUT));
        let mut c = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| super::unreachable(self.url(), e))?;
        let (flat, t0, t1): (Vec<redis::Value>, (u64, u64), (u64, u64)) =
            redis::Script::new(DUMP).invoke_async(&mut c).await.map_err(|e| self.err(e))?;
        let stall_us = (t1.0 * 1_000_000 + t1.1).saturating_sub(t0.0 * 1_000_000 + t0.1);
        let mut keys = Vec::with_capacity(flat.len() / 3);
        let corrupt = |detail: String| Error::Corrupt { key: format!("database {db}"), detail };
        for triple in flat.chunks(3) {
            let [name, kind, elements] = triple else {
                return Err(corrupt("the dump's reply is not in threes".into()));
            };
            let name: Vec<u8> = redis::from_redis_value(name.clone()).map_err(|e| corrupt(e.to_string()))?;
            let kind: String = redis::from_redis_value(kind.clone()).map_err(|e| corrupt(e.to_string()))?;
            let kind = Kind::from_type(&kind).ok_or_else(|| corrupt(format!("key type {kind}")))?;
            let elements: Vec<Vec<u8>> =
                redis::from_redis_value(elements.clone()).map_err(|e| corrupt(e.to_string()))?;
            keys.push(Key { name, kind, elements });
        }
        Ok(Dump { keys, stall_us })
    }

    /// Whether database `db` holds a JuiceFS file system.
    pub async fn has_file_system(&self, db: u32) -> Result<bool> {
        let mut c = self.database(db).await?;
        c.exists(SETTING).await.map_err(|e| self.err(e))
    }

    /// Empties database `db` and writes `keys` into it, JuiceFS's `setting` last: a
    /// load that stops half way leaves no file system a node would mount, and running
    /// it again starts over.
    pub async fn load_database(&self, db: u32, keys: &[Key]) -> Result<()> {
        self.flush_database(db).await?;
        let mut c = self.database(db).await?;
        let (setting, rest): (Vec<&Key>, Vec<&Key>) = keys.iter().partition(|k| k.name == SETTING.as_bytes());
        for group in [rest, setting] {
            for batch in group.chunks(BATCH) {
                let mut pipe = redis::pipe();
                for k in batch {
                    write_key(&mut pipe, k);
                }
                pipe.query_async::<()>(&mut c).await.map_err(|e| self.err(e))?;
            }
        }
        Ok(())
    }

    /// The registry records of the family of `fs`: its founder, then its clones, and
    /// its snapshots' records.
    pub async fn family_records(&self, fs: &str) -> Result<(Vec<VolumeEntry>, Vec<String>)> {
        let entry = |name: &str, member: Option<String>, fields: Vec<(String, String)>| {
            let rec = super::registry::record_from_fields(name, fields)?;
            Ok::<_, Error>(VolumeEntry {
                name: name.to_string(),
                db: rec.db,
                state: format!("{:?}", rec.state).to_lowercase(),
                spec: rec.spec,
                member,
            })
        };
        let founder: Vec<(String, String)> = self.hash_of(&volume_key(fs)).await?;
        if founder.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut volumes = vec![entry(fs, None, founder)?];
        let members: Vec<(String, String)> = self.hash_of(&members_key(fs)).await?;
        for (tag, name) in members {
            let fields = self.hash_of(&volume_key(&name)).await?;
            if !fields.is_empty() {
                volumes.push(entry(&name, Some(tag), fields)?);
            }
        }
        let key = family_snapshots_key(fs);
        let names: Vec<String> = self
            .registry(|mut c| {
                let key = key.clone();
                async move { c.smembers(key).await }
            })
            .await?;
        let mut snapshots = Vec::new();
        for name in names {
            let json: Option<String> = self
                .registry(|mut c| {
                    let name = name.clone();
                    async move { c.hget(SNAPSHOTS, name).await }
                })
                .await?;
            snapshots.extend(json);
        }
        Ok((volumes, snapshots))
    }

    async fn hash_of(&self, key: &str) -> Result<Vec<(String, String)>> {
        self.registry(|mut c| async move { c.hgetall(key).await }).await
    }

    /// Writes back the registry records of a restored family, in one transaction:
    /// its volumes (their databases allocated), members and snapshots. The family's
    /// publications are forgotten (Swarm publishes again when its tasks start).
    pub async fn restore_family_records(
        &self,
        fs: &str,
        volumes: &[VolumeEntry],
        snapshots: &[(String, String)],
    ) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for v in volumes {
            pipe.hset_multiple(
                volume_key(&v.name),
                &[("db", v.db.to_string()), ("state", v.state.clone()), ("spec", v.spec.clone())],
            )
            .ignore()
            .zadd(VOLUMES, &v.name, 0)
            .ignore()
            .sadd(DATABASES, v.db)
            .ignore();
            if let Some(tag) = &v.member {
                pipe.hset(members_key(fs), tag, &v.name).ignore();
            }
        }
        for (name, json) in snapshots {
            pipe.hset(SNAPSHOTS, name, json).ignore().sadd(family_snapshots_key(fs), name).ignore();
        }
        pipe.del(publications_key(fs)).ignore();
        self.registry(|mut c| {
            let pipe = pipe.clone();
            async move { pipe.query_async::<()>(&mut c).await }
        })
        .await
    }

    /// Marks the family's holder (if any) released: a restore has written every key,
    /// so no node holds writes the next one must wait for.
    pub async fn release_holder_after_restore(&self, fs: &str) -> Result<()> {
        let key = holder_key(fs);
        self.registry(|mut c| {
            let key = key.clone();
            async move {
                let exists: bool = c.exists(&key).await?;
                if exists {
                    c.hset::<_, _, _, ()>(&key, "released", 1).await?;
                }
                Ok(())
            }
        })
        .await
    }

    /// Records a good backup of the family of `fs`.
    pub async fn record_backup(&self, fs: &str, r: &BackupRecord) -> Result<()> {
        let json = serde_json::to_string(r).expect("a backup record serialises");
        self.registry(|mut c| {
            let json = json.clone();
            async move { c.hset::<_, _, _, ()>(BACKUPS, fs, json).await }
        })
        .await
    }

    /// Forgets the last good backup of the family of `fs`: the family is gone.
    pub async fn forget_backup(&self, fs: &str) -> Result<()> {
        self.registry(|mut c| async move { c.hdel::<_, _, ()>(BACKUPS, fs).await }).await
    }

    /// The last good backup of the family of `fs`, if it has one.
    pub async fn last_backup(&self, fs: &str) -> Result<Option<BackupRecord>> {
        let json: Option<String> = self.registry(|mut c| async move { c.hget(BACKUPS, fs).await }).await?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// The last good backup of every family that has one.
    pub async fn last_backups(&self) -> Result<Vec<(String, BackupRecord)>> {
        let all: Vec<(String, String)> = self.hash_of(BACKUPS).await?;
        Ok(all.into_iter().filter_map(|(fs, j)| Some((fs, serde_json::from_str(&j).ok()?))).collect())
    }

    /// Takes or renews the backup lease for `owner` for `ttl`; false while another
    /// owner holds it. On a multi-master set two controllers can both win within a
    /// replication delay: they then write the same object names (a backup's name is
    /// its second), so the cost is one backup taken twice, never a wrong one.
    pub async fn backup_lease(&self, owner: &str, ttl: Duration) -> Result<bool> {
        const TAKE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#;
        let ms = ttl.as_millis() as u64;
        let script = redis::Script::new(TAKE);
        let won: i64 = self
            .registry(|mut c| {
                let mut inv = script.key(LEASE);
                inv.arg(owner).arg(ms);
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        Ok(won == 1)
    }
}

/// The commands that recreate `k` (after the flush, so no DEL is needed).
fn write_key(pipe: &mut redis::Pipeline, k: &Key) {
    match k.kind {
        Kind::String => {
            if let Some(v) = k.elements.first() {
                pipe.cmd("SET").arg(&k.name).arg(v).ignore();
            }
        }
        Kind::Hash => {
            for part in k.elements.chunks(2 * BATCH) {
                pipe.cmd("HSET").arg(&k.name).arg(part).ignore();
            }
        }
        Kind::List => {
            for part in k.elements.chunks(BATCH) {
                pipe.cmd("RPUSH").arg(&k.name).arg(part).ignore();
            }
        }
        Kind::Set => {
            for part in k.elements.chunks(BATCH) {
                pipe.cmd("SADD").arg(&k.name).arg(part).ignore();
            }
        }
        Kind::ZSet => {
            for part in k.elements.chunks(2 * BATCH) {
                let mut cmd = redis::cmd("ZADD");
                cmd.arg(&k.name);
                for pair in part.chunks(2) {
                    if let [member, score] = pair {
                        cmd.arg(score).arg(member);
                    }
                }
                pipe.add_command(cmd).ignore();
            }
        }
    }
}
