//! The CSI Controller service: every controller RPC is in this file, in the order of
//! the spec. Each handler validates its arguments first (csi-sanity checks codes in
//! that order), takes the volume's operation guard, and delegates to the named
//! operation beside it: `provision` (create, delete, lookup), `family` (clones,
//! restores and the end of a shared file system), `snapshot`, `publish`, `list`,
//! `expand`.

pub mod backup;
mod expand;
pub(crate) mod family;
pub mod generations;
mod list;
mod provision;
mod publish;
mod snapshot;
mod volumes;

use crate::error::{require, Error};
use crate::locks::VolumeLocks;
use crate::meta::MetaServer;
use crate::pinning;
use crate::proto::csi::{
    controller_server::Controller, controller_service_capability,
    validate_volume_capabilities_response::Confirmed, ControllerExpandVolumeRequest,
    ControllerExpandVolumeResponse, ControllerGetCapabilitiesRequest, ControllerGetCapabilitiesResponse,
    ControllerGetVolumeRequest, ControllerGetVolumeResponse, ControllerModifyVolumeRequest,
    ControllerModifyVolumeResponse, ControllerPublishVolumeRequest, ControllerPublishVolumeResponse,
    ControllerServiceCapability, ControllerUnpublishVolumeRequest, ControllerUnpublishVolumeResponse,
    CreateSnapshotRequest, CreateSnapshotResponse, CreateVolumeRequest, CreateVolumeResponse,
    DeleteSnapshotRequest, DeleteSnapshotResponse, DeleteVolumeRequest, DeleteVolumeResponse,
    GetCapacityRequest, GetCapacityResponse, GetSnapshotRequest, GetSnapshotResponse, ListSnapshotsRequest,
    ListSnapshotsResponse, ListVolumesRequest, ListVolumesResponse, ValidateVolumeCapabilitiesRequest,
    ValidateVolumeCapabilitiesResponse,
};
use crate::seaweedfs::Filer;
use crate::server::record_volume;
use crate::volume::{self, Params, SnapshotId, VolumeId};
use family::CloneRequest;
pub use family::{CLONE_OF, FROM_SNAPSHOT};
use provision::{csi_volume, CreateRequest, S3Credentials};
use tonic::{Request, Response, Status};

type RpcResult<T> = std::result::Result<Response<T>, Status>;

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
    /// Largest tree a snapshot or clone copies (`--snapshot-max-entries`).
    pub snapshot_max_entries: u64,
}

pub struct ControllerService {
    backends: Backends,
    locks: VolumeLocks,
}

impl ControllerService {
    pub fn new(backends: Backends) -> ControllerService {
        ControllerService { backends, locks: VolumeLocks::default() }
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(&self, req: Request<CreateVolumeRequest>) -> RpcResult<CreateVolumeResponse> {
        let r = req.into_inner();
        volume::validate_name(&r.name)?;
        volume::validate_capabilities(&r.volume_capabilities)?;
        if let Some(why) = volume::unsupported_capability(&r.volume_capabilities) {
            return Err(Error::InvalidArgument(why).into());
        }
        let mut raw = r.parameters.clone();
        let source = family::source_of(&self.backends, r.volume_content_source.as_ref(), &mut raw).await?;
        let params = Params::parse(&raw)?;
        let capacity = volume::capacity_for(r.capacity_range.as_ref())?;
        volume::check_capacity_for_blocks(capacity, params.block_size_kib)?;
        let credentials = S3Credentials::from_secrets(&r.secrets, &self.backends)?;
        let fs_name = volume::fs_name_for(&r.name);
        record_volume(&fs_name);
        let _guard = self.locks.lock_rpc(&fs_name).await?;
        if let Some(source) = source {
            let family = source.family_fs().to_string();
            let _family = match family == fs_name {
                true => None,
                false => Some(self.locks.lock_rpc(&family).await?),
            };
            let clone = CloneRequest {
                name: &r.name,
                fs_name,
                range: r.capacity_range.as_ref(),
                params: (!raw.is_empty()).then_some(params),
                source: source.clone(),
            };
            let (id, spec) = family::create(&self.backends, clone).await?;
            let mut volume = csi_volume(&id, &spec);
            volume.content_source = Some(source.to_csi());
            return Ok(Response::new(CreateVolumeResponse { volume: Some(volume) }));
        }
        let create = CreateRequest {
            name: &r.name,
            fs_name,
            capacity,
            range: r.capacity_range.as_ref(),
            params,
            credentials,
        };
        let (id, spec) = provision::create(&self.backends, create).await?;
        Ok(Response::new(CreateVolumeResponse { volume: Some(csi_volume(&id, &spec)) }))
    }

    async fn delete_volume(&self, req: Request<DeleteVolumeRequest>) -> RpcResult<DeleteVolumeResponse> {
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id is required")?;
        // An id kelp could never have issued names no volume: deleting it succeeds.
        if let Some(id) = VolumeId::parse(&r.volume_id) {
            record_volume(&id);
            let _guard = self.locks.lock_rpc(&id.fs_name).await?;
            provision::delete(&self.backends, &id).await?;
        }
        Ok(Response::new(DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        req: Request<ControllerPublishVolumeRequest>,
    ) -> RpcResult<ControllerPublishVolumeResponse> {
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id is required")?;
        require(!r.node_id.is_empty(), "node_id is required")?;
        let cap = r
            .volume_capability
            .ok_or_else(|| Error::InvalidArgument("volume_capability is required".into()))?;
        volume::validate_capabilities(std::slice::from_ref(&cap))?;
        let id = VolumeId::from_request(&r.volume_id)?;
        record_volume(&id);
        let (_, spec) = volumes::lookup(&self.backends, &id).await?;
        if self.backends.meta.node(&r.node_id).await.map_err(Error::from)?.is_none() {
            let msg = format!(
                "node {:?} is unknown; a node appears once its kelp node service has started",
                r.node_id
            );
            return Err(Error::NotFound(msg).into());
        }
        let cap = volume::required_capability(Some(cap))?;
        let role = pinning::role(volume::mode(&cap), r.readonly);
        let _guard = self.locks.lock_rpc(&id.fs_name).await?;
        let context = publish::publish(&self.backends, &id, &spec, &r.node_id, role).await?;
        Ok(Response::new(ControllerPublishVolumeResponse { publish_context: context.to_map() }))
    }

    async fn controller_unpublish_volume(
        &self,
        req: Request<ControllerUnpublishVolumeRequest>,
    ) -> RpcResult<ControllerUnpublishVolumeResponse> {
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id is required")?;
        // An unknown volume or node is already unpublished, which the spec answers with OK.
        if let (Some(id), false) = (VolumeId::parse(&r.volume_id), r.node_id.is_empty()) {
            record_volume(&id);
            let _guard = self.locks.lock_rpc(&id.fs_name).await?;
            publish::unpublish(&self.backends, &id, &r.node_id).await?;
        }
        Ok(Response::new(ControllerUnpublishVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> RpcResult<ValidateVolumeCapabilitiesResponse> {
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id is required")?;
        volume::validate_capabilities(&r.volume_capabilities)?;
        let id = VolumeId::from_request(&r.volume_id)?;
        record_volume(&id);
        volumes::lookup(&self.backends, &id).await?;
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

    async fn list_volumes(&self, req: Request<ListVolumesRequest>) -> RpcResult<ListVolumesResponse> {
        let r = req.into_inner();
        Ok(Response::new(list::page(&self.backends, r.max_entries, &r.starting_token).await?))
    }

    async fn get_capacity(&self, _req: Request<GetCapacityRequest>) -> RpcResult<GetCapacityResponse> {
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
    ) -> RpcResult<ControllerGetCapabilitiesResponse> {
        use controller_service_capability::{rpc::Type, Rpc, Type as CapType};
        let caps = [
            Type::CreateDeleteVolume,
            Type::PublishUnpublishVolume,
            Type::ListVolumes,
            Type::GetCapacity,
            Type::ExpandVolume,
            Type::SingleNodeMultiWriter,
            Type::CreateDeleteSnapshot,
            Type::ListSnapshots,
            Type::CloneVolume,
            Type::GetSnapshot,
        ]
        .into_iter()
        .map(|t| ControllerServiceCapability { r#type: Some(CapType::Rpc(Rpc { r#type: t as i32 })) })
        .collect();
        Ok(Response::new(ControllerGetCapabilitiesResponse { capabilities: caps }))
    }

    async fn create_snapshot(
        &self,
        req: Request<CreateSnapshotRequest>,
    ) -> RpcResult<CreateSnapshotResponse> {
        let r = req.into_inner();
        require(!r.name.is_empty(), "name is required")?;
        require(!r.source_volume_id.is_empty(), "source_volume_id is required")?;
        require(r.name.len() <= 128, "name is longer than 128 bytes")?;
        if let Some(key) = r.parameters.keys().next() {
            return Err(
                Error::InvalidArgument(format!("snapshots take no parameters; {key:?} is unknown")).into()
            );
        }
        let source = VolumeId::from_request(&r.source_volume_id)?;
        record_volume(&source);
        let _guard = self.locks.lock_rpc(&source.fs_name).await?;
        let record = snapshot::create(&self.backends, &r.name, &source).await?;
        Ok(Response::new(CreateSnapshotResponse { snapshot: Some(snapshot::csi_snapshot(&record)) }))
    }

    async fn delete_snapshot(
        &self,
        req: Request<DeleteSnapshotRequest>,
    ) -> RpcResult<DeleteSnapshotResponse> {
        let r = req.into_inner();
        require(!r.snapshot_id.is_empty(), "snapshot_id is required")?;
        // An id kelp could never have issued names no snapshot: deleting it succeeds.
        if let Some(id) = SnapshotId::parse(&r.snapshot_id) {
            record_volume(&id.family);
            let _guard = self.locks.lock_rpc(&id.family.fs_name).await?;
            snapshot::delete(&self.backends, &id).await?;
        }
        Ok(Response::new(DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(&self, req: Request<ListSnapshotsRequest>) -> RpcResult<ListSnapshotsResponse> {
        let r = req.into_inner();
        let page = snapshot::page(
            &self.backends,
            r.max_entries,
            &r.starting_token,
            &r.snapshot_id,
            &r.source_volume_id,
        )
        .await?;
        Ok(Response::new(page))
    }

    async fn get_snapshot(&self, req: Request<GetSnapshotRequest>) -> RpcResult<GetSnapshotResponse> {
        let r = req.into_inner();
        require(!r.snapshot_id.is_empty(), "snapshot_id is required")?;
        let missing = || Error::NotFound(format!("snapshot {:?} does not exist", r.snapshot_id));
        let id = SnapshotId::parse(&r.snapshot_id).ok_or_else(missing)?;
        record_volume(&id.family);
        let record = family::snapshot(&self.backends, &id).await?.filter(|s| s.ready).ok_or_else(missing)?;
        Ok(Response::new(GetSnapshotResponse { snapshot: Some(snapshot::csi_snapshot(&record)) }))
    }

    async fn controller_expand_volume(
        &self,
        req: Request<ControllerExpandVolumeRequest>,
    ) -> RpcResult<ControllerExpandVolumeResponse> {
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id is required")?;
        let range =
            r.capacity_range.ok_or_else(|| Error::InvalidArgument("capacity_range is required".into()))?;
        let wanted = volume::capacity_for(Some(&range))?;
        let id = VolumeId::from_request(&r.volume_id)?;
        record_volume(&id);
        let _guard = self.locks.lock_rpc(&id.fs_name).await?;
        let capacity = expand::expand(&self.backends, &id, wanted).await?;
        Ok(Response::new(ControllerExpandVolumeResponse {
            capacity_bytes: capacity as i64,
            node_expansion_required: true,
        }))
    }

    async fn controller_get_volume(
        &self,
        _req: Request<ControllerGetVolumeRequest>,
    ) -> RpcResult<ControllerGetVolumeResponse> {
        Err(Error::Unimplemented("ControllerGetVolume is not offered".into()).into())
    }

    async fn controller_modify_volume(
        &self,
        _req: Request<ControllerModifyVolumeRequest>,
    ) -> RpcResult<ControllerModifyVolumeResponse> {
        Err(Error::Unimplemented("ControllerModifyVolume is not offered".into()).into())
    }
}
