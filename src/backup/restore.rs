//! Bringing a family back from a backup into the metadata servers, in place: into its
//! own database (the live generation's while the registry still names one, else the
//! one its volume ids name), so that the volume ids Swarm holds work again unchanged.
//!
//! The checks are decided in [`plan`] before anything is written; then the database is
//! loaded (JuiceFS's `setting` last), the fence raised over the last holder's epoch,
//! and the registry records written back. What the backup cannot bring back is
//! counted in the bucket: data objects of slices no file of the backup references
//! were written after it (or deleted just before it, and not yet freed), and belonged
//! to files or changes now lost. (`nextchunk` cannot tell: clients take slice ids in
//! batches, so ids used after the backup are often below its counter.)

use super::format::{self, Key, Kind, Manifest};
use super::{take, Error, Result};
use crate::meta::{BackupRecord, MetaServer, COUNTER_JUMP};
use crate::seaweedfs::Filer;
use crate::volume::BUCKET_PREFIX;
use std::collections::HashSet;
use tracing::info;

/// A backup read back: its object name, manifest and keys.
pub struct Fetched {
    pub object: String,
    /// The object's size.
    pub bytes: u64,
    pub manifest: Manifest,
    pub keys: Vec<Key>,
}

/// The backup of `fs` named `at` (an object name, or its time as `kelp admin backup
/// list` shows it), or the newest.
pub async fn fetch(filer: &Filer, fs: &str, at: Option<&str>) -> Result<Fetched> {
    let all = take::list(filer, fs).await?;
    let picked = match at {
        None => all.last(),
        Some(a) => {
            all.iter().find(|(name, _, _)| name == a || name.ends_with(&format!("/{a}")) || name.contains(a))
        }
    };
    let Some((object, _, _)) = picked else {
        return Err(Error::NotFound(match at {
            None => format!("volume {fs} has no backup in bucket {BUCKET_PREFIX}{fs}"),
            Some(a) => format!("volume {fs} has no backup {a:?} (see `kelp admin backup list {fs}`)"),
        }));
    };
    let bucket = format!("{BUCKET_PREFIX}{fs}");
    let bytes = filer
        .get_small_file(&bucket, object)
        .await?
        .ok_or_else(|| Error::NotFound(format!("backup {object} of volume {fs} vanished while read")))?;
    let bad = |why| Error::Bad { family: fs.to_string(), object: object.clone(), why };
    let (manifest, keys) = format::decode(&bytes).map_err(bad)?;
    if manifest.family != fs {
        return Err(Error::Refused(format!(
            "backup {object} in bucket {bucket} is of volume {}, not {fs}",
            manifest.family
        )));
    }
    Ok(Fetched { object: object.clone(), bytes: bytes.len() as u64, manifest, keys })
}

/// What the registry and the servers hold now, as far as a restore cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Current {
    /// The founder's record now: its database and spec's uuid.
    pub founder: Option<(u32, String)>,
    /// The family's holder now: its live database (0: the id's) and epoch.
    pub holder: Option<(u32, u64)>,
}

/// What a restore will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The database to load.
    pub db: u32,
    /// Raise the fence to this epoch afterwards (the last holder's), if any.
    pub fence: Option<u64>,
}

/// Decides where a backup goes, or why it must not be restored here.
pub fn plan(m: &Manifest, now: &Current) -> std::result::Result<Plan, String> {
    let founder = m.volumes.first().ok_or("the backup holds no volume record")?;
    let uuid = spec_uuid(&founder.spec).ok_or("the backup's volume record has no readable spec")?;
    if let Some((db, cur_uuid)) = &now.founder {
        if *cur_uuid != uuid || *db != founder.db {
            return Err(format!(
                "the registry has another volume named {} (database {db}); the backup's was in database {}: delete that volume first (`--as` restores a backup only into its own family while that lives)",
                m.family, founder.db
            ));
        }
    }
    let db = match now.holder {
        Some((live, _)) if live != 0 => live,
        _ => founder.db,
    };
    Ok(Plan { db, fence: now.holder.map(|(_, epoch)| epoch) })
}

fn spec_uuid(spec: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(spec).ok()?["uuid"].as_str().map(String::from)
}

/// Readies a backup's keys for loading under `plan`: the counters jumped
/// ([`jump_counters`]), and the fence dropped when no holder record survives. Then
/// the next publish starts the epochs again at 1, and a fence left from the lost
/// registry's epochs would be ahead of every new one: the next handover would not
/// wait for its releasing writer's fence at all. (With a surviving holder, the fence
/// is raised to its epoch after the load instead.)
pub fn prepare(keys: &mut Vec<Key>, plan: &Plan) {
    jump_counters(keys);
    if plan.fence.is_none() {
        keys.retain(|k| k.name != crate::meta::FENCE_KEY.as_bytes());
    }
}

/// Moves `nextchunk` past every slice id written since the backup, as a takeover's new
/// generation does: new writes never reuse the ids of the objects of lost writes,
/// which stay in the bucket for whoever wants to salvage them by hand.
pub fn jump_counters(keys: &mut [Key]) {
    for k in keys.iter_mut().filter(|k| k.name == b"nextchunk") {
        if let Some(v) = k.elements.first_mut() {
            let n: u64 = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
            *v = (n + COUNTER_JUMP).to_string().into_bytes();
        }
    }
}

/// What a restore did, for its summary.
#[derive(Debug, Clone)]
pub struct Restored {
    pub family: String,
    pub object: String,
    pub taken_unix: i64,
    pub db: u32,
    pub volumes: Vec<String>,
    pub inodes: u64,
    pub keys: u64,
    /// Data objects of slices no restored file references, and their bytes: what the
    /// restore cannot bring back.
    pub lost_objects: u64,
    pub lost_bytes: u64,
}

/// Restores the family of `fs` from the backup `at` (or the newest). Refuses, writing
/// nothing, when its database holds a file system and `force` is not given.
pub async fn restore(
    meta: &MetaServer,
    filer: &Filer,
    fs: &str,
    at: Option<&str>,
    force: bool,
) -> Result<Restored> {
    let mut f = fetch(filer, fs, at).await?;
    let founder = meta.volume(fs).await?;
    let now = Current {
        founder: founder.as_ref().map(|r| (r.db, spec_uuid(&r.spec).unwrap_or_default())),
        holder: meta.holder(fs).await?.map(|h| (h.db, h.epoch)),
    };
    let plan = plan(&f.manifest, &now).map_err(|why| Error::Refused(format!("volume {fs}: {why}")))?;
    if let Some(other) = db_owner(meta, plan.db, &f.manifest).await? {
        return Err(Error::Refused(format!(
            "volume {fs}: database {} now belongs to volume {other}, made after the loss; delete it first (restoring a backup into another database is not built)",
            plan.db
        )));
    }
    if !force && meta.has_file_system(plan.db).await? {
        return Err(Error::Refused(format!(
            "volume {fs}: database {} on {} holds a file system; restoring over it loses every write since the backup ({}); stop its tasks and add --force if that is meant",
            plan.db,
            meta.url(),
            f.object
        )));
    }
    prepare(&mut f.keys, &plan);
    meta.load_database(plan.db, &f.keys).await?;
    if let Some(epoch) = plan.fence {
        meta.raise_fence(plan.db, epoch).await?;
        meta.release_holder_after_restore(fs).await?;
    }
    let snapshots: Vec<(String, String)> = f
        .manifest
        .snapshots
        .iter()
        .filter_map(|j| {
            let name = serde_json::from_str::<serde_json::Value>(j).ok()?["name"].as_str()?.to_string();
            Some((name, j.clone()))
        })
        .collect();
    meta.restore_family_records(fs, &f.manifest.volumes, &snapshots).await?;
    // The backup restored from is a good backup of what the family now holds: its age
    // is what a new loss would cost, and the schedule takes the next when it is due.
    let record = BackupRecord {
        taken_unix: f.manifest.taken_unix,
        object: f.object.clone(),
        bytes: f.bytes,
        keys: f.manifest.keys,
        stall_ms: f.manifest.stall_ms,
    };
    meta.record_backup(fs, &record).await?;
    let name = setting_name(&f.keys).unwrap_or(fs.to_string());
    let (lost_objects, lost_bytes) =
        unreferenced_objects(filer, fs, &name, &referenced_slices(&f.keys)).await?;
    info!(volume = %fs, object = %f.object, db = plan.db, keys = f.keys.len(), lost_objects, "metadata restored");
    Ok(Restored {
        family: fs.to_string(),
        object: f.object,
        taken_unix: f.manifest.taken_unix,
        db: plan.db,
        volumes: f.manifest.volumes.iter().map(|v| v.name.clone()).collect(),
        inodes: f.manifest.inodes,
        keys: f.manifest.keys,
        lost_objects,
        lost_bytes,
    })
}

/// Another registered volume (not one of the backup's) whose record names `db`.
async fn db_owner(meta: &MetaServer, db: u32, m: &Manifest) -> Result<Option<String>> {
    let mut after: Option<String> = None;
    loop {
        let names = meta.volume_names_after(after.as_deref(), 500).await?;
        for name in &names {
            if m.volumes.iter().any(|v| &v.name == name) {
                continue;
            }
            if meta.volume(name).await?.is_some_and(|r| r.db == db) {
                return Ok(Some(name.clone()));
            }
        }
        if names.len() < 500 {
            return Ok(None);
        }
        after = names.last().cloned();
    }
}

/// The file system's name in its `setting` (the objects' prefix in the bucket).
fn setting_name(keys: &[Key]) -> Option<String> {
    let k = keys.iter().find(|k| k.name == crate::meta::SETTING.as_bytes())?;
    let v: serde_json::Value = serde_json::from_slice(k.elements.first()?).ok()?;
    v["Name"].as_str().map(String::from)
}

/// The slice ids the file system's chunk lists (`c<inode>_<index>`, 24-byte slices
/// whose bytes 4..12 are the id) reference.
fn referenced_slices(keys: &[Key]) -> HashSet<u64> {
    let chunk_list =
        |n: &[u8]| n.first() == Some(&b'c') && n[1..].iter().all(|b| b.is_ascii_digit() || *b == b'_');
    keys.iter()
        .filter(|k| k.kind == Kind::List && k.name.len() > 1 && chunk_list(&k.name))
        .flat_map(|k| k.elements.iter())
        .filter(|s| s.len() == 24)
        .map(|s| u64::from_be_bytes(s[4..12].try_into().expect("8 bytes")))
        .filter(|&id| id > 0)
        .collect()
}

/// Data objects (`<name>/chunks/<a>/<b>/<id>_<index>_<size>`) of slices not in
/// `referenced`, and their bytes.
async fn unreferenced_objects(
    filer: &Filer,
    fs: &str,
    name: &str,
    referenced: &HashSet<u64>,
) -> Result<(u64, u64)> {
    let bucket = format!("{BUCKET_PREFIX}{fs}");
    let (mut count, mut bytes) = (0, 0);
    let mut dirs = vec![format!("{name}/chunks")];
    while let Some(dir) = dirs.pop() {
        for (entry, is_dir, size) in filer.list_dir(&bucket, &dir).await? {
            if is_dir {
                dirs.push(format!("{dir}/{entry}"));
            } else if slice_id(&entry).is_some_and(|id| !referenced.contains(&id)) {
                count += 1;
                bytes += size;
            }
        }
    }
    Ok((count, bytes))
}

/// The slice id of a data object's name `<id>_<index>_<size>`.
fn slice_id(object: &str) -> Option<u64> {
    object.split('_').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::dump::VolumeEntry;

    fn manifest(db: u32, uuid: &str) -> Manifest {
        Manifest {
            format: format::FORMAT,
            family: "vol".into(),
            source_db: db,
            taken_unix: 1,
            server: String::new(),
            keys: 0,
            inodes: 0,
            next_chunk: 0,
            stall_ms: 0,
            volumes: vec![VolumeEntry {
                name: "vol".into(),
                db,
                state: "ready".into(),
                spec: format!(r#"{{"uuid":"{uuid}"}}"#),
                member: None,
            }],
            snapshots: vec![],
        }
    }

    #[test]
    fn a_wiped_registry_gets_the_database_the_ids_name() {
        assert_eq!(plan(&manifest(4, "u"), &Current::default()), Ok(Plan { db: 4, fence: None }));
    }

    #[test]
    fn a_live_registry_keeps_its_generation_and_fences_its_holder() {
        let now = Current { founder: Some((4, "u".into())), holder: Some((9, 12)) };
        assert_eq!(plan(&manifest(4, "u"), &now), Ok(Plan { db: 9, fence: Some(12) }));
        let now = Current { founder: Some((4, "u".into())), holder: Some((0, 3)) };
        assert_eq!(plan(&manifest(4, "u"), &now), Ok(Plan { db: 4, fence: Some(3) }));
    }

    #[test]
    fn another_volume_of_the_same_name_is_never_overwritten() {
        let now = Current { founder: Some((4, "other".into())), holder: None };
        assert!(plan(&manifest(4, "u"), &now).unwrap_err().contains("another volume"));
        let now = Current { founder: Some((5, "u".into())), holder: None };
        assert!(plan(&manifest(4, "u"), &now).is_err());
    }

    #[test]
    fn new_writes_after_a_restore_take_slice_ids_past_the_lost_ones() {
        let mut keys = vec![
            Key { name: b"nextchunk".to_vec(), kind: Kind::String, elements: vec![b"1001".to_vec()] },
            Key { name: b"nextinode".to_vec(), kind: Kind::String, elements: vec![b"7".to_vec()] },
        ];
        jump_counters(&mut keys);
        assert_eq!(keys[0].elements[0], (1001 + COUNTER_JUMP).to_string().into_bytes());
        assert_eq!(keys[1].elements[0], b"7");
        assert_eq!(slice_id("1234_0_4096"), Some(1234));
        assert_eq!(slice_id("x_0_4096"), None);
    }

    #[test]
    fn a_fence_of_a_lost_registrys_epochs_is_not_restored() {
        let fence =
            || Key { name: b"kelp:fence".to_vec(), kind: Kind::String, elements: vec![b"5".to_vec()] };
        let setting = Key { name: b"setting".to_vec(), kind: Kind::String, elements: vec![b"{}".to_vec()] };
        let mut keys = vec![fence(), setting.clone()];
        prepare(&mut keys, &Plan { db: 4, fence: None });
        assert_eq!(keys, vec![setting.clone()]);
        // A surviving holder's epoch is raised over it after the load: kept.
        let mut keys = vec![fence(), setting.clone()];
        prepare(&mut keys, &Plan { db: 4, fence: Some(7) });
        assert_eq!(keys, vec![fence(), setting]);
    }

    #[test]
    fn the_slices_chunk_lists_reference_are_found() {
        let slice = |id: u64| [&[0u8; 4][..], &id.to_be_bytes(), &[0u8; 12]].concat();
        let keys = vec![
            Key { name: b"c7_0".to_vec(), kind: Kind::List, elements: vec![slice(5), slice(0), slice(9)] },
            Key { name: b"c7_1".to_vec(), kind: Kind::List, elements: vec![slice(11)] },
            Key { name: b"custom".to_vec(), kind: Kind::List, elements: vec![slice(13)] },
        ];
        assert_eq!(referenced_slices(&keys), HashSet::from([5, 9, 11]));
    }
}
