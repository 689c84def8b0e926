//! Creating and destroying a volume as a sequence of idempotent steps recorded in the
//! registry, so that a controller killed at any point leaves a state its retry (or a
//! DeleteVolume) finishes:
//!
//! create: reserve name + database (state creating) -> bucket -> juicefs_uuid object
//!         -> JuiceFS format -> (tree layout) the volume's directory and quota
//!         -> state ready
//! delete: state deleting -> bucket with all objects -> FLUSHDB -> release database
//!
//! A failure that is not a crash rolls the creation back at once, so bad luck with a
//! backend does not leave a half-made volume behind either.

use super::volumes::{destroy, live_db, record_of};
use super::Backends;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::juicefs::{self, FormatSpec, Setting};
use crate::meta::{Reservation, VolumeRecord, VolumeState};
use crate::proto::csi::{CapacityRange, Volume};
use crate::seaweedfs::BucketRule;
use crate::volume::{capacity_fits, volume_context, Layout, Params, Spec, VolumeId};
use std::collections::HashMap;
use std::time::Duration;
use tracing::{info, warn};

/// How long DeleteVolume waits for mounts that are ending: below Swarm's 15 s deadline.
const SESSION_WAIT: Duration = Duration::from_secs(8);

/// S3 credentials written (sealed) into the file system's setting.
pub struct S3Credentials {
    pub access_key: String,
    pub secret_key: String,
}

impl S3Credentials {
    /// Credentials from the request's secrets (`access-key`, `secret-key`), else the
    /// controller's configured ones.
    pub fn from_secrets(secrets: &HashMap<String, String>, b: &Backends) -> Result<S3Credentials> {
        let pick = |k: &str| secrets.get(k).filter(|v| !v.is_empty()).cloned();
        match (pick("access-key"), pick("secret-key")) {
            (Some(access_key), Some(secret_key)) => Ok(S3Credentials { access_key, secret_key }),
            (None, None) => {
                Ok(S3Credentials { access_key: b.s3_access_key.clone(), secret_key: b.s3_secret_key.clone() })
            }
            _ => Err(Error::InvalidArgument(
                "secrets must hold both access-key and secret-key, or neither".into(),
            )),
        }
    }
}

/// The CSI view of a volume. No secret ever goes into it: Swarm shows the volume
/// context in `docker volume inspect`.
pub fn csi_volume(id: &VolumeId, spec: &Spec) -> Volume {
    Volume {
        capacity_bytes: spec.capacity_bytes as i64,
        volume_id: id.to_string(),
        volume_context: volume_context(id, spec),
        ..Default::default()
    }
}

pub struct CreateRequest<'a> {
    pub name: &'a str,
    pub fs_name: String,
    pub capacity: u64,
    pub range: Option<&'a CapacityRange>,
    pub params: Params,
    pub credentials: S3Credentials,
}

/// Creates the volume or finishes an interrupted creation; returns its id and spec.
pub async fn create(b: &Backends, req: CreateRequest<'_>) -> Result<(VolumeId, Spec)> {
    if let Some(code) = &req.params.replication {
        check_placement(b, code).await?;
    }
    let now = crate::unix_now();
    let spec = Spec {
        name: req.name.to_string(),
        uuid: uuid::Uuid::new_v4().to_string(),
        capacity_bytes: req.capacity,
        params: req.params.clone(),
        created_unix: now,
        home_meta: b.home_meta.clone(),
        member: (req.params.layout == Layout::Tree).then(|| uuid::Uuid::new_v4().to_string()),
        family: None,
        source: None,
    };
    let spec_json = spec.to_json();
    let databases = match b.databases {
        Some(n) => n,
        None => b.meta.database_count().await?,
    };
    let record = match reserve_empty(b, &req.fs_name, &spec_json, databases).await? {
        Reservation::New(r) => {
            info!(fs_name = %req.fs_name, db = r.db, "reserved database for new volume");
            r
        }
        Reservation::Existing(r) => {
            check_compatible(&r, &req)?;
            r
        }
    };
    failpoint::hit("create:reserved");
    let spec: Spec = Spec::of(&record)?;
    let id = spec.id(record.db, &req.fs_name);
    if record.state == VolumeState::Ready {
        return Ok((id, spec));
    }
    if let Err(e) = build(b, &id, &spec, &req.credentials, now).await {
        warn!(volume_id = %id, error = %e, "creation failed; rolling back");
        if let Err(cleanup) = destroy(b, &id).await {
            warn!(volume_id = %id, error = %cleanup, "rollback incomplete; a retry of CreateVolume or DeleteVolume finishes it");
        }
        return Err(e);
    }
    b.meta.set_volume_state(&id.fs_name, VolumeState::Ready).await?;
    info!(volume_id = %id, capacity = spec.capacity_bytes, "volume ready");
    Ok((id, spec))
}

/// Refuses a replication the cluster cannot place before anything is created: SeaweedFS
/// would accept the bucket and then hang every write waiting for volumes it can
/// never grow.
async fn check_placement(b: &Backends, code: &str) -> Result<()> {
    let wanted = crate::seaweedfs::Replication::parse(code).ok_or_else(|| {
        Error::InvalidArgument(format!("replication {code:?} is not a SeaweedFS replication code"))
    })?;
    let topology = b.filer.topology().await?;
    if topology.can_place(wanted) {
        return Ok(());
    }
    Err(Error::ResourceExhausted(format!(
        "replication {code} needs {} data centre(s), {} rack(s) in one of them and {} volume server(s) in one rack, but the SeaweedFS cluster has {}; add servers or choose a smaller code",
        wanted.other_dcs + 1,
        wanted.other_racks + 1,
        wanted.other_servers + 1,
        topology.describe()
    )))
}

/// Reserves the name, with a database that is really empty for a new volume. A freed
/// database can hold keys again if a client of its old volume outlived the deletion
/// (a node cut off while it was deleted): with live sessions it is quarantined and
/// another one taken; stale leftovers are flushed. Quarantined databases whose
/// clients have gone are flushed and freed first.
async fn reserve_empty(b: &Backends, fs_name: &str, spec_json: &str, databases: u32) -> Result<Reservation> {
    for db in b.meta.quarantined().await? {
        if juicefs::live_sessions(&b.meta, db).await? == 0 {
            b.meta.flush_database(db).await?;
            b.meta.release_quarantined(db).await?;
            info!(db, "quarantined database has no client left; emptied and freed");
        }
    }
    for _ in 0..8 {
        let reservation = b.meta.reserve_volume(fs_name, spec_json, databases).await?;
        let Reservation::New(record) = &reservation else { return Ok(reservation) };
        let db = record.db;
        if b.meta.database_size(db).await? == 0 {
            return Ok(reservation);
        }
        if juicefs::live_sessions(&b.meta, db).await? == 0 {
            warn!(db, "a freed database held leftovers of an old client; emptied before reuse");
            b.meta.flush_database(db).await?;
            return Ok(reservation);
        }
        warn!(db, "a JuiceFS client still writes to this freed database; quarantined until it stops");
        b.meta.quarantine_database(fs_name, db).await?;
    }
    Err(Error::ResourceExhausted(
        "every free database kelp tried is still written by clients of deleted volumes (see `kelp:quarantine` in the registry); stop those clients".into(),
    ))
}

fn check_compatible(existing: &VolumeRecord, req: &CreateRequest<'_>) -> Result<()> {
    let spec = Spec::of(existing)?;
    if spec.name != req.name {
        return Err(Error::AlreadyExists(format!(
            "volume name {:?} maps to file system {:?}, which volume {:?} already uses; choose another name",
            req.name, existing.fs_name, spec.name
        )));
    }
    if let Some(source) = &spec.source {
        return Err(Error::AlreadyExists(format!(
            "volume {:?} already exists as a copy of {source}; choose another name",
            req.name
        )));
    }
    if existing.state == VolumeState::Retired {
        return Err(Error::AlreadyExists(format!(
            "volume {:?} was deleted, but its file system lives on in its clones or snapshots and keeps the name until they go; choose another name",
            req.name
        )));
    }
    if existing.state == VolumeState::Deleting {
        return Err(Error::Aborted(format!(
            "volume {:?} is being deleted; retry once that finishes",
            req.name
        )));
    }
    if !capacity_fits(spec.capacity_bytes, req.range) {
        return Err(Error::AlreadyExists(format!(
            "volume {:?} exists with capacity {} bytes, outside the requested range",
            req.name, spec.capacity_bytes
        )));
    }
    if !spec.params.matches_request(&req.params) {
        return Err(Error::AlreadyExists(format!("volume {:?} exists with other parameters", req.name)));
    }
    Ok(())
}

async fn build(b: &Backends, id: &VolumeId, spec: &Spec, creds: &S3Credentials, now: i64) -> Result<()> {
    let bucket = id.bucket();
    b.filer.ensure_bucket(&bucket, spec.capacity_bytes).await?;
    let rule =
        BucketRule { replication: spec.params.replication.clone(), fsync: spec.params.durability.fsync() };
    if let Some(rule) = rule.needed() {
        b.filer.set_bucket_rule(&bucket, Some(&rule)).await?;
    }
    failpoint::hit("create:bucket");
    // The same marker `juicefs format` leaves, so a later real format refuses the prefix.
    b.filer.put_small_file(&bucket, &format!("{}/juicefs_uuid", id.fs_name), spec.uuid.as_bytes()).await?;
    let setting = Setting::new(&FormatSpec {
        name: id.fs_name.clone(),
        uuid: spec.uuid.clone(),
        bucket_url: format!("{}/{bucket}", b.s3_endpoint.trim_end_matches('/')),
        access_key: creds.access_key.clone(),
        secret_key: creds.secret_key.clone(),
        block_size_kib: spec.params.block_size_kib,
        compression: spec.params.compression.clone(),
        // A tree-layout volume's size is its directory's quota; the file system,
        // which its snapshots and clones will share, has no limit of its own.
        capacity_bytes: if id.member.is_some() { 0 } else { spec.capacity_bytes },
        inodes: if id.member.is_some() { 0 } else { spec.params.inodes },
        trash_days: spec.params.trash_days,
    });
    juicefs::write_format(&b.meta, id.db, &setting, now).await?;
    failpoint::hit("create:formatted");
    if let Some(path) = id.tree_path() {
        b.meta.tree_with_quota(id.db, &path, spec.capacity_bytes, spec.params.inodes).await?;
        failpoint::hit("create:tree");
    }
    Ok(())
}

/// Deletes the volume with all its data. Unknown volumes and stale ids succeed. A
/// volume whose file system its clones or snapshots still use leaves it to them
/// (`family`).
pub async fn delete(b: &Backends, id: &VolumeId) -> Result<()> {
    let record = match record_of(b, id).await? {
        Some(r) if Spec::of(&r)?.id(r.db, &r.fs_name) == *id && r.state != VolumeState::Retired => r,
        // Unknown, or the name now belongs to a newer volume: this id's volume is
        // gone, but a crash may have kept it from ending its family.
        _ => return super::family::collect(b, &id.fs_name).await,
    };
    if super::family::delete_member(b, id, &record).await? {
        return Ok(());
    }
    let live = live_db(b, id).await?;
    if record.state == VolumeState::Ready {
        refuse_while_mounted(b, id, live).await?;
    }
    destroy(b, id).await?;
    info!(volume_id = %id, "volume deleted");
    Ok(())
}

/// Deleting a mounted volume would pull its data from under running tasks, and their
/// clients would write sessions back into the freed database and objects into a
/// re-created bucket. A clean unmount ends a session at once; give one that is
/// ending a few seconds, then refuse (the CO retries). A client killed without
/// unmounting stops counting about 24 s after its last heartbeat.
async fn refuse_while_mounted(b: &Backends, id: &VolumeId, db: u32) -> Result<()> {
    let meta = &b.meta;
    let done = crate::wait::poll_until(SESSION_WAIT, Duration::from_millis(200), || async move {
        match juicefs::live_sessions(meta, db).await {
            Ok(0) => Some(Ok(())),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        }
    })
    .await;
    match done {
        Some(r) => Ok(r?),
        None => Err(Error::FailedPrecondition(format!(
            "volume {id} is still mounted by JuiceFS clients on [{}]; stop the tasks using it (docker service rm / scale 0) and retry; a client that died stops counting about 24 s after its last heartbeat",
            juicefs::session_hosts(meta, db).await.unwrap_or_default().join(", ")
        ))),
    }
}
