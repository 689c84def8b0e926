//! ControllerPublishVolume's decision: which master the node mounts against, which
//! metadata generation it mounts and, for a single-node writer, whether the node may
//! take the volume from its last holder. Two masters taking writes for one file
//! system hand out the same inode numbers and lose to "last write wins", so one
//! master writes each volume at a time (docs/design.md, section 2); the rules
//! themselves are in `crate::pinning`.

use super::Backends;
use crate::error::{Error, Result};
use crate::meta::Generation;
use crate::pinning::{self, Handover, Holder, Lease, Master, Role};
use crate::volume::{PublishContext, Spec, VolumeId};
use tracing::{info, warn};

/// The publish context for `node`, recording it as the holder of a single-node-writer
/// volume when `role` says so. The caller holds the volume's operation guard.
pub async fn publish(
    b: &Backends,
    id: &VolumeId,
    spec: &Spec,
    node: &str,
    role: Role,
) -> Result<PublishContext> {
    let member = id.member.as_deref().unwrap_or("root");
    check_family(b, id, member, role).await?;
    let mut ctx = PublishContext::default();
    if pinning::master_for(role) == Master::Home && !spec.home_meta.is_empty() {
        ctx.home = Some(spec.home_meta.clone());
    }
    if role == Role::SingleNodeWriter {
        let holder = hand_over(b, id, spec, node).await?;
        ctx.epoch = holder.epoch;
        ctx.wait_fence = holder.wait_fence;
        ctx.seed = holder.seed;
        ctx.lease_ms = spec.params.takeover_after.map(pinning::lease_ms).unwrap_or(0);
        ctx.db = holder.db;
        if ctx.lease_ms > 0 {
            ctx.registry = b.meta.run_id().await?;
        }
    } else if let Some(h) = b.meta.holder(&id.fs_name).await? {
        // Readers of a volume that was taken over read its live generation.
        ctx.db = h.db;
        // Writers through the home master of a family with clones start where the
        // family's last single-node writer, on its node's own master, left off.
        if role == Role::SharedWriter && h.released && h.node != SHARED_WRITERS {
            ctx.wait_fence = h.epoch;
        }
    }
    if ctx.db == id.db {
        ctx.db = 0;
    }
    b.meta.record_publication(&id.fs_name, member, node, role).await?;
    Ok(ctx)
}

/// The members of a family (a volume and its clones and restores) share one file
/// system, so the one-writer rule holds for the family: its single-node writers share
/// one holder (the family's, in the record named after its file system), and writers
/// through the home master never write while a node writes another member through its
/// own. Moving between the two waits for a fence like any handover: a single-node
/// writer's release leaves one on its master, the last shared writer's one on the
/// home master (`fence_shared_writers`).
async fn check_family(b: &Backends, id: &VolumeId, member: &str, role: Role) -> Result<()> {
    let others: Vec<_> = b
        .meta
        .publications(&id.fs_name)
        .await?
        .into_iter()
        .filter(|(m, _, r)| m != member && *r != Role::Reader)
        .collect();
    match role {
        Role::Reader => Ok(()),
        Role::SharedWriter => match others.iter().find(|(_, _, r)| *r == Role::SingleNodeWriter) {
            None => Ok(()),
            Some((m, n, _)) => Err(Error::FailedPrecondition(format!(
                "volume {id} shares its file system with member {m}, which node {n} writes through its own master; stop that task first (a family is written through one master at a time)"
            ))),
        },
        Role::SingleNodeWriter => match others.iter().find(|(_, _, r)| *r == Role::SharedWriter) {
            None => Ok(()),
            Some((m, n, _)) => Err(Error::FailedPrecondition(format!(
                "volume {id} shares its file system with member {m}, which writers on several nodes use through the home master (published on {n}); stop those tasks first"
            ))),
        },
    }
}

/// Records `node` as the holder of a single-node-writer volume, or says why not.
async fn hand_over(b: &Backends, id: &VolumeId, spec: &Spec, node: &str) -> Result<Holder> {
    // The compare-and-set fails only if another controller raced us; retry a little.
    for _ in 0..5 {
        let current = b.meta.holder(&id.fs_name).await?;
        let lease = match &current {
            Some(h) if h.node != node => b.meta.lease(&h.node, true).await?,
            _ => Lease::SilentFor(0),
        };
        match pinning::handover(current.as_ref(), node, spec.params.takeover_after, lease) {
            Handover::Grant { next, took_over } => {
                let expected = current.as_ref().map(|h| h.epoch).unwrap_or(0);
                let from = current.as_ref().map(|h| h.node.clone()).unwrap_or_default();
                let retired = took_over.then(|| Generation {
                    from_node: from.clone(),
                    to_node: node.into(),
                    epoch: next.epoch,
                    at_unix: crate::unix_now(),
                    ..Default::default()
                });
                let mut next = next;
                if took_over && next.seed == 0 {
                    next.seed = id.db;
                }
                let databases = match b.databases {
                    Some(n) => n,
                    None => b.meta.database_count().await?,
                };
                if let Some(written) =
                    b.meta.swap_holder(&id.fs_name, expected, &next, retired.as_ref(), databases).await?
                {
                    let kind = match (took_over, current.as_ref()) {
                        (true, _) => "takeover",
                        (false, Some(h)) if h.node != node => "handover",
                        _ => "grant",
                    };
                    count(id, node, kind);
                    if took_over {
                        warn!(volume_id = %id, from = %from, to = %node, generation_db = written.db, retired_db = written.seed,
                            "took the volume over from a node whose lease lapsed; it continues in a new metadata generation, and anything the old holder's master accepted since stays in the retired one");
                    }
                    let db = if written.db == 0 { id.db } else { written.db };
                    return Ok(Holder { db, ..written });
                }
            }
            Handover::Refuse { holder, lease } => {
                count(id, node, "refused");
                return Err(Error::FailedPrecondition(refusal(id, spec, &holder, lease)));
            }
        }
    }
    Err(Error::Aborted(format!("publishing {id} raced another publish; retry")))
}

fn count(id: &VolumeId, node: &str, kind: &str) {
    let labels = crate::metrics::EventLabels {
        volume: id.fs_name.clone(),
        volume_id: id.to_string(),
        node: node.into(),
        kind: kind.into(),
    };
    crate::metrics::metrics().publishes.get_or_create(&labels).inc();
}

/// Why a publish is refused, and what the operator can do.
fn refusal(id: &VolumeId, spec: &Spec, holder: &str, lease: Lease) -> String {
    let heard = match lease {
        Lease::SilentFor(ms) => format!("its lease was last renewed {} s ago", ms / 1000),
        Lease::NotHere => "it has not renewed its lease at this controller's registry server since that server started; its silence is counted from now".into(),
    };
    let rule = match pinning::effective_takeover_after(spec.params.takeover_after) {
        Some(s) => format!("kelp takes over once its lease has lapsed for {s} s"),
        None => "this volume is never taken over without a release (takeover-after=never)".into(),
    };
    format!(
        "volume {id} is held by node {holder:?}, which has not released it ({heard}); stop the task there so it is unpublished; {rule}"
    )
}

/// Withdraws `node`'s publication: once the node publishes no member of the family as
/// a single-node writer, the family's hold becomes released, so the next node waits
/// for its fence instead of being refused. Idempotent.
pub async fn unpublish(b: &Backends, id: &VolumeId, node: &str) -> Result<()> {
    let member = id.member.as_deref().unwrap_or("root");
    let publications = b.meta.publications(&id.fs_name).await?;
    let mine = |m: &str, n: &str| m == member && n == node;
    let was_shared = publications.iter().any(|(m, n, r)| mine(m, n) && *r == Role::SharedWriter);
    b.meta.withdraw_publication(&id.fs_name, member, node).await?;
    let shared_left = publications.iter().any(|(m, n, r)| !mine(m, n) && *r == Role::SharedWriter);
    if was_shared && !shared_left && b.meta.family_dependants(&id.fs_name).await?.0 > 0 {
        fence_shared_writers(b, id).await?;
    }
    Ok(())
}

/// The holder a family records while writers through the home master had it last.
const SHARED_WRITERS: &str = "(shared writers)";

/// The last writer through the home master of a family with clones is gone: a fence
/// on the home master, after everything they committed, and a released holder that
/// makes the next single-node writer wait for it on its own master. Fence first: a
/// crash between the two leaves a fence nobody waits for, not a wait for a fence
/// that never comes.
async fn fence_shared_writers(b: &Backends, id: &VolumeId) -> Result<()> {
    let server = crate::masters::home_master(&b.meta, &id.fs_name).await?;
    let databases = match b.databases {
        Some(n) => n,
        None => b.meta.database_count().await?,
    };
    for _ in 0..5 {
        let current = b.meta.holder(&id.fs_name).await?;
        if current.as_ref().is_some_and(|h| !h.released) {
            // A single-node writer holds the family (shared writers cannot have been
            // published beside it): its own release leaves the fence.
            return Ok(());
        }
        let expected = current.as_ref().map(|h| h.epoch).unwrap_or(0);
        let db = current.as_ref().map(|h| h.db).unwrap_or(0);
        let next = Holder {
            node: SHARED_WRITERS.into(),
            epoch: expected + 1,
            released: true,
            wait_fence: 0,
            db,
            seed: 0,
        };
        server.raise_fence(if db == 0 { id.db } else { db }, next.epoch).await?;
        if b.meta.swap_holder(&id.fs_name, expected, &next, None, databases).await?.is_some() {
            info!(volume_id = %id, fence = next.epoch, "the family's last writer through the home master is gone: fence left for the next single-node writer");
            return Ok(());
        }
    }
    Err(Error::Aborted(format!("unpublishing {id} raced another publish; retry")))
}
