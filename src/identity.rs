//! The CSI Identity service. Probe reports ready only when every backend this
//! process depends on answers. One that does not makes it answer `ready: false`, as
//! the CSI spec has it, not an error: the process itself is fine and will be ready
//! once the backend is. The field has no room for a reason, so the log names the
//! backend, once when it goes down and once when it is back.

use crate::error::Error;
use crate::meta::MetaServer;
use crate::proto::csi::{
    identity_server::Identity, plugin_capability, GetPluginCapabilitiesRequest,
    GetPluginCapabilitiesResponse, GetPluginInfoRequest, GetPluginInfoResponse, PluginCapability,
    ProbeRequest, ProbeResponse,
};
use crate::seaweedfs::Filer;
use std::sync::Mutex;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

/// The driver name Swarm users pass to `docker volume create -d` (via the plugin
/// alias) and that CSI requires to be a domain-like name.
pub const DRIVER_NAME: &str = "csi.kelp.dev";

pub struct IdentityService {
    controller: bool,
    meta: MetaServer,
    filer: Option<Filer>,
    /// What kept the last Probe from being ready, so a change is logged once.
    last_fault: Mutex<Option<String>>,
}

impl IdentityService {
    pub fn new(controller: bool, meta: MetaServer, filer: Option<Filer>) -> IdentityService {
        IdentityService { controller, meta, filer, last_fault: Mutex::new(None) }
    }

    /// Why this process is not ready (the first backend that does not answer), or
    /// nothing when it is; as the error would say it, without secrets.
    async fn fault(&self) -> Option<String> {
        let reason = |e: Error| Status::from(e).message().to_string();
        if let Err(e) = self.meta.ping().await {
            return Some(reason(Error::from(e)));
        }
        if let Some(f) = &self.filer {
            if let Err(e) = f.ping().await {
                return Some(reason(Error::from(e)));
            }
        }
        None
    }

    /// Logs a change of readiness.
    fn note(&self, fault: &Option<String>) {
        let mut last = self.last_fault.lock().expect("last probe fault");
        if *last == *fault {
            return;
        }
        match fault {
            Some(reason) => warn!(reason = %reason, "Probe: not ready"),
            None => info!("Probe: ready again"),
        }
        *last = fault.clone();
    }
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
        let fault = self.fault().await;
        self.note(&fault);
        Ok(Response::new(ProbeResponse { ready: Some(fault.is_none()) }))
    }
}
