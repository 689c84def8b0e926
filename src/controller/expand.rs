//! ControllerExpandVolume: the volume's directory quota (tree layout) or JuiceFS's
//! Capacity (root layout) is the exact limit, which mounted clients pick up on their
//! next refresh; the bucket quota follows it.

use super::volumes;
use super::Backends;
use crate::error::Result;
use crate::volume::VolumeId;
use tracing::info;

/// Grows the volume to `wanted` bytes and returns its capacity. Unlimited stays
/// unlimited, and kelp never shrinks a file system under its data. The caller holds
/// the volume's operation guard.
pub async fn expand(b: &Backends, id: &VolumeId, wanted: u64) -> Result<u64> {
    let (record, mut spec) = volumes::lookup(b, id).await?;
    if spec.capacity_bytes != 0 && wanted > spec.capacity_bytes {
        // The live generation's database: after a takeover, clients mount that one.
        let db = volumes::live_db(b, id).await?;
        match id.tree_path() {
            Some(path) => {
                b.meta.tree_with_quota(db, &path, wanted, spec.params.inodes).await?;
            }
            None => crate::juicefs::set_capacity(&b.meta, db, wanted).await?,
        }
        // A family's bucket holds every member's data: it has no quota of its own
        // once a snapshot or clone shares it (`family::share_bucket`).
        if b.meta.family_dependants(&id.fs_name).await? == (0, 0) {
            b.filer.set_quota(&id.bucket(), wanted).await?;
        }
        spec.capacity_bytes = wanted;
        b.meta.set_volume_spec(&record.fs_name, &spec.to_json()).await?;
        info!(volume_id = %id, capacity = wanted, "volume expanded");
    }
    Ok(spec.capacity_bytes)
}
