//! The string maps kelp hands through the CO: the volume context (from CreateVolume
//! to every node, shown by `docker volume inspect`, so never a secret) and the publish
//! context (from ControllerPublishVolume to one node).

use super::{Spec, VolumeId};
use crate::error::{Error, Result};
use std::collections::HashMap;

/// Keys of the volume context that carry per-volume node settings.
pub mod context_keys {
    pub const FS_NAME: &str = "fsName";
    pub const BUCKET: &str = "bucket";
    pub const CACHE_SIZE: &str = "cache-size";
    pub const CACHE_DIR: &str = "cache-dir";
}

/// Keys of the publish context the controller hands to nodes.
pub mod publish_keys {
    /// The master to mount against instead of the local one (no password).
    pub const META: &str = "kelp/meta";
    /// The node's writer epoch; it leaves it as the fence when it lets go.
    pub const EPOCH: &str = "kelp/epoch";
    /// The fence the local master must hold before a writer mounts.
    pub const FENCE: &str = "kelp/fence";
    /// The database of the volume's live metadata generation, when a takeover moved
    /// it away from the one in the volume id.
    pub const DB: &str = "kelp/db";
    /// The retired generation the node seeds `kelp/db` from on its own master.
    pub const SEED: &str = "kelp/seed";
    /// The lease (ms) after which a holder that cannot renew fences its mount.
    pub const LEASE: &str = "kelp/lease-ms";
    /// The run id of the registry server the controller judges leases at: the holder
    /// must renew at that very server.
    pub const REGISTRY: &str = "kelp/registry";
}

/// What the node side is told about a volume: names, and the per-volume node settings.
pub fn volume_context(id: &VolumeId, spec: &Spec) -> HashMap<String, String> {
    let mut ctx = HashMap::from([
        (context_keys::FS_NAME.to_string(), id.fs_name.clone()),
        (context_keys::BUCKET.to_string(), id.bucket()),
    ]);
    if let Some(size) = spec.params.cache_size_mib {
        ctx.insert(context_keys::CACHE_SIZE.into(), size.to_string());
    }
    if let Some(dir) = &spec.params.cache_dir {
        ctx.insert(context_keys::CACHE_DIR.into(), dir.clone());
    }
    ctx
}

/// What a node reads from the publish context (all optional: a CO that never ran
/// ControllerPublishVolume, as csi-sanity's node specs, sends none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishContext {
    /// The home master to mount against instead of the local one.
    pub home: Option<String>,
    /// This node's writer epoch (0: not a fenced single-node writer).
    pub epoch: u64,
    /// The fence the local master must hold before mounting.
    pub wait_fence: u64,
    /// The live generation's database (0: the volume id's).
    pub db: u32,
    /// The retired generation to seed `db` from (0: none).
    pub seed: u32,
    /// The holder's lease in ms (0: the volume is never taken over, no lease).
    pub lease_ms: u64,
    /// The run id of the server the holder must renew its lease at.
    pub registry: String,
}

impl PublishContext {
    pub fn parse(map: &HashMap<String, String>) -> Result<PublishContext> {
        let number = |key: &str| match map.get(key) {
            None => Ok(0),
            Some(v) => v
                .parse()
                .map_err(|_| Error::InvalidArgument(format!("publish context {key}={v:?} is not a number"))),
        };
        Ok(PublishContext {
            home: map.get(publish_keys::META).cloned(),
            epoch: number(publish_keys::EPOCH)?,
            wait_fence: number(publish_keys::FENCE)?,
            db: number(publish_keys::DB)? as u32,
            seed: number(publish_keys::SEED)? as u32,
            lease_ms: number(publish_keys::LEASE)?,
            registry: map.get(publish_keys::REGISTRY).cloned().unwrap_or_default(),
        })
    }

    pub fn to_map(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        if let Some(h) = &self.home {
            m.insert(publish_keys::META.to_string(), h.clone());
        }
        if self.epoch > 0 {
            m.insert(publish_keys::EPOCH.to_string(), self.epoch.to_string());
        }
        // A shared writer has no epoch but may have a fence to wait for.
        if self.epoch > 0 || self.wait_fence > 0 {
            m.insert(publish_keys::FENCE.to_string(), self.wait_fence.to_string());
        }
        for (key, v) in [
            (publish_keys::DB, self.db as u64),
            (publish_keys::SEED, self.seed as u64),
            (publish_keys::LEASE, self.lease_ms),
        ] {
            if v > 0 {
                m.insert(key.to_string(), v.to_string());
            }
        }
        if !self.registry.is_empty() {
            m.insert(publish_keys::REGISTRY.to_string(), self.registry.clone());
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_context_round_trips_and_rejects_garbage() {
        let c = PublishContext {
            home: Some("redis://h:1".into()),
            epoch: 3,
            wait_fence: 2,
            db: 9,
            seed: 4,
            lease_ms: 3000,
            registry: "abc".into(),
        };
        assert_eq!(PublishContext::parse(&c.to_map()).unwrap(), c);
        assert_eq!(PublishContext::parse(&HashMap::new()).unwrap(), PublishContext::default());
        let bad = HashMap::from([(publish_keys::EPOCH.to_string(), "x".to_string())]);
        assert!(matches!(PublishContext::parse(&bad), Err(Error::InvalidArgument(_))));
    }
}
