//! What a node reports at each scrape (`crate::metrics`): every staged volume's mount
//! health, fence, usage and capacity, the node's lease and heartbeat, whether its
//! masters answer, and each volume's juicefs metrics under the volume's name.

use super::core::{NodeCore, PROBE_TIMEOUT};
use super::mount::{self, Health};
use crate::metrics::{self, Snapshot, VolumeLabels};
use prometheus_client::encoding::EncodeLabelSet;
use std::sync::Arc;
use std::time::Duration;

/// How long a scrape waits for one juicefs daemon's metrics.
const JUICEFS_SCRAPE: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
}

impl NodeCore {
    /// This node's part of a scrape.
    pub async fn scrape(&self) -> String {
        let mut snap = Snapshot::default();
        let healthy = snap.family::<VolumeLabels>(
            "volume_mount_healthy",
            "1 when the staged JuiceFS mount answers at its root, 0 when it is dead, hung, missing or fenced",
        );
        let fenced = snap.family::<VolumeLabels>(
            "volume_fenced",
            "1 while the volume is fenced on this node (its lease lapsed, or it was taken over)",
        );
        let used = snap.family::<VolumeLabels>("volume_used_bytes", "Bytes used, as the mount reports them");
        let capacity = snap.family::<VolumeLabels>("volume_capacity_bytes", "The volume's capacity in bytes");
        let inodes = snap.family::<VolumeLabels>("volume_used_inodes", "Files and directories in the volume");
        let targets =
            snap.family::<VolumeLabels>("volume_targets", "Targets (tasks) the volume is published to");
        let mut juicefs = Vec::new();
        for (id, v) in self.snapshot().volumes {
            let labels = VolumeLabels::new(&id, &self.cfg.node_id, v.home.is_some());
            targets.get_or_create(&labels).set(v.targets.len() as f64);
            fenced.get_or_create(&labels).set(v.fenced.is_some() as u8 as f64);
            if v.fenced.is_some() {
                // A stalled mount would not answer; a cut-off one is dead.
                healthy.get_or_create(&labels).set(0.0);
                continue;
            }
            let alive =
                matches!(mount::health(&v.staging_path, PROBE_TIMEOUT).await, Health::Alive { root: true });
            healthy.get_or_create(&labels).set(alive as u8 as f64);
            if alive {
                if let Some(s) = super::stats::statfs(&v.staging_path).await {
                    let bsize = s.fragment_size();
                    capacity.get_or_create(&labels).set((s.blocks() * bsize) as f64);
                    used.get_or_create(&labels)
                        .set((s.blocks().saturating_sub(s.blocks_free()) * bsize) as f64);
                    inodes.get_or_create(&labels).set(s.files().saturating_sub(s.files_free()) as f64);
                }
            }
            if let Some(addr) = self.cfg.juicefs.metrics_addr(&id.mount_name()) {
                let labels = [("kelp_volume", id.fs_name.as_str()), ("kelp_volume_id", &id.to_string())];
                if let Some(f) = metrics::juicefs_metrics(addr, &labels, JUICEFS_SCRAPE).await {
                    juicefs.push(f);
                }
            }
        }
        let age = |t: Option<Duration>| t.map(|d| d.as_secs_f64()).unwrap_or(-1.0);
        snap.gauge(
            "node_lease_age_seconds",
            "Seconds since this node's last lease renewal that worked was sent (-1: none since start)",
            age(self.lease_age()),
        );
        let heartbeat = self.announced.lock().expect("heartbeat clock").map(|t| t.elapsed());
        snap.gauge(
            "node_heartbeat_age_seconds",
            "Seconds since this node last announced itself in the registry (-1: not yet)",
            age(heartbeat),
        );
        let up = snap.family::<BackendLabels>(
            "backend_up",
            "1 when the backend answers a ping within 2 s: metadata (this node's master), registry",
        );
        for (name, server) in [("metadata", &self.meta), ("registry", &self.registry)] {
            let ok = matches!(tokio::time::timeout(Duration::from_secs(2), server.ping()).await, Ok(Ok(())));
            up.get_or_create(&BackendLabels { backend: name.into() }).set(ok as u8 as f64);
        }
        // Whether a handover may count a fence from this node's master now.
        let whole =
            matches!(tokio::time::timeout(Duration::from_secs(2), self.meta.unsettled()).await, Ok(Ok(None)));
        snap.gauge(
            "meta_whole",
            "1 when this node's master answers, has loaded its data, takes no full copy and has every replication link up (0 while it rejoins after a crash)",
            whole as u8 as f64,
        );
        let mut out = metrics::encode(&snap.registry);
        out.push_str(&metrics::merge(juicefs));
        out
    }

    /// The node's scrape as a metrics source.
    pub fn metrics_source(self: &Arc<Self>) -> metrics::Source {
        let core = self.clone();
        Arc::new(move || {
            let core = core.clone();
            Box::pin(async move { core.scrape().await })
        })
    }
}
