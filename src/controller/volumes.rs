//! A volume as the registry knows it, for every controller path: finding a ready
//! volume by id (its record under its own name or, for a clone, through its family),
//! the database its live metadata generation uses, and the last step of its end
//! (bucket, databases, generations and records gone). Below `provision` and `family`,
//! which both need them, so neither reaches into the other for them.

use super::Backends;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::meta::{VolumeRecord, VolumeState};
use crate::volume::{bucket_for, Spec, VolumeId};

/// The last step of a volume's end, once nothing uses it: marked deleting, then its
/// bucket, its databases (every generation's) and its registry records, in that
/// order, each step repeatable after a crash.
pub(super) async fn destroy(b: &Backends, id: &VolumeId) -> Result<()> {
    b.meta.set_volume_state(&id.fs_name, VolumeState::Deleting).await?;
    failpoint::hit("delete:marked");
    b.filer.delete_bucket(&bucket_for(&id.fs_name)).await?;
    failpoint::hit("delete:bucket");
    b.meta.flush_database(id.db).await?;
    failpoint::hit("delete:flushed");
    // Every metadata generation goes with it: the live one a takeover moved it to
    // and the retired ones kept for inspection.
    let live = live_db(b, id).await?;
    if live != id.db {
        b.meta.flush_database(live).await?;
    }
    for (db, _) in b.meta.generations(&id.fs_name).await? {
        if db != id.db {
            b.meta.drop_generation(&id.fs_name, db).await?;
        }
    }
    b.meta.forget_generations(&id.fs_name).await?;
    if live != id.db {
        b.meta.free_database(live).await?;
    }
    b.meta.drop_holder(&id.fs_name).await?;
    b.meta.forget_family(&id.fs_name).await?;
    b.meta.forget_backup(&id.fs_name).await?;
    b.meta.release_volume(&id.fs_name, id.db).await?;
    Ok(())
}

/// Looks up a ready volume by id; `NotFound` for unknown, stale or unfinished ones.
pub async fn lookup(b: &Backends, id: &VolumeId) -> Result<(VolumeRecord, Spec)> {
    match record_of(b, id).await? {
        Some(r) if r.state == VolumeState::Ready => {
            let spec = Spec::of(&r)?;
            if spec.id(r.db, &r.fs_name) != *id {
                return Err(Error::NotFound(format!(
                    "volume {id} does not exist (its name now belongs to a newer volume)"
                )));
            }
            Ok((r, spec))
        }
        _ => Err(Error::NotFound(format!("volume {id} does not exist"))),
    }
}

/// The registry record of the volume `id` names: a clone's is kept under its own
/// name and found through its family; every other volume's under the id's name.
pub async fn record_of(b: &Backends, id: &VolumeId) -> Result<Option<VolumeRecord>> {
    if let Some(tag) = &id.member {
        if let Some(name) = b.meta.member(&id.fs_name, tag).await? {
            return Ok(b.meta.volume(&name).await?);
        }
    }
    Ok(b.meta.volume(&id.fs_name).await?)
}

/// The database of the volume's live metadata generation.
pub async fn live_db(b: &Backends, id: &VolumeId) -> Result<u32> {
    Ok(b.meta.holder(&id.fs_name).await?.map(|h| h.db).filter(|&db| db != 0).unwrap_or(id.db))
}
