//! One backup of one family: read its live database on the master that holds its
//! writes (one script: a state that existed), add its registry records, write the
//! object into its bucket, record it, prune what retention no longer keeps.

use super::format::{self, Manifest};
use super::policy::{self, Afterwards, Retention};
use super::{Error, Result};
use crate::meta::{BackupRecord, MetaServer, SETTING};
use crate::seaweedfs::Filer;
use crate::volume::{Spec, BUCKET_PREFIX};
use tracing::{info, warn};

/// What one backup wrote.
#[derive(Debug, Clone)]
pub struct Taken {
    pub object: String,
    pub record: BackupRecord,
}

/// Backs up the family of `fs` (a founder's fs name) now.
pub async fn take(meta: &MetaServer, filer: &Filer, fs: &str, keep: Retention) -> Result<Taken> {
    let (volumes, snapshots) = meta.family_records(fs).await?;
    let Some(founder) = volumes.first() else {
        return Err(Error::NotFound(format!("volume {fs} has no registry record")));
    };
    let founder_spec = founder.spec.clone();
    let spec: Spec = serde_json::from_str(&founder.spec)
        .map_err(|e| Error::Refused(format!("volume {fs}: its registry record's spec is unreadable: {e}")))?;
    let family = spec.id(founder.db, fs);
    let (server, db) = crate::masters::writer_master(meta, &family).await?;
    let taken_unix = crate::unix_now();
    let dump = server.dump_database(db).await?;
    // A family whose database lost its file system (a wipe of that one database) must
    // not get an empty backup that retention would later keep instead of good ones.
    if !dump.keys.iter().any(|k| k.name == SETTING.as_bytes()) {
        return Err(Error::Refused(format!(
            "volume {fs}: database {db} on {} holds no file system ({} keys): not backed up; restore it with `kelp admin backup restore {fs}`",
            server.url(),
            dump.keys.len()
        )));
    }
    let counter = |name: &str| {
        dump.keys
            .iter()
            .find(|k| k.name == name.as_bytes())
            .and_then(|k| k.elements.first())
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
            .unwrap_or(0)
    };
    let manifest = Manifest {
        format: format::FORMAT,
        family: fs.to_string(),
        source_db: db,
        taken_unix,
        server: server.url().public_url(),
        keys: dump.keys.len() as u64,
        inodes: dump.keys.iter().filter(|k| is_inode_key(&k.name)).count() as u64,
        next_chunk: counter("nextchunk"),
        stall_ms: dump.stall_us / 1000,
        volumes,
        snapshots,
    };
    let bytes = format::encode(&manifest, &dump.keys);
    let bucket = format!("{BUCKET_PREFIX}{fs}");
    let object = format!("{}/{}", policy::DIR, policy::object_name(taken_unix));
    filer.put_small_file(&bucket, &object, &bytes).await?;
    let record = BackupRecord {
        taken_unix,
        object: object.clone(),
        bytes: bytes.len() as u64,
        keys: manifest.keys,
        stall_ms: manifest.stall_ms,
    };
    meta.record_backup(fs, &record).await?;
    let now = meta.volume(fs).await?;
    match policy::afterwards(now.as_ref().map(|r| (r.spec.as_str(), r.state)), &founder_spec) {
        Afterwards::Keep => {}
        undo => {
            match undo {
                Afterwards::DropBucket => filer.delete_bucket(&bucket).await?,
                _ => filer.delete_file(&bucket, &object).await?,
            }
            // The record just written goes too: it names an object that is gone. A
            // new volume of the same name whose own record this drops is only backed
            // up again at the next round.
            meta.forget_backup(fs).await?;
            return Err(Error::NotFound(format!(
                "volume {fs} was deleted while its backup was taken; the backup was discarded"
            )));
        }
    }
    info!(volume = %fs, object = %object, bytes = bytes.len(), keys = manifest.keys, inodes = manifest.inodes,
        stall_us = dump.stall_us, server = %server.url(), "metadata backed up");
    if let Err(e) = prune(filer, &bucket, keep).await {
        warn!(volume = %fs, error = %e, "cannot prune old backups; retrying after the next backup");
    }
    Ok(Taken { object, record })
}

/// JuiceFS's attribute keys `i<inode>`: one per file, directory or link.
fn is_inode_key(name: &[u8]) -> bool {
    name.len() > 1 && name[0] == b'i' && name[1..].iter().all(u8::is_ascii_digit)
}

/// The backups of a family's bucket, oldest first: (object name, time, bytes).
pub async fn list(filer: &Filer, fs: &str) -> Result<Vec<(String, i64, u64)>> {
    let bucket = format!("{BUCKET_PREFIX}{fs}");
    let mut out: Vec<(String, i64, u64)> = filer
        .list_files(&bucket, policy::DIR)
        .await?
        .into_iter()
        .filter_map(|(name, size)| Some((format!("{}/{name}", policy::DIR), policy::time_of(&name)?, size)))
        .collect();
    out.sort_by_key(|(_, t, _)| *t);
    Ok(out)
}

async fn prune(filer: &Filer, bucket: &str, keep: Retention) -> Result<()> {
    let fs = &bucket[BUCKET_PREFIX.len()..];
    let all = list(filer, fs).await?;
    let times: Vec<i64> = all.iter().map(|(_, t, _)| *t).collect();
    for t in policy::prune(&times, keep) {
        filer.delete_file(bucket, &format!("{}/{}", policy::DIR, policy::object_name(t))).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn inode_keys_are_told_from_the_others() {
        assert!(super::is_inode_key(b"i1"));
        assert!(super::is_inode_key(b"i9223372032828243968"));
        assert!(!super::is_inode_key(b"i"));
        assert!(!super::is_inode_key(b"i1x"));
        assert!(!super::is_inode_key(b"d1"));
    }
}
