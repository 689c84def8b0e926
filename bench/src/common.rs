//! What the measurements share: a volume created, staged and published the way Swarm
//! does it (and released again), fsync'd writes of the kinds applications make, the
//! metadata URL of one database, a scrape of kelp's metrics, and the median.

use crate::args::BenchArgs;
use crate::error::Result;
use kelp::proto::csi::{
    controller_client::ControllerClient, node_client::NodeClient, volume_capability::access_mode::Mode,
    ControllerPublishVolumeRequest, ControllerUnpublishVolumeRequest, CreateVolumeRequest,
    DeleteVolumeRequest, NodeGetInfoRequest, NodePublishVolumeRequest, NodeStageVolumeRequest,
    NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest, VolumeCapability,
};
use kelp::volume::{create_request, mount_capability};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tonic::transport::Channel;

pub(crate) fn cap() -> VolumeCapability {
    mount_capability(Mode::SingleNodeWriter)
}

pub(crate) fn create(name: String, gib: i64) -> CreateVolumeRequest {
    create_request(&name, gib << 30, Mode::SingleNodeWriter)
}

pub(crate) fn meta_db(meta: &str, db: u32) -> String {
    format!("{}/{db}", meta.trim_end_matches('/'))
}

/// Writes `mib` MiB to `path` in 1 MiB blocks and fsyncs it; MiB/s.
pub(crate) fn write_synced(path: &Path, mib: usize) -> f64 {
    let block = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut f = std::fs::File::create(path).expect("create");
    for _ in 0..mib {
        f.write_all(&block).expect("write");
    }
    f.sync_all().expect("fsync");
    mib as f64 / t.elapsed().as_secs_f64()
}

/// Creates `n` small files, each written and fsync'd as a careful application does;
/// files per second.
pub(crate) fn synced_small_files(dir: &Path, n: usize) -> f64 {
    let d = dir.join("synced");
    std::fs::create_dir_all(&d).expect("mkdir");
    let t = Instant::now();
    for i in 0..n {
        let mut f = std::fs::File::create(d.join(format!("f{i}"))).expect("create small file");
        f.write_all(&[0x42; 4096]).expect("write small file");
        f.sync_all().expect("fsync small file");
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&d);
    rate
}

/// One volume created, staged and published for a benchmark.
pub(crate) struct Published {
    pub(crate) id: String,
    pub(crate) staging: PathBuf,
    pub(crate) target: PathBuf,
    pub(crate) node_id: String,
}

pub(crate) async fn publish_one(
    a: &BenchArgs,
    ctl: &mut ControllerClient<Channel>,
    node: &mut NodeClient<Channel>,
    name: &str,
    params: &[(&str, &str)],
) -> Result<Published> {
    let mut req = create(name.into(), 4);
    req.parameters = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let v = ctl.create_volume(req).await?.into_inner().volume.unwrap_or_default();
    let node_id = node.node_get_info(NodeGetInfoRequest {}).await?.into_inner().node_id;
    let p = Published {
        id: v.volume_id,
        staging: a.dir.join(format!("{name}-staged")),
        target: a.dir.join(name),
        node_id,
    };
    // The sequence Swarm sends: the controller's publish decides the master and makes
    // this node the volume's single-node writer (its publish context says so).
    let publish_context = ctl
        .controller_publish_volume(ControllerPublishVolumeRequest {
            volume_id: p.id.clone(),
            node_id: p.node_id.clone(),
            volume_capability: Some(cap()),
            ..Default::default()
        })
        .await?
        .into_inner()
        .publish_context;
    node.node_stage_volume(NodeStageVolumeRequest {
        volume_id: p.id.clone(),
        staging_target_path: p.staging.display().to_string(),
        volume_capability: Some(cap()),
        publish_context: publish_context.clone(),
        ..Default::default()
    })
    .await?;
    node.node_publish_volume(NodePublishVolumeRequest {
        volume_id: p.id.clone(),
        staging_target_path: p.staging.display().to_string(),
        target_path: p.target.display().to_string(),
        volume_capability: Some(cap()),
        publish_context,
        ..Default::default()
    })
    .await?;
    Ok(p)
}

pub(crate) async fn release_one(
    ctl: &mut ControllerClient<Channel>,
    node: &mut NodeClient<Channel>,
    p: Published,
) -> Result<()> {
    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: p.id.clone(),
        target_path: p.target.display().to_string(),
    })
    .await?;
    node.node_unstage_volume(NodeUnstageVolumeRequest {
        volume_id: p.id.clone(),
        staging_target_path: p.staging.display().to_string(),
    })
    .await?;
    ctl.controller_unpublish_volume(ControllerUnpublishVolumeRequest {
        volume_id: p.id.clone(),
        node_id: p.node_id.clone(),
        secrets: Default::default(),
    })
    .await?;
    ctl.delete_volume(DeleteVolumeRequest { volume_id: p.id, secrets: Default::default() }).await?;
    Ok(())
}

/// One scrape of kelp's /metrics at `addr` (host:port), the response as text.
pub(crate) fn get_metrics(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    let mut body = Vec::new();
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    s.read_to_end(&mut body).ok()?;
    Some(String::from_utf8_lossy(&body).into_owned())
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}
