//! Which metadata master holds a volume family's writes: where a snapshot, a clone
//! or a backup must read so that it misses nothing a writer had acknowledged. Both
//! the controller and the backups ask, so it sits below them.

use crate::error::{Error, Result};
use crate::meta::MetaServer;
use crate::pinning::Role;
use crate::volume::{Spec, VolumeId};

/// The master that holds the family's writes and the database of its live
/// generation: a copy made anywhere else could miss writes its writer has had
/// acknowledged but that have not replicated yet. That is the holder's own master
/// while a node holds the family (held or just released: it has everything the
/// holder committed), the home master while shared writers write, else this
/// controller's.
pub async fn writer_master(meta: &MetaServer, family: &VolumeId) -> Result<(MetaServer, u32)> {
    let holder = meta.holder(&family.fs_name).await?;
    let db = holder.as_ref().map(|h| h.db).filter(|&d| d != 0).unwrap_or(family.db);
    let shared =
        meta.publications(&family.fs_name).await?.iter().any(|(_, _, role)| *role == Role::SharedWriter);
    if shared {
        return Ok((home_master(meta, &family.fs_name).await?, db));
    }
    let url = match holder {
        Some(h) => meta.node(&h.node).await?.map(|n| n.local_meta),
        None => None,
    };
    Ok((master_at(meta, url.as_deref())?, db))
}

/// The family's home master, where its shared writers send their metadata.
pub async fn home_master(meta: &MetaServer, fs: &str) -> Result<MetaServer> {
    let founder = meta.volume(fs).await?;
    let home = founder.map(|r| Spec::of(&r)).transpose()?.map(|s| s.home_meta);
    master_at(meta, home.as_deref())
}

/// The master at `url` as the registry names it, or this controller's own when `url`
/// is none or its own.
fn master_at(meta: &MetaServer, url: Option<&str>) -> Result<MetaServer> {
    match url.filter(|u| !u.is_empty() && *u != meta.url().public_url()) {
        None => Ok(meta.clone()),
        Some(u) => meta.peer(u).map_err(|e| Error::Internal(format!("the registry names master {u:?}: {e}"))),
    }
}
