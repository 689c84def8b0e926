//! JuiceFS file systems as kelp sees them: written natively into a volume's database,
//! resized by rewriting `Capacity`, measured from the counters clients maintain.

pub mod format;

use crate::meta::{self, MetaServer};
pub use format::{FormatSpec, Setting};

/// Errors of the JuiceFS layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Meta(#[from] meta::Error),
    #[error("database {db} already holds file system {found:?} (uuid {uuid}), not the one being created; it was not touched")]
    Foreign { db: u32, found: String, uuid: String },
    #[error("database {db} holds no JuiceFS file system")]
    Missing { db: u32 },
    #[error("the setting in database {db} is unreadable: {detail}")]
    BadSetting { db: u32, detail: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Writes `setting`, the root inode and (with trash) the trash inode into `db`,
/// exactly the keys `juicefs format` writes. Each key is written only if absent, so a
/// retry after a crash finishes the job and never changes what a client may already
/// have seen; a database holding another file system is refused untouched.
pub async fn write_format(meta: &MetaServer, db: u32, setting: &Setting, now_secs: i64) -> Result<()> {
    let mut c = meta.database(db).await?;
    let existing: Option<String> =
        redis::cmd("GET").arg("setting").query_async(&mut c).await.map_err(|e| meta.err(e))?;
    if let Some(json) = existing {
        let found = Setting::from_json(&json).map_err(|e| Error::BadSetting { db, detail: e.to_string() })?;
        if found.uuid != setting.uuid {
            return Err(Error::Foreign { db, found: found.name, uuid: found.uuid });
        }
    }
    let mut pipe = redis::pipe();
    pipe.cmd("SET").arg("setting").arg(setting.to_json()).arg("NX").ignore();
    pipe.cmd("SET")
        .arg(format::inode_key(format::ROOT_INODE))
        .arg(&format::root_attr(now_secs)[..])
        .arg("NX")
        .ignore();
    if setting.trash_days > 0 {
        pipe.cmd("SET")
            .arg(format::inode_key(format::TRASH_INODE))
            .arg(&format::trash_attr(now_secs)[..])
            .arg("NX")
            .ignore();
    }
    pipe.query_async::<()>(&mut c).await.map_err(|e| meta.err(e))?;
    Ok(())
}

/// Reads the setting of the file system in `db`.
pub async fn read_setting(meta: &MetaServer, db: u32) -> Result<Setting> {
    let mut c = meta.database(db).await?;
    let json: Option<String> =
        redis::cmd("GET").arg("setting").query_async(&mut c).await.map_err(|e| meta.err(e))?;
    let json = json.ok_or(Error::Missing { db })?;
    Setting::from_json(&json).map_err(|e| Error::BadSetting { db, detail: e.to_string() })
}

/// Sets the hard capacity. Mounted clients reload the setting on their heartbeat and
/// enforce the new limit without a remount. Only `Capacity` changes; the UUID and the
/// sealed secret stay byte-identical.
pub async fn set_capacity(meta: &MetaServer, db: u32, capacity_bytes: u64) -> Result<()> {
    let mut setting = read_setting(meta, db).await?;
    if setting.capacity == capacity_bytes {
        return Ok(());
    }
    setting.capacity = capacity_bytes;
    let mut c = meta.database(db).await?;
    redis::cmd("SET")
        .arg("setting")
        .arg(setting.to_json())
        .query_async::<()>(&mut c)
        .await
        .map_err(|e| meta.err(e))?;
    Ok(())
}

/// A session whose expiry is beyond this (exclusive ZRANGE bound) is live; see
/// [`live_sessions`].
fn live_floor() -> String {
    const LIVE_MARGIN_SECS: i64 = 36;
    format!("({}", crate::unix_now() + LIVE_MARGIN_SECS)
}

/// How many JuiceFS clients have a live session on the file system in `db`. Each
/// client sets its session's expiry to now + 5 heartbeats (60 s with the default 12 s
/// heartbeat) in `allSessions` at every heartbeat, and removes it when it unmounts
/// cleanly. A running client's expiry is therefore always more than 48 s ahead; one
/// more than 36 s ahead has beaten within the last two heartbeats and counts as live,
/// while a killed client stops counting about 24 s after its last beat.
pub async fn live_sessions(meta: &MetaServer, db: u32) -> Result<u64> {
    let mut c = meta.database(db).await?;
    Ok(live_session_ids(meta, &mut c).await?.len() as u64)
}

async fn live_session_ids(
    meta: &MetaServer,
    c: &mut redis::aio::MultiplexedConnection,
) -> Result<Vec<String>> {
    redis::cmd("ZRANGEBYSCORE")
        .arg("allSessions")
        .arg(live_floor())
        .arg("+inf")
        .query_async(c)
        .await
        .map_err(|e| meta.err(e).into())
}

/// What a volume uses and may use: bytes, files, and its size in bytes (0: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub used_bytes: u64,
    pub files: u64,
    pub capacity_bytes: u64,
}

/// The usage of the volume in `db`: of its directory at `tree` (tree layout: the
/// counters and limit of its directory quota, which juicefs keeps per directory), or
/// of the whole file system (root layout: its counters and `Capacity`).
pub async fn volume_usage(meta: &MetaServer, db: u32, tree: Option<&[&str]>) -> Result<Usage> {
    let Some(path) = tree else {
        let (used_bytes, files) = usage(meta, db).await?;
        let capacity_bytes = read_setting(meta, db).await?.capacity;
        return Ok(Usage { used_bytes, files, capacity_bytes });
    };
    let ino = meta.tree_inode(db, path).await?.ok_or(Error::Missing { db })?.to_string();
    let mut c = meta.database(db).await?;
    let (space, inodes, quota): (Option<i64>, Option<i64>, Option<Vec<u8>>) = redis::pipe()
        .cmd("HGET")
        .arg("dirQuotaUsedSpace")
        .arg(&ino)
        .cmd("HGET")
        .arg("dirQuotaUsedInodes")
        .arg(&ino)
        .cmd("HGET")
        .arg("dirQuota")
        .arg(&ino)
        .query_async(&mut c)
        .await
        .map_err(|e| meta.err(e))?;
    // The quota record is the byte limit and the inode limit, 8 bytes each, big-endian.
    let capacity_bytes = quota
        .as_deref()
        .and_then(|q| q.get(..8))
        .map(|b| i64::from_be_bytes(b.try_into().expect("eight bytes")).max(0) as u64)
        .unwrap_or(0);
    Ok(Usage {
        used_bytes: space.unwrap_or(0).max(0) as u64,
        files: inodes.unwrap_or(0).max(0) as u64,
        capacity_bytes,
    })
}

/// Bytes and inodes the file system in `db` uses, from the counters its clients keep.
pub async fn usage(meta: &MetaServer, db: u32) -> Result<(u64, u64)> {
    let mut c = meta.database(db).await?;
    let (space, inodes): (Option<i64>, Option<i64>) = redis::cmd("MGET")
        .arg("usedSpace")
        .arg("totalInodes")
        .query_async(&mut c)
        .await
        .map_err(|e| meta.err(e))?;
    Ok((space.unwrap_or(0).max(0) as u64, inodes.unwrap_or(0).max(0) as u64))
}

/// Where the live clients of the file system in `db` run, as they describe themselves
/// in `sessionInfos` (host name and mount point), for messages that tell an operator
/// which node still uses a volume.
pub async fn session_hosts(meta: &MetaServer, db: u32) -> Result<Vec<String>> {
    let mut c = meta.database(db).await?;
    let ids = live_session_ids(meta, &mut c).await?;
    let mut hosts = Vec::new();
    for id in ids {
        let info: Option<String> = redis::cmd("HGET")
            .arg("sessionInfos")
            .arg(&id)
            .query_async(&mut c)
            .await
            .map_err(|e| meta.err(e))?;
        let v: serde_json::Value = info.and_then(|i| serde_json::from_str(&i).ok()).unwrap_or_default();
        hosts.push(format!(
            "{:?} at {:?}",
            v["HostName"].as_str().unwrap_or("?"),
            v["MountPoint"].as_str().unwrap_or("?")
        ));
    }
    Ok(hosts)
}
