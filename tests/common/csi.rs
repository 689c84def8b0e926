//! CSI clients of a running kelp, and the requests tests send most.

pub use kelp::proto::csi::*;
use std::collections::HashMap;
use tonic::transport::Channel;
use volume_capability::{access_mode::Mode, AccessMode, AccessType, BlockVolume};

#[derive(Clone)]
pub struct Clients {
    pub ctl: controller_client::ControllerClient<Channel>,
    pub node: node_client::NodeClient<Channel>,
    pub identity: identity_client::IdentityClient<Channel>,
}

pub async fn connect(endpoint: &str) -> Clients {
    try_connect(endpoint).await.expect("connect to kelp")
}

/// Like [`connect`], for a kelp that may be restarting.
pub async fn try_connect(endpoint: &str) -> Option<Clients> {
    let ch = kelp::endpoint::connect(endpoint).await.ok()?;
    Some(Clients {
        ctl: controller_client::ControllerClient::new(ch.clone()),
        node: node_client::NodeClient::new(ch.clone()),
        identity: identity_client::IdentityClient::new(ch),
    })
}

pub fn mount_cap(mode: Mode) -> VolumeCapability {
    kelp::volume::mount_capability(mode)
}

pub fn block_cap() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
    }
}

pub fn create_req(name: &str, bytes: i64) -> CreateVolumeRequest {
    kelp::volume::create_request(name, bytes, Mode::MultiNodeMultiWriter)
}

impl Clients {
    pub async fn create(&mut self, name: &str, bytes: i64) -> Result<Volume, tonic::Status> {
        Ok(self.ctl.create_volume(create_req(name, bytes)).await?.into_inner().volume.unwrap())
    }

    pub async fn delete(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.ctl
            .delete_volume(DeleteVolumeRequest { volume_id: id.into(), secrets: HashMap::new() })
            .await
            .map(|_| ())
    }

    pub async fn stage(&mut self, id: &str, staging: &str, mode: Mode) -> Result<(), tonic::Status> {
        self.node
            .node_stage_volume(NodeStageVolumeRequest {
                volume_id: id.into(),
                staging_target_path: staging.into(),
                volume_capability: Some(mount_cap(mode)),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    pub async fn publish(
        &mut self,
        id: &str,
        staging: &str,
        target: &str,
        mode: Mode,
        readonly: bool,
    ) -> Result<(), tonic::Status> {
        self.node
            .node_publish_volume(NodePublishVolumeRequest {
                volume_id: id.into(),
                staging_target_path: staging.into(),
                target_path: target.into(),
                volume_capability: Some(mount_cap(mode)),
                readonly,
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    pub async fn unpublish(&mut self, id: &str, target: &str) -> Result<(), tonic::Status> {
        self.node
            .node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: id.into(),
                target_path: target.into(),
            })
            .await
            .map(|_| ())
    }

    pub async fn unstage(&mut self, id: &str, staging: &str) -> Result<(), tonic::Status> {
        self.node
            .node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: id.into(),
                staging_target_path: staging.into(),
            })
            .await
            .map(|_| ())
    }
}
