//! Restoring a backup as a new volume, a clone from the past, while the original runs:
//! the founder's tree as the backup holds it is written into the family's live file
//! system under a new member (one script on the master that holds the family's
//! writes, as a clone's copy), sharing and counting the objects still there. The new
//! volume is a member of the family like any clone; the original is not touched.
//!
//! register (state creating) -> import the tree -> its quota -> the bucket shared ->
//! state ready. A failed import forgets the registration.

use super::restore::fetch;
use super::{tree, Error, Result};
use crate::meta::{Claim, MetaServer, VolumeState};
use crate::seaweedfs::Filer;
use crate::volume::{Spec, VolumeId};
use tracing::info;

/// What a restore as a new volume made.
#[derive(Debug, Clone)]
pub struct Cloned {
    pub id: VolumeId,
    pub object: String,
    pub taken_unix: i64,
    pub entries: u64,
}

/// Restores the founder of family `fs` from its backup `at` (or the newest) as the new
/// volume `name`.
pub async fn restore_as_new(
    meta: &MetaServer,
    filer: &Filer,
    fs: &str,
    at: Option<&str>,
    name: &str,
    max_entries: u64,
) -> Result<Cloned> {
    crate::volume::validate_name(name).map_err(|e| Error::Refused(e.to_string()))?;
    let f = fetch(filer, fs, at).await?;
    let founder =
        f.manifest.volumes.first().ok_or_else(|| Error::Refused("the backup holds no volume".into()))?;
    let past: Spec = serde_json::from_str(&founder.spec)
        .map_err(|e| Error::Refused(format!("the backup's record of {fs} is unreadable: {e}")))?;
    let live = meta.volume(fs).await?.ok_or_else(|| {
        Error::NotFound(format!(
            "volume {fs} is not in the registry: restore it in place (`kelp admin backup restore {fs}`) first"
        ))
    })?;
    let live_spec = Spec::of(&live).map_err(|e| Error::Refused(e.to_string()))?;
    if live.db != founder.db || live_spec.uuid != past.uuid {
        return Err(Error::Refused(format!(
            "volume {fs} in the registry is another file system than the backup's"
        )));
    }
    let family = past.id(founder.db, fs);
    let Some(from) = family.tree_path() else {
        return Err(Error::Refused(format!(
            "volume {fs} has the root layout: its file system has no room for a second tree"
        )));
    };
    let fs_new = crate::volume::fs_name_for(name);
    let spec = Spec {
        name: name.to_string(),
        created_unix: crate::unix_now(),
        member: Some(uuid::Uuid::new_v4().to_string()),
        family: Some(fs.to_string()),
        source: Some(format!("backup:{fs}/{}", f.object)),
        ..past.clone()
    };
    let id = spec.id(founder.db, &fs_new);
    let tag = id.member.clone().expect("a clone has a member");
    if let Claim::Existing(_) = meta.reserve_member(fs, &fs_new, founder.db, &tag, &spec.to_json()).await? {
        return Err(Error::Refused(format!("the name {name:?} is taken; choose another")));
    }
    let made = async {
        let tree = tree::export(&f.keys, &from, max_entries)
            .map_err(|why| Error::Refused(format!("{}: {why}", f.object)))?;
        let (server, db) = crate::masters::writer_master(meta, &family.family()).await?;
        let to = id.tree_path().expect("a clone has a member");
        let copied = server.import_tree(db, &to, &tree.to_args()).await?;
        server.tree_with_quota(db, &to, spec.capacity_bytes, spec.params.inodes).await?;
        filer.set_quota(&family.bucket(), 0).await?;
        Ok::<_, Error>(copied)
    }
    .await;
    let copied = match made {
        Ok(c) => c,
        Err(e) => {
            meta.forget_member(fs, &fs_new, &tag).await?;
            return Err(e);
        }
    };
    meta.set_volume_state(&fs_new, VolumeState::Ready).await?;
    info!(volume_id = %id, object = %f.object, entries = copied.entries, "backup restored as a new volume");
    Ok(Cloned { id, object: f.object, taken_unix: f.manifest.taken_unix, entries: copied.entries })
}
