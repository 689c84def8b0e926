//! `kelp client`: drive a running kelp over CSI from a shell, the way a CO would.
//! Used by the README's demo and handy for operators checking a node by hand.

use super::Result;
use clap::{Args, Subcommand};
use kelp::endpoint::connect;
use kelp::proto::csi::{
    controller_client::ControllerClient, node_client::NodeClient, volume_capability::access_mode::Mode,
    DeleteVolumeRequest, ListVolumesRequest, NodeGetVolumeStatsRequest, NodePublishVolumeRequest,
    NodeStageVolumeRequest, NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest, VolumeCapability,
};
use kelp::volume::{create_request, mount_capability as mount_capability_for};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Args)]
pub struct ClientArgs {
    /// The driver's endpoint: unix:///path or tcp://host:port.
    #[arg(long, env = "KELP_ENDPOINT", default_value = "unix:///run/kelp/csi.sock")]
    endpoint: String,
    #[command(subcommand)]
    command: ClientCommand,
}

#[derive(Subcommand)]
enum ClientCommand {
    /// CreateVolume; prints the volume id.
    Create {
        name: String,
        /// Capacity in bytes (0: unlimited).
        #[arg(long, default_value_t = 0)]
        size: i64,
        /// Parameter key=value, repeatable (block-size, compression, trash-days, inodes, replication).
        #[arg(long = "opt", value_parser = key_value)]
        opts: Vec<(String, String)>,
    },
    /// DeleteVolume.
    Delete { volume_id: String },
    /// ListVolumes: id, capacity.
    List,
    /// NodeStageVolume then NodePublishVolume at TARGET.
    Mount {
        volume_id: String,
        target: PathBuf,
        /// Staging path (default /var/lib/kelp/staged/<volume id>).
        #[arg(long)]
        staging: Option<PathBuf>,
        #[arg(long)]
        read_only: bool,
    },
    /// NodeUnpublishVolume then NodeUnstageVolume.
    Unmount {
        volume_id: String,
        target: PathBuf,
        #[arg(long)]
        staging: Option<PathBuf>,
    },
    /// NodeGetVolumeStats of a published path.
    Stats { volume_id: String, path: PathBuf },
}

/// A `--opt` value (clap parses it, so its error is clap's plain message).
fn key_value(s: &str) -> std::result::Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

fn staging_for(volume_id: &str, staging: Option<PathBuf>) -> PathBuf {
    staging.unwrap_or_else(|| PathBuf::from("/var/lib/kelp/staged").join(volume_id.replace(':', "_")))
}

fn mount_capability(read_only: bool) -> VolumeCapability {
    mount_capability_for(if read_only { Mode::MultiNodeReaderOnly } else { Mode::MultiNodeMultiWriter })
}

pub async fn run(a: ClientArgs) -> Result<()> {
    let ch = connect(&a.endpoint).await?;
    let mut ctl = ControllerClient::new(ch.clone());
    let mut node = NodeClient::new(ch);
    match a.command {
        ClientCommand::Create { name, size, opts } => {
            let mut req = create_request(&name, size, Mode::MultiNodeMultiWriter);
            req.parameters = opts.into_iter().collect::<HashMap<_, _>>();
            let v = ctl.create_volume(req).await?.into_inner().volume.unwrap_or_default();
            println!("{}", v.volume_id);
        }
        ClientCommand::Delete { volume_id } => {
            ctl.delete_volume(DeleteVolumeRequest { volume_id, secrets: HashMap::new() }).await?;
        }
        ClientCommand::List => {
            let mut token = String::new();
            loop {
                let r = ctl
                    .list_volumes(ListVolumesRequest { max_entries: 100, starting_token: token })
                    .await?
                    .into_inner();
                for e in r.entries {
                    let v = e.volume.unwrap_or_default();
                    println!("{}\t{}", v.volume_id, v.capacity_bytes);
                }
                if r.next_token.is_empty() {
                    break;
                }
                token = r.next_token;
            }
        }
        ClientCommand::Mount { volume_id, target, staging, read_only } => {
            let staging = staging_for(&volume_id, staging);
            node.node_stage_volume(NodeStageVolumeRequest {
                volume_id: volume_id.clone(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(mount_capability(read_only)),
                ..Default::default()
            })
            .await?;
            node.node_publish_volume(NodePublishVolumeRequest {
                volume_id,
                staging_target_path: staging.display().to_string(),
                target_path: target.display().to_string(),
                volume_capability: Some(mount_capability(read_only)),
                readonly: read_only,
                ..Default::default()
            })
            .await?;
        }
        ClientCommand::Unmount { volume_id, target, staging } => {
            let staging = staging_for(&volume_id, staging);
            node.node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: volume_id.clone(),
                target_path: target.display().to_string(),
            })
            .await?;
            node.node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id,
                staging_target_path: staging.display().to_string(),
            })
            .await?;
        }
        ClientCommand::Stats { volume_id, path } => {
            let r = node
                .node_get_volume_stats(NodeGetVolumeStatsRequest {
                    volume_id,
                    volume_path: path.display().to_string(),
                    staging_target_path: String::new(),
                })
                .await?
                .into_inner();
            for u in r.usage {
                println!("unit={} total={} used={} available={}", u.unit, u.total, u.used, u.available);
            }
            if let Some(c) = r.volume_condition {
                println!("abnormal={} message={}", c.abnormal, c.message);
            }
        }
    }
    Ok(())
}
