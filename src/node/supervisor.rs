//! Keeps this node's mounts as the state file says they should be: on start and then
//! periodically it remounts dead JuiceFS mounts at the same path and re-binds their
//! targets (so tasks get working I/O back without a new publish), forgets volumes
//! that were deleted, and releases staged volumes nothing has published for a while,
//! because Swarm may never send NodeUnstageVolume.

use super::core::NodeCore;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// One pass over every staged volume.
pub async fn tick(core: &NodeCore) {
    for (volume_id, _) in core.snapshot().volumes {
        // A volume busy with an RPC is looked at on the next pass.
        let Ok(_guard) = core.locks.lock(&volume_id, Duration::from_millis(50)).await else { continue };
        let Some(v) = core.staged(&volume_id) else { continue };
        match core.drop_vanished(&volume_id).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => {
                warn!(volume_id, error = %e, "cannot check whether the volume still exists; checking again later");
                continue;
            }
        }
        let idle_for = v.idle_since.map(|t| crate::unix_now() - t).unwrap_or(0);
        if v.targets.is_empty() && idle_for >= core.cfg.idle_release.as_secs() as i64 {
            info!(
                volume_id,
                idle_secs = idle_for,
                "releasing staged volume: nothing has published it for the idle period (Swarm may not send NodeUnstageVolume)"
            );
            if let Err(e) = core.unstage(&volume_id, &v.staging_path).await {
                warn!(volume_id, error = %e, "release failed; retrying on the next pass");
            }
            continue;
        }
        if let Err(e) = core.repair(&volume_id).await {
            warn!(volume_id, error = %e, "repair failed; retrying on the next pass");
        }
    }
}

/// Announces the node (its heartbeat, which decides when a silent node's volumes may
/// be taken over) and runs [`tick`], forever, at the configured interval.
pub async fn run(core: Arc<NodeCore>) {
    let mut announced = false;
    loop {
        match core.announce().await {
            Ok(()) => announced = true,
            Err(e) if !announced => warn!(error = %e, "cannot announce this node yet; retrying"),
            Err(e) => warn!(error = %e, "node heartbeat failed; retrying"),
        }
        tick(&core).await;
        tokio::time::sleep(core.cfg.repair_interval).await;
    }
}
