//! The CSI Controller service: every controller RPC is in this file, in the order of
//! the spec. Each handler validates its arguments first (csi-sanity checks codes in
//! that order), takes the volume's operation guard, then delegates to `provision`.

pub mod provision;

use crate::error::{require, Error, Result};
use crate::keydb::MetaServer;
use crate::locks::VolumeLocks;
use crate::pinning;
use crate::proto::csi::volume_capability::access_mode::Mode;
use crate::proto::csi::{
    controller_server::Controller, controller_service_capability, list_volumes_response,
    validate_volume_capabilities_response::Confirmed, ControllerExpandVolumeRequest,
    ControllerExpandVolumeResponse, ControllerGetCapabilitiesRequest, ControllerGetCapabilitiesResponse,
    ControllerGetVolumeRequest, ControllerGetVolumeResponse, ControllerModifyVolumeRequest,
    ControllerModifyVolumeResponse, ControllerPublishVolumeRequest, ControllerPublishVolumeResponse,
    ControllerServiceCapability, ControllerUnpublishVolumeRequest, ControllerUnpublishVolumeResponse,
    CreateSnapshotRequest, CreateSnapshotResponse, CreateVolumeRequest, CreateVolumeResponse,
    DeleteSnapshotRequest, DeleteSnapshotResponse, DeleteVolumeRequest, DeleteVolumeResponse,
    GetCapacityRequest, GetCapacityResponse, GetSnapshotRequest, GetSnapshotResponse, ListSnapshotsRequest,
    ListSnapshotsResponse, ListVolumesRequest, ListVolumesResponse, ValidateVolumeCapabilitiesRequest,
    ValidateVolumeCapabilitiesResponse, Volume,
};
use crate::seaweedfs::Filer;
use crate::volume::{self, publish_keys, Params, Spec, VolumeId};
use provision::{CreateRequest, S3Credentials};
use std::collections::HashMap;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// How long an RPC waits for another RPC on the same volume; below Swarm's 15 s
/// deadline so the caller gets a clean `Aborted` and retries.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// Page tokens are `after:<fs name>`; anything else is a token kelp never issued.
const TOKEN_PREFIX: &str = "after:";

/// The backends a controller provisions on.
#[derive(Clone)]
pub struct Backends {
    pub meta: MetaServer,
    pub filer: Filer,
    /// S3 endpoint as nodes reach it, written into each file system's setting.
    pub s3_endpoint: String,
    /// Default S3 credentials when CreateVolume carries none in its secrets.
    pub s3_access_key: String,
    pub s3_secret_key: String,
    /// Logical databases to allocate from; `None` asks the server.
    pub databases: Option<u32>,
    /// This controller's master as nodes reach it (no password): new volumes' home.
    pub home_meta: String,
}

pub struct ControllerService {
    backends: Backends,
    locks: VolumeLocks,
}

impl ControllerService {
    pub fn new(backends: Backends) -> ControllerService {
        ControllerService { backends, locks: VolumeLocks::default() }
    }

    /// Records `node` as the holder of a single-node-writer volume, or says why not.
    async fn hand_over(&self, id: &VolumeId, spec: &Spec, node: &str) -> Result<pinning::Holder> {
        let meta = &self.backends.meta;
        // The compare-and-set fails only if another controller raced us; retry a little.
        for _ in 0..5 {
            let current = meta.holder(&id.fs_name).await?;
            let silent_for = match &current {
                Some(h) if h.node != node => {
                    meta.node(&h.node).await?.map(|n| crate::unix_now() - n.updated_unix)
                }
                _ => None,
            };
            match pinning::handover(current.as_ref(), node, spec.params.takeover_after, silent_for) {
                pinning::Handover::Grant { next, took_over } => {
                    let expected = current.as_ref().map(|h| h.epoch).unwrap_or(0);
                    if meta.swap_holder(&id.fs_name, expected, &next).await? {
                        if took_over {
                            tracing::warn!(volume_id = %id, from = %current.map(|h| h.node).unwrap_or_default(), to = node,
                                "took the volume over from a node that never released it; what its master had not replicated is lost");
                        }
                        return Ok(next);
                    }
                }
                pinning::Handover::Refuse { holder, silent_for } => {
                    let heard = silent_for
                        .map(|s| format!("last heard from {s} s ago"))
                        .unwrap_or_else(|| "never heard from".into());
                    let rule = match spec.params.takeover_after {
                        Some(s) => format!("kelp takes over once it has been silent for {s} s"),
                        None => {
                            "this volume is never taken over without a release (takeover-after=never)".into()
                        }
                    };
                    return Err(Error::FailedPrecondition(format!(
                        "volume {id} is held by node {holder:?}, which has not released it ({heard}); stop the task there so it is unpublished; {rule}"
                    )));
                }
            }
        }
        Err(Error::Aborted(format!("publishing {id} raced another publish; retry")))
    }

    /// Credentials from the request's secrets (`access-key`, `secret-key`), else the
    /// configured ones.
    fn credentials(&self, secrets: &HashMap<String, String>) -> Result<S3Credentials> {
        let pick = |k: &str| secrets.get(k).filter(|v| !v.is_empty()).cloned();
        match (pick("access-key"), pick("secret-key")) {
            (Some(a), Some(s)) => Ok(S3Credentials { access_key: a, secret_key: s }),
            (None, None) => Ok(S3Credentials {
                access_key: self.backends.s3_access_key.clone(),
                secret_key: self.backends.s3_secret_key.clone(),
            }),
            _ => Err(Error::InvalidArgument(
                "secrets must hold both access-key and secret-key, or neither".into(),
            )),
        }
    }
}

fn csi_volume(id: &VolumeId, spec: &Spec) -> Volume {
    Volume {
        capacity_bytes: spec.capacity_bytes as i64,
        volume_id: id.to_string(),
        volume_context: volume_context(id, spec),
        ..Default::default()
    }
}

/// What the node side is told about a volume: names, and the per-volume node settings.
/// No secret ever goes here: Swarm shows it in `docker volume inspect`.
fn volume_context(id: &VolumeId, spec: &Spec) -> HashMap<String, String> {
    let mut ctx =
        HashMap::from([("fsName".to_string(), id.fs_name.clone()), ("bucket".to_string(), id.bucket())]);
    if let Some(size) = spec.params.cache_size_mib {
        ctx.insert(volume::context_keys::CACHE_SIZE.into(), size.to_string());
    }
    if let Some(dir) = &spec.params.cache_dir {
        ctx.insert(volume::context_keys::CACHE_DIR.into(), dir.clone());
    }
    ctx
}

fn parse_id(id: &str) -> Result<VolumeId> {
    require(!id.is_empty(), "volume_id is required")?;
    VolumeId::parse(id).ok_or_else(|| Error::NotFound(format!("volume {id:?} does not exist")))
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        req: Request<CreateVolumeRequest>,
    ) -> std::result::Result<Response<CreateVolumeResponse>, Status> {
        let r = req.into_inner();
        volume::validate_name(&r.name)?;
        volume::validate_capabilities(&r.volume_capabilities)?;
        if let Some(why) = volume::unsupported_capability(&r.volume_capabilities) {
            return Err(Error::InvalidArgument(why).into());
        }
        if r.volume_content_source.is_some() {
            return Err(Error::InvalidArgument(
                "kelp does not create volumes from snapshots or clones".into(),
            )
            .into());
        }
        let params = Params::parse(&r.parameters)?;
        let capacity = volume::capacity_for(r.capacity_range.as_ref())?;
        let credentials = self.credentials(&r.secrets)?;
        let fs_name = volume::fs_name_for(&r.name);
        let _guard = self.locks.lock(&fs_name, LOCK_WAIT).await?;
        let (id, spec) = provision::create(
            &self.backends,
            CreateRequest {
                name: &r.name,
                fs_name,
                capacity,
                range: r.capacity_range.as_ref(),
                params,
                credentials,
            },
        )
        .await?;
        Ok(Response::new(CreateVolumeResponse { volume: Some(csi_volume(&id, &spec)) }))
    }

    async fn delete_volume(
        &self,
        req: Request<DeleteVolumeRequest>,
    ) -> std::result::Result<Response<DeleteVolumeResponse>, Status> {
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id is required")?;
        // An id kelp could never have issued names no volume: deleting it succeeds.
        if let Some(id) = VolumeId::parse(&r.volume_id) {
            let _guard = self.locks.lock(&id.fs_name, LOCK_WAIT).await?;
            provision::delete(&self.backends, &id).await?;
        }
        Ok(Response::new(DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        req: Request<ControllerPublishVolumeRequest>,
    ) -> std::result::Result<Response<ControllerPublishVolumeResponse>, Status> {
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id is required")?;
        require(!r.node_id.is_empty(), "node_id is required")?;
        let cap = r
            .volume_capability
            .ok_or_else(|| Error::InvalidArgument("volume_capability is required".into()))?;
        volume::validate_capabilities(std::slice::from_ref(&cap))?;
        let id = parse_id(&r.volume_id)?;
        let (_, spec) = provision::lookup(&self.backends, &id).await?;
        if self.backends.meta.node(&r.node_id).await.map_err(Error::from)?.is_none() {
            return Err(Error::NotFound(format!(
                "node {:?} is unknown; a node appears once its kelp node service has started",
                r.node_id
            ))
            .into());
        }
        if let Some(why) = volume::unsupported_capability(std::slice::from_ref(&cap)) {
            return Err(Error::InvalidArgument(why).into());
        }
        let mode =
            cap.access_mode.as_ref().and_then(|m| Mode::try_from(m.mode).ok()).unwrap_or(Mode::Unknown);
        let role = pinning::role(mode, r.readonly);
        let mut context = HashMap::new();
        if pinning::master_for(role, spec.params.shared_writers_local) == pinning::Master::Home
            && !spec.home_meta.is_empty()
        {
            context.insert(publish_keys::META.to_string(), spec.home_meta.clone());
        }
        if role == pinning::Role::SingleNodeWriter {
            let _guard = self.locks.lock(&id.fs_name, LOCK_WAIT).await?;
            let holder = self.hand_over(&id, &spec, &r.node_id).await?;
            context.insert(publish_keys::EPOCH.to_string(), holder.epoch.to_string());
            context.insert(publish_keys::FENCE.to_string(), holder.wait_fence.to_string());
        }
        Ok(Response::new(ControllerPublishVolumeResponse { publish_context: context }))
    }

    async fn controller_unpublish_volume(
        &self,
        req: Request<ControllerUnpublishVolumeRequest>,
    ) -> std::result::Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id is required")?;
        // An unknown volume or node is already unpublished, which the spec answers with OK.
        if let (Some(id), false) = (VolumeId::parse(&r.volume_id), r.node_id.is_empty()) {
            let _guard = self.locks.lock(&id.fs_name, LOCK_WAIT).await?;
            self.backends.meta.release_holder(&id.fs_name, &r.node_id).await.map_err(Error::from)?;
        }
        Ok(Response::new(ControllerUnpublishVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> std::result::Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id is required")?;
        volume::validate_capabilities(&r.volume_capabilities)?;
        let id = parse_id(&r.volume_id)?;
        provision::lookup(&self.backends, &id).await?;
        let resp = match volume::unsupported_capability(&r.volume_capabilities) {
            Some(why) => ValidateVolumeCapabilitiesResponse { confirmed: None, message: why },
            None => ValidateVolumeCapabilitiesResponse {
                confirmed: Some(Confirmed {
                    volume_context: r.volume_context,
                    volume_capabilities: r.volume_capabilities,
                    parameters: r.parameters,
                    mutable_parameters: r.mutable_parameters,
                }),
                message: String::new(),
            },
        };
        Ok(Response::new(resp))
    }

    async fn list_volumes(
        &self,
        req: Request<ListVolumesRequest>,
    ) -> std::result::Result<Response<ListVolumesResponse>, Status> {
        let r = req.into_inner();
        if r.max_entries < 0 {
            return Err(Error::InvalidArgument("max_entries must not be negative".into()).into());
        }
        let after = if r.starting_token.is_empty() {
            None
        } else {
            let name = r.starting_token.strip_prefix(TOKEN_PREFIX).filter(|n| volume::is_valid_fs_name(n));
            Some(name.ok_or_else(|| {
                Error::Aborted(format!("starting_token {:?} was not issued by kelp", r.starting_token))
            })?)
        };
        let page = if r.max_entries == 0 { 1000 } else { r.max_entries as usize };
        // One extra name tells whether another page follows.
        let mut names = self.backends.meta.volume_names_after(after, page + 1).await.map_err(Error::from)?;
        let more = names.len() > page;
        names.truncate(page);
        let mut entries = Vec::with_capacity(names.len());
        for fs_name in &names {
            let Some(rec) = self.backends.meta.volume(fs_name).await.map_err(Error::from)? else { continue };
            if rec.state != crate::keydb::VolumeState::Ready {
                continue;
            }
            let spec = provision::parse_spec(&rec)?;
            let id = VolumeId::new(rec.db, &spec.uuid, fs_name);
            entries.push(list_volumes_response::Entry { volume: Some(csi_volume(&id, &spec)), status: None });
        }
        let next_token = match names.last() {
            Some(last) if more => format!("{TOKEN_PREFIX}{last}"),
            _ => String::new(),
        };
        Ok(Response::new(ListVolumesResponse { entries, next_token }))
    }

    async fn get_capacity(
        &self,
        _req: Request<GetCapacityRequest>,
    ) -> std::result::Result<Response<GetCapacityResponse>, Status> {
        let space = self.backends.filer.space().await.map_err(Error::from)?;
        Ok(Response::new(GetCapacityResponse {
            available_capacity: space.total_bytes.saturating_sub(space.used_bytes).min(i64::MAX as u64)
                as i64,
            maximum_volume_size: None,
            minimum_volume_size: None,
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _req: Request<ControllerGetCapabilitiesRequest>,
    ) -> std::result::Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        use controller_service_capability::{rpc::Type, Rpc, Type as CapType};
        let caps = [
            Type::CreateDeleteVolume,
            Type::PublishUnpublishVolume,
            Type::ListVolumes,
            Type::GetCapacity,
            Type::ExpandVolume,
            Type::SingleNodeMultiWriter,
        ]
        .into_iter()
        .map(|t| ControllerServiceCapability { r#type: Some(CapType::Rpc(Rpc { r#type: t as i32 })) })
        .collect();
        Ok(Response::new(ControllerGetCapabilitiesResponse { capabilities: caps }))
    }

    async fn create_snapshot(
        &self,
        _req: Request<CreateSnapshotRequest>,
    ) -> std::result::Result<Response<CreateSnapshotResponse>, Status> {
        Err(Error::Unimplemented("snapshots are not offered".into()).into())
    }

    async fn delete_snapshot(
        &self,
        _req: Request<DeleteSnapshotRequest>,
    ) -> std::result::Result<Response<DeleteSnapshotResponse>, Status> {
        Err(Error::Unimplemented("snapshots are not offered".into()).into())
    }

    async fn list_snapshots(
        &self,
        _req: Request<ListSnapshotsRequest>,
    ) -> std::result::Result<Response<ListSnapshotsResponse>, Status> {
        Err(Error::Unimplemented("snapshots are not offered".into()).into())
    }

    async fn get_snapshot(
        &self,
        _req: Request<GetSnapshotRequest>,
    ) -> std::result::Result<Response<GetSnapshotResponse>, Status> {
        Err(Error::Unimplemented("snapshots are not offered".into()).into())
    }

    async fn controller_expand_volume(
        &self,
        req: Request<ControllerExpandVolumeRequest>,
    ) -> std::result::Result<Response<ControllerExpandVolumeResponse>, Status> {
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id is required")?;
        let range =
            r.capacity_range.ok_or_else(|| Error::InvalidArgument("capacity_range is required".into()))?;
        let wanted = volume::capacity_for(Some(&range))?;
        let id = parse_id(&r.volume_id)?;
        let _guard = self.locks.lock(&id.fs_name, LOCK_WAIT).await?;
        let (_, mut spec) = provision::lookup(&self.backends, &id).await?;
        // Unlimited stays unlimited, and kelp never shrinks a file system under its data.
        if spec.capacity_bytes != 0 && wanted > spec.capacity_bytes {
            let b = &self.backends;
            crate::juicefs::set_capacity(&b.meta, id.db, wanted).await.map_err(Error::from)?;
            b.filer.set_quota(&id.bucket(), wanted).await.map_err(Error::from)?;
            spec.capacity_bytes = wanted;
            b.meta
                .set_volume_spec(&id.fs_name, &serde_json::to_string(&spec).expect("spec serialises"))
                .await
                .map_err(Error::from)?;
            tracing::info!(volume_id = %id, capacity = wanted, "volume expanded");
        }
        Ok(Response::new(ControllerExpandVolumeResponse {
            capacity_bytes: spec.capacity_bytes as i64,
            node_expansion_required: true,
        }))
    }

    async fn controller_get_volume(
        &self,
        _req: Request<ControllerGetVolumeRequest>,
    ) -> std::result::Result<Response<ControllerGetVolumeResponse>, Status> {
        Err(Error::Unimplemented("ControllerGetVolume is not offered".into()).into())
    }

    async fn controller_modify_volume(
        &self,
        _req: Request<ControllerModifyVolumeRequest>,
    ) -> std::result::Result<Response<ControllerModifyVolumeResponse>, Status> {
        Err(Error::Unimplemented("ControllerModifyVolume is not offered".into()).into())
    }
}
