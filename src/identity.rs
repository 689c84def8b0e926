//! The CSI Identity service. Probe reports ready only when every backend this
//! process depends on answers, and names the one that does not.

use crate::error::Error;
use crate::meta::MetaServer;
use crate::proto::csi::{
    identity_server::Identity, plugin_capability, GetPluginCapabilitiesRequest,
    GetPluginCapabilitiesResponse, GetPluginInfoRequest, GetPluginInfoResponse, PluginCapability,
    ProbeRequest, ProbeResponse,
};
use crate::seaweedfs::Filer;
use tonic::{Request, Response, Status};

/// The driver name Swarm users pass to `docker volume create -d` (via the plugin
/// alias) and that CSI requires to be a domain-like name.
pub const DRIVER_NAME: &str = "csi.kelp.dev";

pub struct IdentityService {
    pub controller: bool,
    pub meta: MetaServer,
    pub filer: Option<Filer>,
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _req: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: DRIVER_NAME.into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _req: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        use plugin_capability::{service::Type, Service, Type as Cap};
        let mut capabilities = Vec::new();
        if self.controller {
            capabilities.push(PluginCapability {
                r#type: Some(Cap::Service(Service { r#type: Type::ControllerService as i32 })),
            });
        }
        Ok(Response::new(GetPluginCapabilitiesResponse { capabilities }))
    }

    async fn probe(&self, _req: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        self.meta.ping().await.map_err(Error::from)?;
        if let Some(f) = &self.filer {
            f.ping().await.map_err(Error::from)?;
        }
        Ok(Response::new(ProbeResponse { ready: Some(true) }))
    }
}
