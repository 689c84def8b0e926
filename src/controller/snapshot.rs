//! Snapshots: a point-in-time copy of a tree-layout volume's tree into
//! `/.kelp/s/<tag>` of the same file system, made by one script on the master that
//! holds the volume's writes, so it shares every data object and costs metadata only
//! (docs/snapshots.md).
//!
//! create: claim the name (record not ready) -> copy the tree -> record ready
//! delete: forget the record -> the family goes if nothing else is left in it

use super::family::{collect, copy_error, share_bucket, snapshot};
use super::volumes::lookup;
use super::Backends;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::masters::writer_master;
use crate::meta::{Claim, Refusal, SnapshotRecord};
use crate::proto::csi::{list_snapshots_response::Entry, ListSnapshotsResponse, Snapshot};
use crate::volume::{SnapshotId, VolumeId};
use tracing::info;

const TOKEN_PREFIX: &str = "after:";

/// The CSI view of a snapshot.
pub fn csi_snapshot(r: &SnapshotRecord) -> Snapshot {
    Snapshot {
        size_bytes: r.size_bytes.min(i64::MAX as u64) as i64,
        snapshot_id: r.id.clone(),
        source_volume_id: r.source_volume_id.clone(),
        creation_time: Some(prost_types::Timestamp { seconds: r.created_unix, nanos: 0 }),
        ready_to_use: r.ready,
        group_snapshot_id: String::new(),
    }
}

/// Creates the snapshot `name` of `source`, or finishes or returns the one that name
/// already has. The caller holds the source family's guard.
pub async fn create(b: &Backends, name: &str, source: &VolumeId) -> Result<SnapshotRecord> {
    let source_text = source.to_string();
    let existing = b.meta.snapshot_by_name(name).await?;
    if let Some(e) = &existing {
        if e.source_volume_id != source_text {
            return Err(already_exists(name, e));
        }
        if e.ready {
            return Ok(e.clone());
        }
    }
    let (_, spec) = lookup(b, source).await?;
    let Some(tree) = source.tree_path() else {
        return Err(Error::FailedPrecondition(format!(
            "volume {source} has the root layout (made before the tree layout, or with layout=root): its file system has no room for snapshots beside the volume; copy its files into a new volume to snapshot them"
        )));
    };
    let id = match &existing {
        Some(e) => SnapshotId::parse(&e.id)
            .ok_or_else(|| Error::Internal(format!("snapshot record {name:?} holds a bad id")))?,
        None => SnapshotId::new(source, &uuid::Uuid::new_v4().to_string()),
    };
    let mut record = SnapshotRecord {
        name: name.to_string(),
        id: id.to_string(),
        source_volume_id: source_text,
        created_unix: crate::unix_now(),
        size_bytes: spec.capacity_bytes,
        ready: false,
    };
    if let Claim::Existing(e) = b.meta.reserve_snapshot(&source.fs_name, &record).await? {
        if e.source_volume_id != record.source_volume_id {
            return Err(already_exists(name, &e));
        }
        record = e;
    }
    failpoint::hit("snapshot:reserved");
    let (server, db) = writer_master(&b.meta, source).await?;
    let started = std::time::Instant::now();
    match server.copy_tree(db, &tree, &id.tree_path(), b.snapshot_max_entries).await {
        Ok(c) => {
            info!(snapshot_id = %id, entries = c.entries, ms = started.elapsed().as_millis() as u64, server = %server.url(), "snapshot copied")
        }
        // A retry after a crash: the copy had been made, in one step.
        Err(crate::meta::Error::TreeRefused { why: Refusal::Exists, .. }) => {}
        Err(e) => {
            if !record.ready {
                b.meta.forget_snapshot(&source.fs_name, name).await?;
            }
            return Err(copy_error(e));
        }
    }
    failpoint::hit("snapshot:copied");
    share_bucket(b, source).await?;
    record.ready = true;
    b.meta.set_snapshot(&record).await?;
    info!(snapshot_id = %id, source = %source, name, "snapshot ready");
    Ok(record)
}

fn already_exists(name: &str, e: &SnapshotRecord) -> Error {
    Error::AlreadyExists(format!(
        "snapshot name {name:?} is taken by a snapshot of volume {}; choose another name",
        e.source_volume_id
    ))
}

/// Deletes a snapshot; an unknown one is already deleted. Its tree stays in the
/// family's file system until the family goes (docs/snapshots.md).
pub async fn delete(b: &Backends, id: &SnapshotId) -> Result<()> {
    if let Some(r) = snapshot(b, id).await? {
        b.meta.forget_snapshot(&id.family.fs_name, &r.name).await?;
        failpoint::hit("snapshot:forgotten");
        info!(snapshot_id = %id, name = %r.name, "snapshot deleted");
    }
    collect(b, &id.family.fs_name).await
}

/// One page of ready snapshots, by name, optionally only the one with `snapshot_id` or
/// those of `source_volume_id`. Tokens name the last snapshot of the page before.
pub async fn page(
    b: &Backends,
    max_entries: i32,
    token: &str,
    snapshot_id: &str,
    source_volume_id: &str,
) -> Result<ListSnapshotsResponse> {
    if max_entries < 0 {
        return Err(Error::InvalidArgument("max_entries must not be negative".into()));
    }
    let after = match token {
        "" => None,
        t => Some(
            t.strip_prefix(TOKEN_PREFIX)
                .ok_or_else(|| Error::Aborted(format!("starting_token {t:?} was not issued by kelp")))?,
        ),
    };
    let all = b.meta.snapshots().await?;
    let mut picked = all.iter().filter(|r| {
        r.ready
            && (snapshot_id.is_empty() || r.id == snapshot_id)
            && (source_volume_id.is_empty() || r.source_volume_id == source_volume_id)
            && after.is_none_or(|a| r.name.as_str() > a)
    });
    let page = if max_entries == 0 { usize::MAX } else { max_entries as usize };
    let records: Vec<&SnapshotRecord> = picked.by_ref().take(page).collect();
    let next_token = match (picked.next(), records.last()) {
        (Some(_), Some(last)) => format!("{TOKEN_PREFIX}{}", last.name),
        _ => String::new(),
    };
    let entries = records.into_iter().map(|r| Entry { snapshot: Some(csi_snapshot(r)) }).collect();
    Ok(ListSnapshotsResponse { entries, next_token })
}
