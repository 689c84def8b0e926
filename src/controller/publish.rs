//! ControllerPublishVolume's decision: which master the node mounts against and, for
//! a single-node writer, whether the node may take the volume from its last holder
//! (DESIGN.md section 6; the rules themselves are in `crate::pinning`).

use super::Backends;
use crate::error::{Error, Result};
use crate::pinning::{self, Handover, Holder, Master, Role};
use crate::volume::{PublishContext, Spec, VolumeId};
use tracing::warn;

/// The publish context for `node`, recording it as the holder of a single-node-writer
/// volume when `role` says so. The caller holds the volume's operation guard.
pub async fn publish(
    b: &Backends,
    id: &VolumeId,
    spec: &Spec,
    node: &str,
    role: Role,
) -> Result<PublishContext> {
    let mut ctx = PublishContext::default();
    if pinning::master_for(role) == Master::Home && !spec.home_meta.is_empty() {
        ctx.home = Some(spec.home_meta.clone());
    }
    if role == Role::SingleNodeWriter {
        let holder = hand_over(b, id, spec, node).await?;
        ctx.epoch = holder.epoch;
        ctx.wait_fence = holder.wait_fence;
    }
    Ok(ctx)
}

/// Records `node` as the holder of a single-node-writer volume, or says why not.
async fn hand_over(b: &Backends, id: &VolumeId, spec: &Spec, node: &str) -> Result<Holder> {
    // The compare-and-set fails only if another controller raced us; retry a little.
    for _ in 0..5 {
        let current = b.meta.holder(&id.fs_name).await?;
        let silent_for = match &current {
            Some(h) if h.node != node => {
                b.meta.node(&h.node).await?.map(|n| crate::unix_now() - n.updated_unix)
            }
            _ => None,
        };
        match pinning::handover(current.as_ref(), node, spec.params.takeover_after, silent_for) {
            Handover::Grant { next, took_over } => {
                let expected = current.as_ref().map(|h| h.epoch).unwrap_or(0);
                if b.meta.swap_holder(&id.fs_name, expected, &next).await? {
                    if took_over {
                        warn!(volume_id = %id, from = ?current.map(|h| h.node).unwrap_or_default(), to = ?node,
                            "took the volume over from a node that never released it; what its master had not replicated is lost");
                    }
                    return Ok(next);
                }
            }
            Handover::Refuse { holder, silent_for } => {
                let heard = silent_for
                    .map(|s| format!("last heard from {s} s ago"))
                    .unwrap_or_else(|| "never heard from".into());
                let rule = match spec.params.takeover_after {
                    Some(s) => format!("kelp takes over once it has been silent for {s} s"),
                    None => "this volume is never taken over without a release (takeover-after=never)".into(),
                };
                return Err(Error::FailedPrecondition(format!(
                    "volume {id} is held by node {holder:?}, which has not released it ({heard}); stop the task there so it is unpublished; {rule}"
                )));
            }
        }
    }
    Err(Error::Aborted(format!("publishing {id} raced another publish; retry")))
}

/// Withdraws `node`'s publication: a single-node writer's hold becomes released, so the
/// next node waits for its fence instead of being refused. Idempotent.
pub async fn unpublish(b: &Backends, id: &VolumeId, node: &str) -> Result<()> {
    b.meta.release_holder(&id.fs_name, node).await?;
    Ok(())
}
