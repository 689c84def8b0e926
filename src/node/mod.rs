//! The CSI Node service: every node RPC is in this file. Handlers validate their
//! arguments, take the volume's operation guard and call `core`, which holds the mount
//! logic shared with the supervisor.

pub mod core;
pub mod jfs;
pub mod mount;
pub mod state;
pub mod supervisor;

use self::core::{NodeCore, StageRequest, PROBE_TIMEOUT};
use crate::error::{require, Error, Result};
use crate::proto::csi::{
    node_server::Node, node_service_capability, volume_capability::access_mode::Mode, volume_usage::Unit,
    NodeExpandVolumeRequest, NodeExpandVolumeResponse, NodeGetCapabilitiesRequest,
    NodeGetCapabilitiesResponse, NodeGetInfoRequest, NodeGetInfoResponse, NodeGetVolumeStatsRequest,
    NodeGetVolumeStatsResponse, NodePublishVolumeRequest, NodePublishVolumeResponse, NodeServiceCapability,
    NodeStageVolumeRequest, NodeStageVolumeResponse, NodeUnpublishVolumeRequest, NodeUnpublishVolumeResponse,
    NodeUnstageVolumeRequest, NodeUnstageVolumeResponse, VolumeCapability, VolumeCondition, VolumeUsage,
};
use crate::volume::{self, publish_keys, VolumeId};
use mount::Health;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

const LOCK_WAIT: Duration = Duration::from_secs(10);

pub struct NodeService {
    core: Arc<NodeCore>,
}

impl NodeService {
    pub fn new(core: Arc<NodeCore>) -> NodeService {
        NodeService { core }
    }
}

fn required_path(p: &str, what: &str) -> Result<PathBuf> {
    require(!p.is_empty(), format!("{what} is required"))?;
    let path = PathBuf::from(p);
    require(path.is_absolute(), format!("{what} must be an absolute path"))?;
    Ok(path)
}

fn capability(cap: Option<VolumeCapability>) -> Result<VolumeCapability> {
    let cap = cap.ok_or_else(|| Error::InvalidArgument("volume_capability is required".into()))?;
    volume::validate_capabilities(std::slice::from_ref(&cap))?;
    if let Some(why) = volume::unsupported_capability(std::slice::from_ref(&cap)) {
        return Err(Error::InvalidArgument(why));
    }
    Ok(cap)
}

fn mode(cap: &VolumeCapability) -> Mode {
    cap.access_mode.as_ref().and_then(|m| Mode::try_from(m.mode).ok()).unwrap_or(Mode::Unknown)
}

fn parse_id(id: &str) -> Result<VolumeId> {
    require(!id.is_empty(), "volume_id is required")?;
    VolumeId::parse(id).ok_or_else(|| Error::NotFound(format!("volume {id:?} does not exist")))
}

type Map = std::collections::HashMap<String, String>;

fn context_number(publish: &Map, key: &str) -> Result<u64> {
    match publish.get(key) {
        None => Ok(0),
        Some(v) => v
            .parse()
            .map_err(|_| Error::InvalidArgument(format!("publish context {key}={v:?} is not a number"))),
    }
}

fn stage_request(
    staging: PathBuf,
    cap: &VolumeCapability,
    context: &Map,
    publish: &Map,
) -> Result<StageRequest> {
    let key = volume::context_keys::CACHE_SIZE;
    let cache_size_mib = match context.get(key) {
        Some(v) => Some(v.parse().map_err(|_| Error::InvalidArgument(format!("{key}={v:?}: expected MiB")))?),
        None => None,
    };
    let cache_dir = context.get(volume::context_keys::CACHE_DIR).map(PathBuf::from);
    let m = mode(cap);
    Ok(StageRequest {
        staging_path: staging,
        read_only: matches!(m, Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly),
        single_target: m == Mode::SingleNodeSingleWriter,
        cache_size_mib,
        cache_dir,
        home: publish.get(publish_keys::META).cloned(),
        epoch: context_number(publish, publish_keys::EPOCH)?,
        wait_fence: context_number(publish, publish_keys::FENCE)?,
    })
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        req: Request<NodeStageVolumeRequest>,
    ) -> std::result::Result<Response<NodeStageVolumeResponse>, Status> {
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id is required")?;
        let staging = required_path(&r.staging_target_path, "staging_target_path")?;
        let cap = capability(r.volume_capability)?;
        let id = parse_id(&r.volume_id)?;
        let stage = stage_request(staging, &cap, &r.volume_context, &r.publish_context)?;
        let _guard = self.core.locks.lock(&r.volume_id, LOCK_WAIT).await?;
        self.core.stage(&r.volume_id, &id, &stage).await?;
        Ok(Response::new(NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        req: Request<NodeUnstageVolumeRequest>,
    ) -> std::result::Result<Response<NodeUnstageVolumeResponse>, Status> {
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id is required")?;
        let staging = required_path(&r.staging_target_path, "staging_target_path")?;
        let _guard = self.core.locks.lock(&r.volume_id, LOCK_WAIT).await?;
        self.core.unstage(&r.volume_id, &staging).await?;
        Ok(Response::new(NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        req: Request<NodePublishVolumeRequest>,
    ) -> std::result::Result<Response<NodePublishVolumeResponse>, Status> {
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id is required")?;
        let staging = required_path(&r.staging_target_path, "staging_target_path")?;
        let target = required_path(&r.target_path, "target_path")?;
        let cap = capability(r.volume_capability)?;
        let id = parse_id(&r.volume_id)?;
        let _guard = self.core.locks.lock(&r.volume_id, LOCK_WAIT).await?;
        // The node may have released the staged mount while idle (Swarm never
        // unstages); everything needed to stage again is in this request.
        if self.core.staged(&r.volume_id).is_none() {
            let stage = stage_request(staging, &cap, &r.volume_context, &r.publish_context)?;
            self.core.stage(&r.volume_id, &id, &stage).await?;
        }
        self.core.note_epoch(&r.volume_id, context_number(&r.publish_context, publish_keys::EPOCH)?)?;
        let read_only =
            r.readonly || matches!(mode(&cap), Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly);
        self.core.publish(&r.volume_id, &target, read_only).await?;
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<NodeUnpublishVolumeRequest>,
    ) -> std::result::Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id is required")?;
        let target = required_path(&r.target_path, "target_path")?;
        let _guard = self.core.locks.lock(&r.volume_id, LOCK_WAIT).await?;
        self.core.unpublish(&r.volume_id, &target).await?;
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<NodeGetVolumeStatsRequest>,
    ) -> std::result::Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id is required")?;
        require(!r.volume_path.is_empty(), "volume_path is required")?;
        // Any other path, relative ones included, is simply not this volume's.
        let path = PathBuf::from(&r.volume_path);
        let v = self
            .core
            .staged(&r.volume_id)
            .ok_or_else(|| Error::NotFound(format!("volume {} is not staged on this node", r.volume_id)))?;
        if v.staging_path != path && !v.targets.contains_key(&path) {
            return Err(Error::NotFound(format!(
                "{} is not a path of volume {}",
                path.display(),
                r.volume_id
            ))
            .into());
        }
        let (usage, condition) = stats(&self.core, &path, v.home.as_deref()).await;
        Ok(Response::new(NodeGetVolumeStatsResponse { usage, volume_condition: Some(condition) }))
    }

    async fn node_expand_volume(
        &self,
        req: Request<NodeExpandVolumeRequest>,
    ) -> std::result::Result<Response<NodeExpandVolumeResponse>, Status> {
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id is required")?;
        require(!r.volume_path.is_empty(), "volume_path is required")?;
        let path = PathBuf::from(&r.volume_path);
        let id = parse_id(&r.volume_id)?;
        let v = self
            .core
            .staged(&r.volume_id)
            .ok_or_else(|| Error::NotFound(format!("volume {id} is not staged on this node")))?;
        if v.staging_path != path && !v.targets.contains_key(&path) {
            return Err(Error::NotFound(format!("{} is not a path of volume {id}", path.display())).into());
        }
        let range =
            r.capacity_range.ok_or_else(|| Error::InvalidArgument("capacity_range is required".into()))?;
        let wanted = volume::capacity_for(Some(&range))?;
        let capacity = wait_for_capacity(&path, wanted, Duration::from_secs(14)).await?;
        Ok(Response::new(NodeExpandVolumeResponse { capacity_bytes: capacity as i64 }))
    }

    async fn node_get_capabilities(
        &self,
        _req: Request<NodeGetCapabilitiesRequest>,
    ) -> std::result::Result<Response<NodeGetCapabilitiesResponse>, Status> {
        use node_service_capability::{rpc::Type, Rpc, Type as CapType};
        let capabilities = [
            Type::StageUnstageVolume,
            Type::GetVolumeStats,
            Type::ExpandVolume,
            Type::VolumeCondition,
            Type::SingleNodeMultiWriter,
        ]
        .into_iter()
        .map(|t| NodeServiceCapability { r#type: Some(CapType::Rpc(Rpc { r#type: t as i32 })) })
        .collect();
        Ok(Response::new(NodeGetCapabilitiesResponse { capabilities }))
    }

    async fn node_get_info(
        &self,
        _req: Request<NodeGetInfoRequest>,
    ) -> std::result::Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.core.cfg.node_id.clone(),
            max_volumes_per_node: self.core.cfg.max_volumes,
            accessible_topology: None,
        }))
    }
}

/// Usage from statfs of the mount (JuiceFS reports its Capacity as the size), and a
/// condition that is abnormal when the mount or the metadata server is gone.
async fn stats(core: &NodeCore, path: &Path, home: Option<&str>) -> (Vec<VolumeUsage>, VolumeCondition) {
    let health = mount::health(path, PROBE_TIMEOUT).await;
    let server = core.server_for(home).unwrap_or_else(|_| core.meta.clone());
    let meta = server.ping().await;
    let via = match home {
        Some(_) => format!("metadata: the volume's home master {}", server.url()),
        None => format!("metadata: this node's master {}", server.url()),
    };
    let condition = match (&health, &meta) {
        (Health::Alive { .. }, Ok(())) => {
            VolumeCondition { abnormal: false, message: format!("mounted, {via}") }
        }
        (Health::Alive { .. }, Err(e)) => VolumeCondition { abnormal: true, message: e.to_string() },
        (Health::Dead, _) => VolumeCondition {
            abnormal: true,
            message: format!(
                "the JuiceFS mount is dead (transport endpoint is not connected); kelp remounts it; {via}"
            ),
        },
        (Health::Hung, _) => {
            VolumeCondition { abnormal: true, message: format!("the JuiceFS mount does not answer; {via}") }
        }
        (Health::Missing, _) => {
            VolumeCondition { abnormal: true, message: "the volume path is missing".into() }
        }
    };
    let usage = if matches!(health, Health::Alive { .. }) {
        match nix::sys::statvfs::statvfs(path) {
            Ok(s) => {
                let bsize = s.fragment_size() as u64;
                let total = s.blocks() as u64 * bsize;
                let avail = s.blocks_available() as u64 * bsize;
                let files = s.files() as u64;
                let ffree = s.files_free() as u64;
                vec![
                    VolumeUsage {
                        available: avail as i64,
                        total: total as i64,
                        used: total.saturating_sub(s.blocks_free() as u64 * bsize) as i64,
                        unit: Unit::Bytes as i32,
                    },
                    VolumeUsage {
                        available: ffree as i64,
                        total: files as i64,
                        used: files.saturating_sub(ffree) as i64,
                        unit: Unit::Inodes as i32,
                    },
                ]
            }
            Err(_) => Vec::new(),
        }
    } else {
        Vec::new()
    };
    (usage, condition)
}

/// Waits until statfs of the mount shows at least `wanted` bytes (clients pick up a new
/// Capacity on their heartbeat); returns the size seen.
async fn wait_for_capacity(path: &Path, wanted: u64, within: Duration) -> Result<u64> {
    let deadline = Instant::now() + within;
    loop {
        let total = nix::sys::statvfs::statvfs(path)
            .map(|s| s.blocks() as u64 * s.fragment_size() as u64)
            .map_err(|e| Error::Internal(format!("statfs {}: {e}", path.display())))?;
        if wanted == 0 || total >= wanted {
            return Ok(total);
        }
        if Instant::now() >= deadline {
            return Err(Error::Unavailable(format!(
                "the mount at {} still shows {total} bytes, not {wanted}; JuiceFS applies a new capacity on its next heartbeat, retry shortly",
                path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
