//! Clones and restores: new volumes made inside an existing volume's file system (its
//! family) as a point-in-time copy of a member's tree or of a snapshot's, and the
//! end of a family once its last volume and snapshot are gone (docs/snapshots.md).
//!
//! create: reserve name in the family (state creating) -> copy the source tree to
//!         `/.kelp/v/<member>` on the writer's master -> its quota -> state ready
//! delete: forget the clone (a founder with dependants is retired instead) -> if the
//!         family has nothing left, destroy it as a volume is destroyed
//!
//! A deleted member's tree stays in the file system until the family goes: its
//! objects may be shared with the others, and freeing them needs juicefs's own
//! deletion path (docs/snapshots.md, "Left out").

use super::volumes::{destroy, lookup};
use super::Backends;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::masters::writer_master;
use crate::meta::{Claim, Refusal, SnapshotRecord, VolumeRecord, VolumeState};
use crate::proto::csi::volume_content_source::{SnapshotSource, Type as SourceType, VolumeSource};
use crate::proto::csi::{CapacityRange, VolumeContentSource};
use crate::volume::{Params, SnapshotId, Spec, VolumeId};
use std::collections::HashMap;
use tracing::{info, warn};

/// What a new volume's first content is copied from.
#[derive(Debug, Clone)]
pub enum Source {
    Volume(VolumeId),
    Snapshot(SnapshotId),
}

impl Source {
    /// The file system the source lives in, and so the new volume.
    pub fn family_fs(&self) -> &str {
        match self {
            Source::Volume(v) => &v.fs_name,
            Source::Snapshot(s) => &s.family.fs_name,
        }
    }

    /// The CSI view, for the new volume's `content_source`.
    pub fn to_csi(&self) -> VolumeContentSource {
        let t = match self {
            Source::Volume(v) => SourceType::Volume(VolumeSource { volume_id: v.to_string() }),
            Source::Snapshot(s) => SourceType::Snapshot(SnapshotSource { snapshot_id: s.to_string() }),
        };
        VolumeContentSource { r#type: Some(t) }
    }

    /// How the source is remembered in the new volume's spec.
    fn describe(&self) -> String {
        match self {
            Source::Volume(v) => format!("volume:{v}"),
            Source::Snapshot(s) => format!("snapshot:{s}"),
        }
    }
}

/// The parameters a Swarm user names a source with (`--opt clone-of=<volume name>`,
/// `--opt from-snapshot=<snapshot name or id>`): Swarm passes no content source.
pub const CLONE_OF: &str = "clone-of";
pub const FROM_SNAPSHOT: &str = "from-snapshot";

/// The new volume's source: the request's content source, or one of the two
/// parameters above (taken out of `params`), never both.
pub async fn source_of(
    b: &Backends,
    given: Option<&VolumeContentSource>,
    params: &mut HashMap<String, String>,
) -> Result<Option<Source>> {
    let clone_of = params.remove(CLONE_OF);
    let from_snapshot = params.remove(FROM_SNAPSHOT);
    let from_params = match (clone_of, from_snapshot) {
        (Some(_), Some(_)) => {
            return Err(Error::InvalidArgument(format!("give {CLONE_OF} or {FROM_SNAPSHOT}, not both")))
        }
        (Some(name), None) => {
            let fs = crate::volume::fs_name_for(&name);
            let rec = b.meta.volume(&fs).await?;
            let id = match rec.filter(|r| r.state == VolumeState::Ready) {
                Some(r) => {
                    let spec = Spec::of(&r)?;
                    (spec.name == name).then(|| spec.id(r.db, &fs))
                }
                None => None,
            };
            let id = id.ok_or_else(|| Error::NotFound(format!("{CLONE_OF}: no volume is named {name:?}")))?;
            Some(Source::Volume(id))
        }
        (None, Some(snap)) => {
            let id = match SnapshotId::parse(&snap) {
                Some(id) => id,
                None => {
                    let rec = b.meta.snapshot_by_name(&snap).await?;
                    let id = rec.and_then(|r| SnapshotId::parse(&r.id));
                    id.ok_or_else(|| {
                        Error::NotFound(format!("{FROM_SNAPSHOT}: no snapshot is named {snap:?}"))
                    })?
                }
            };
            Some(Source::Snapshot(id))
        }
        (None, None) => None,
    };
    let from_request = match given.and_then(|s| s.r#type.as_ref()) {
        None => None,
        Some(SourceType::Volume(v)) => Some(Source::Volume(
            VolumeId::parse(&v.volume_id)
                .ok_or_else(|| Error::NotFound(format!("source volume {:?} does not exist", v.volume_id)))?,
        )),
        Some(SourceType::Snapshot(s)) => {
            Some(Source::Snapshot(SnapshotId::parse(&s.snapshot_id).ok_or_else(|| {
                Error::NotFound(format!("source snapshot {:?} does not exist", s.snapshot_id))
            })?))
        }
    };
    match (from_request, from_params) {
        (Some(_), Some(_)) => Err(Error::InvalidArgument(format!(
            "the request has a content source; {CLONE_OF} and {FROM_SNAPSHOT} are for a CO that cannot send one"
        ))),
        (a, b) => Ok(a.or(b)),
    }
}

pub struct CloneRequest<'a> {
    pub name: &'a str,
    /// The new volume's own name key (`kelp:vol:<fs_name>`).
    pub fs_name: String,
    pub range: Option<&'a CapacityRange>,
    /// Parameters the request set, if any: they must be the family's.
    pub params: Option<Params>,
    pub source: Source,
}

/// The family a source belongs to: its founder's id and spec, the tree to copy and
/// the capacity a copy of it needs at least.
struct Origin {
    family: VolumeId,
    spec: Spec,
    tree: Vec<String>,
    capacity: u64,
}

async fn origin(b: &Backends, source: &Source) -> Result<Origin> {
    let (family, tree, capacity) = match source {
        Source::Volume(v) => {
            let (_, spec) = lookup(b, v).await?;
            let Some(path) = v.tree_path() else {
                return Err(Error::FailedPrecondition(format!(
                    "volume {v} has the root layout (made before the tree layout, or with layout=root), whose file system has no room for copies; copy its files into a new volume instead"
                )));
            };
            (v.family(), path.map(String::from).to_vec(), spec.capacity_bytes)
        }
        Source::Snapshot(s) => {
            let rec = snapshot(b, s)
                .await?
                .filter(|r| r.ready)
                .ok_or_else(|| Error::NotFound(format!("snapshot {s} does not exist")))?;
            (s.family.clone(), s.tree_path().map(String::from).to_vec(), rec.size_bytes)
        }
    };
    let founder = b.meta.volume(&family.fs_name).await?.ok_or_else(|| {
        Error::NotFound(format!("the file system of {} no longer exists", source.describe()))
    })?;
    let spec = Spec::of(&founder)?;
    if founder.db != family.db || !family.matches_uuid(&spec.uuid) {
        return Err(Error::NotFound(format!("the file system of {} no longer exists", source.describe())));
    }
    Ok(Origin { family, spec, tree, capacity })
}

/// The snapshot with id `id`, if kelp has a record of it.
pub async fn snapshot(b: &Backends, id: &SnapshotId) -> Result<Option<SnapshotRecord>> {
    let text = id.to_string();
    Ok(b.meta.snapshots().await?.into_iter().find(|r| r.id == text))
}

/// Creates a clone or restore, or finishes one a crash interrupted. The caller holds
/// the guards of the new name and of the family.
pub async fn create(b: &Backends, req: CloneRequest<'_>) -> Result<(VolumeId, Spec)> {
    let origin = origin(b, &req.source).await?;
    let family = &origin.family;
    if let Some(asked) = &req.params {
        if !origin.spec.params.matches_request(asked) {
            return Err(Error::InvalidArgument(format!(
                "a copy of {} shares its file system and so its settings; leave out the parameters or give the source's own",
                req.source.describe()
            )));
        }
    }
    let capacity = capacity_for_copy(req.range, origin.capacity)?;
    let source = req.source.describe();
    let fresh = Spec {
        name: req.name.to_string(),
        uuid: origin.spec.uuid.clone(),
        capacity_bytes: capacity,
        params: origin.spec.params.clone(),
        created_unix: crate::unix_now(),
        home_meta: origin.spec.home_meta.clone(),
        member: Some(uuid::Uuid::new_v4().to_string()),
        family: Some(family.fs_name.clone()),
        source: Some(source.clone()),
    };
    let tag = fresh.id(family.db, &req.fs_name).member.expect("a clone has a member");
    let spec = match b
        .meta
        .reserve_member(&family.fs_name, &req.fs_name, family.db, &tag, &fresh.to_json())
        .await?
    {
        Claim::New => fresh,
        Claim::Existing(r) => {
            let spec = compatible(&r, &req, &source, capacity)?;
            if r.state == VolumeState::Ready {
                return Ok((spec.id(r.db, &r.fs_name), spec));
            }
            spec
        }
    };
    failpoint::hit("clone:reserved");
    let id = spec.id(family.db, &req.fs_name);
    if let Err(e) = copy(b, family, &origin.tree, &id, &spec).await {
        warn!(volume_id = %id, error = %e, "clone failed; forgetting it");
        if let Some(tag) = &id.member {
            if let Err(cleanup) = b.meta.forget_member(&family.fs_name, &req.fs_name, tag).await {
                warn!(volume_id = %id, error = %cleanup, "cannot forget the failed clone; DeleteVolume of its id does");
            }
        }
        return Err(e);
    }
    share_bucket(b, family).await?;
    b.meta.set_volume_state(&req.fs_name, VolumeState::Ready).await?;
    info!(volume_id = %id, source = %source, capacity, "clone ready");
    Ok((id, spec))
}

/// A copy's capacity: what was asked, but never less than the source's.
fn capacity_for_copy(range: Option<&CapacityRange>, source: u64) -> Result<u64> {
    let asked = crate::volume::capacity_for(range)?;
    match range.map_or(0, |r| r.limit_bytes as u64) {
        limit if limit > 0 && limit < source => Err(Error::OutOfRange(format!(
            "the source holds up to {source} bytes, above the requested limit_bytes {limit}; ask for at least that much"
        ))),
        _ => Ok(asked.max(source)),
    }
}

fn compatible(r: &VolumeRecord, req: &CloneRequest<'_>, source: &str, capacity: u64) -> Result<Spec> {
    let spec = Spec::of(r)?;
    if spec.name != req.name || spec.source.as_deref() != Some(source) {
        return Err(Error::AlreadyExists(format!(
            "volume {:?} already exists with other content (made from {}); choose another name",
            req.name,
            spec.source.as_deref().unwrap_or("nothing")
        )));
    }
    if r.state == VolumeState::Deleting || r.state == VolumeState::Retired {
        return Err(Error::Aborted(format!(
            "volume {:?} is being deleted; retry once that finishes",
            req.name
        )));
    }
    if spec.capacity_bytes != capacity {
        return Err(Error::AlreadyExists(format!(
            "volume {:?} exists with capacity {} bytes, not {capacity}",
            req.name, spec.capacity_bytes
        )));
    }
    Ok(spec)
}

/// The copy itself, on the master that holds the family's writes; a repeated call
/// after a crash finds the tree made and only sets its quota.
async fn copy(b: &Backends, family: &VolumeId, from: &[String], id: &VolumeId, spec: &Spec) -> Result<()> {
    let (server, db) = writer_master(&b.meta, family).await?;
    let from: Vec<&str> = from.iter().map(String::as_str).collect();
    let to = id.tree_path().expect("a clone has a member");
    match server.copy_tree(db, &from, &to, b.snapshot_max_entries).await {
        Ok(c) => {
            info!(volume_id = %id, entries = c.entries, server = %server.url(), "copied the source tree")
        }
        Err(crate::meta::Error::TreeRefused { why: Refusal::Exists, .. }) => {}
        Err(e) => return Err(copy_error(e)),
    }
    failpoint::hit("clone:copied");
    server.tree_with_quota(db, &to, spec.capacity_bytes, spec.params.inodes).await?;
    Ok(())
}

/// Lifts the bucket quota of a family that gains a snapshot or clone: the bucket then
/// holds the data of every member (and what snapshots keep of deleted files), so the
/// first volume's capacity no longer bounds it, and SeaweedFS, which enforces bucket
/// quotas by making the bucket read-only, would stop every member's writes. Each
/// member's own size is its directory quota.
pub async fn share_bucket(b: &Backends, family: &VolumeId) -> Result<()> {
    b.filer.set_quota(&family.bucket(), 0).await?;
    Ok(())
}

/// A refused copy is the caller's to fix; the rest are the server's.
pub fn copy_error(e: crate::meta::Error) -> Error {
    match e {
        crate::meta::Error::TreeRefused { why: Refusal::TooMany(_), .. } => {
            Error::ResourceExhausted(e.to_string())
        }
        crate::meta::Error::TreeRefused { .. } => Error::FailedPrecondition(e.to_string()),
        e => e.into(),
    }
}

/// Deletes a member of a family that has others: a clone is forgotten, a founder
/// retired; the family goes when nothing is left. False: `id` is the family's only
/// volume, which the caller destroys as a volume is destroyed.
pub async fn delete_member(b: &Backends, id: &VolumeId, record: &VolumeRecord) -> Result<bool> {
    let clone = record.fs_name != id.fs_name;
    if !clone {
        let (clones, snapshots) = b.meta.family_dependants(&id.fs_name).await?;
        if clones + snapshots == 0 {
            return Ok(false);
        }
    }
    let member = id.member.as_deref().unwrap_or("root");
    let nodes: Vec<String> = b
        .meta
        .publications(&id.fs_name)
        .await?
        .into_iter()
        .filter(|(m, _, _)| m == member)
        .map(|(_, n, _)| n)
        .collect();
    if !nodes.is_empty() {
        return Err(Error::FailedPrecondition(format!(
            "volume {id} is still published on [{}]; stop the tasks using it and retry",
            nodes.join(", ")
        )));
    }
    if clone {
        b.meta.forget_member(&id.fs_name, &record.fs_name, member).await?;
        info!(volume_id = %id, "clone deleted; its tree stays in the family's file system until the family goes");
    } else {
        b.meta.set_volume_state(&id.fs_name, VolumeState::Retired).await?;
        info!(volume_id = %id, "volume deleted; its file system stays while its clones or snapshots live");
    }
    failpoint::hit("delete:member");
    collect(b, &id.fs_name).await?;
    Ok(true)
}

/// Destroys the family of `fs` once its founder is deleted and no clone or snapshot
/// is left. Idempotent: every delete of a member ends here, so a crash between
/// forgetting the last member and destroying the family is finished by any retry.
pub async fn collect(b: &Backends, fs: &str) -> Result<()> {
    let Some(founder) = b.meta.volume(fs).await? else { return Ok(()) };
    if !matches!(founder.state, VolumeState::Retired | VolumeState::Deleting) {
        return Ok(());
    }
    let (clones, snapshots) = b.meta.family_dependants(fs).await?;
    if clones + snapshots > 0 {
        return Ok(());
    }
    let spec = Spec::of(&founder)?;
    let id = spec.id(founder.db, fs);
    destroy(b, &id).await?;
    info!(volume_id = %id, "the family's last volume or snapshot is gone: file system deleted");
    Ok(())
}
