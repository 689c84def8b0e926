//! The CSI Node service: every node RPC is in this file. Handlers validate their
//! arguments, parse the volume id once, take the volume's operation guard and call the
//! operation on [`NodeCore`]: `stage`, `publish`, `stats`; `repair` runs the loop that
//! keeps mounts healthy between RPCs.

pub mod core;
pub mod fuse_fd;
pub mod generation;
pub mod jfs;
pub mod lease;
pub mod logs;
pub mod metrics;
pub mod mount;
pub mod paths;
mod procs;
pub mod publish;
pub mod reap;
pub mod repair;
pub mod stage;
pub mod state;
pub mod stats;
pub mod wedge;

use self::core::NodeCore;
use crate::error::{require, Error, Result};
use crate::proto::csi::{
    node_server::Node, node_service_capability, NodeExpandVolumeRequest, NodeExpandVolumeResponse,
    NodeGetCapabilitiesRequest, NodeGetCapabilitiesResponse, NodeGetInfoRequest, NodeGetInfoResponse,
    NodeGetVolumeStatsRequest, NodeGetVolumeStatsResponse, NodePublishVolumeRequest,
    NodePublishVolumeResponse, NodeServiceCapability, NodeStageVolumeRequest, NodeStageVolumeResponse,
    NodeUnpublishVolumeRequest, NodeUnpublishVolumeResponse, NodeUnstageVolumeRequest,
    NodeUnstageVolumeResponse, VolumeCapability,
};
use crate::server::record_volume;
use crate::volume::{self, PublishContext, VolumeId};
use stage::StageRequest;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

type RpcResult<T> = std::result::Result<Response<T>, Status>;

/// NodeExpandVolume waits this long for the mount to show the new size: below
/// Swarm's 15 s deadline, and longer than JuiceFS's ~12 s heartbeat.
const EXPAND_WAIT: Duration = Duration::from_secs(14);

pub struct NodeService {
    core: Arc<NodeCore>,
}

impl NodeService {
    pub fn new(core: Arc<NodeCore>) -> NodeService {
        NodeService { core }
    }

    /// The lexical checks of a path the CO hands in (see `paths`).
    fn path(&self, raw: &str, what: &str) -> Result<PathBuf> {
        self.core.cfg.paths.check(raw, what)
    }

    /// The stage request of a NodeStage or NodePublish, its home master and its
    /// databases checked against the registry.
    async fn stage_request(
        &self,
        id: &VolumeId,
        staging: PathBuf,
        cap: &VolumeCapability,
        volume_context: &HashMap<String, String>,
        publish: &PublishContext,
    ) -> Result<StageRequest> {
        let cache_root = &self.core.cfg.juicefs.cache_dir;
        let req = StageRequest::from_rpc(staging, cap, volume_context, publish, cache_root)?;
        self.core.check_home(id, req.home.as_deref()).await?;
        self.core.check_generation(id, &req).await?;
        Ok(req)
    }

    /// The staged volume and the path of it a stats or expand request names;
    /// `NotFound` for anything else (csi-sanity asks with made-up paths).
    fn volume_path(&self, volume_id: &str, path: &str) -> Result<(VolumeId, PathBuf, Option<String>)> {
        require(!volume_id.is_empty(), "volume_id is required")?;
        require(!path.is_empty(), "volume_path is required")?;
        let id = VolumeId::from_request(volume_id)?;
        record_volume(&id);
        let path = PathBuf::from(path);
        let v = self
            .core
            .staged(&id)
            .ok_or_else(|| Error::NotFound(format!("volume {id} is not staged on this node")))?;
        if v.staging_path != path && !v.targets.contains_key(&path) {
            return Err(Error::NotFound(format!("{path:?} is not a path of volume {id}")));
        }
        Ok((id, path, v.home))
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        req: Request<NodeStageVolumeRequest>,
    ) -> RpcResult<NodeStageVolumeResponse> {
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id is required")?;
        let staging = self.path(&r.staging_target_path, "staging_target_path")?;
        let cap = volume::required_capability(r.volume_capability)?;
        let id = VolumeId::from_request(&r.volume_id)?;
        record_volume(&id);
        let publish = PublishContext::parse(&r.publish_context)?;
        let stage = self.stage_request(&id, staging, &cap, &r.volume_context, &publish).await?;
        let _guard = self.core.locks.lock_rpc(&r.volume_id).await?;
        self.core.stage(&id, &stage).await?;
        Ok(Response::new(NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        req: Request<NodeUnstageVolumeRequest>,
    ) -> RpcResult<NodeUnstageVolumeResponse> {
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id is required")?;
        let staging = self.path(&r.staging_target_path, "staging_target_path")?;
        // An id kelp never issued was never staged here: nothing to undo.
        if let Some(id) = VolumeId::parse(&r.volume_id) {
            record_volume(&id);
            let _guard = self.core.locks.lock_rpc(&r.volume_id).await?;
            self.core.unstage(&id, &staging).await?;
        }
        Ok(Response::new(NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        req: Request<NodePublishVolumeRequest>,
    ) -> RpcResult<NodePublishVolumeResponse> {
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id is required")?;
        let staging = self.path(&r.staging_target_path, "staging_target_path")?;
        let target = self.path(&r.target_path, "target_path")?;
        let cap = volume::required_capability(r.volume_capability)?;
        let id = VolumeId::from_request(&r.volume_id)?;
        record_volume(&id);
        let publish = PublishContext::parse(&r.publish_context)?;
        let _guard = self.core.locks.lock_rpc(&r.volume_id).await?;
        // The node may have released the staged mount while idle (Swarm never
        // unstages); everything needed to stage again is in this request.
        match self.core.staged(&id) {
            None => {
                let stage = self.stage_request(&id, staging, &cap, &r.volume_context, &publish).await?;
                self.core.stage(&id, &stage).await?;
            }
            // Still staged from an earlier hold, while another node wrote since: its
            // fence must have replicated before a task here sees the volume, and what
            // the mount cached (for a single-node writer, minutes of names and
            // attributes) predates that node's writes. An idle mount is made afresh,
            // which waits for the fence; one still in use (it cannot be, unless
            // fenced, which refuses below) only waits.
            Some(v) if publish.wait_fence > v.epoch => {
                if v.targets.is_empty() && v.fenced.is_none() {
                    tracing::info!(volume_id = %id, "staged here before another node wrote it; mounting it afresh");
                    self.core.unstage(&id, &v.staging_path).await?;
                    let stage = self.stage_request(&id, staging, &cap, &r.volume_context, &publish).await?;
                    self.core.stage(&id, &stage).await?;
                } else {
                    let server = self.core.server_for(v.home.as_deref())?;
                    self.core.await_fence(&server, &id, v.live_db(&id), publish.wait_fence).await?;
                }
            }
            Some(_) => {}
        }
        self.core.note_epoch(&id, publish.epoch).await?;
        let read_only = r.readonly || volume::is_reader_mode(volume::mode(&cap));
        self.core.publish(&id, &target, read_only).await?;
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<NodeUnpublishVolumeRequest>,
    ) -> RpcResult<NodeUnpublishVolumeResponse> {
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id is required")?;
        let target = self.path(&r.target_path, "target_path")?;
        if let Some(id) = VolumeId::parse(&r.volume_id) {
            record_volume(&id);
            let _guard = self.core.locks.lock_rpc(&r.volume_id).await?;
            self.core.unpublish(&id, &target).await?;
        }
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<NodeGetVolumeStatsRequest>,
    ) -> RpcResult<NodeGetVolumeStatsResponse> {
        let r = req.into_inner();
        let (id, path, home) = self.volume_path(&r.volume_id, &r.volume_path)?;
        if let Some(f) = self.core.staged(&id).and_then(|v| v.fenced) {
            let condition = stats::fenced_condition(&f);
            return Ok(Response::new(NodeGetVolumeStatsResponse {
                usage: Vec::new(),
                volume_condition: Some(condition),
            }));
        }
        let (usage, condition) = self.core.stats(&path, home.as_deref(), &id.fs_name).await;
        Ok(Response::new(NodeGetVolumeStatsResponse { usage, volume_condition: Some(condition) }))
    }

    async fn node_expand_volume(
        &self,
        req: Request<NodeExpandVolumeRequest>,
    ) -> RpcResult<NodeExpandVolumeResponse> {
        let r = req.into_inner();
        // Existence first: csi-sanity expects NotFound for an unknown volume that also
        // lacks a capacity range.
        let (_, path, _) = self.volume_path(&r.volume_id, &r.volume_path)?;
        let range =
            r.capacity_range.ok_or_else(|| Error::InvalidArgument("capacity_range is required".into()))?;
        let wanted = volume::capacity_for(Some(&range))?;
        let capacity = stats::wait_for_capacity(&path, wanted, EXPAND_WAIT).await?;
        Ok(Response::new(NodeExpandVolumeResponse { capacity_bytes: capacity as i64 }))
    }

    async fn node_get_capabilities(
        &self,
        _req: Request<NodeGetCapabilitiesRequest>,
    ) -> RpcResult<NodeGetCapabilitiesResponse> {
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

    async fn node_get_info(&self, _req: Request<NodeGetInfoRequest>) -> RpcResult<NodeGetInfoResponse> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.core.cfg.node_id.clone(),
            max_volumes_per_node: self.core.cfg.max_volumes,
            accessible_topology: None,
        }))
    }
}
