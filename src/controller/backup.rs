//! The backup schedule: every controller runs this loop, and the one holding the
//! backup lease in the registry takes each family's backup when it is due, so a Swarm
//! whose every node runs the plugin (and so a controller) backs each family up once.
//! The metrics export each family's last good backup time from the registry.

use super::Backends;
use crate::backup::policy::{self, Retention};
use crate::backup::take;
use crate::meta::{MetaServer, VolumeState};
use crate::volume::Spec;
use std::time::Duration;
use tracing::{debug, warn};

/// `--backup-interval` and retention.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Seconds between two backups of a family; 0 turns backups off.
    pub interval: u64,
    pub keep: Retention,
    /// This controller's name in the lease (its node id).
    pub owner: String,
}

impl Schedule {
    /// How often the loop looks: often enough that a due family waits at most a
    /// quarter of the interval, never more than once every 5 s.
    fn tick(&self) -> Duration {
        Duration::from_secs((self.interval / 4).clamp(5, 60))
    }
}

/// The founders of every live family: clones and restores are backed up with theirs.
pub async fn families(meta: &MetaServer) -> crate::meta::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let names = meta.volume_names_after(after.as_deref(), 500).await?;
        for name in &names {
            let Some(rec) = meta.volume(name).await? else { continue };
            let founder = Spec::of(&rec).ok().is_some_and(|s| s.family.is_none());
            if founder && matches!(rec.state, VolumeState::Ready | VolumeState::Retired) {
                out.push(name.clone());
            }
        }
        if names.len() < 500 {
            return Ok(out);
        }
        after = names.last().cloned();
    }
}

/// One round: if this controller holds the lease, back up every family that is due.
pub async fn round(b: &Backends, s: &Schedule) -> crate::backup::Result<usize> {
    if !b.meta.backup_lease(&s.owner, 3 * s.tick()).await? {
        debug!("another controller holds the backup lease");
        return Ok(0);
    }
    let last: std::collections::HashMap<String, i64> =
        b.meta.last_backups().await?.into_iter().map(|(fs, r)| (fs, r.taken_unix)).collect();
    let mut taken = 0;
    for fs in families(&b.meta).await? {
        if !policy::due(last.get(&fs).copied(), crate::unix_now(), s.interval) {
            continue;
        }
        match take::take(&b.meta, &b.filer, &fs, s.keep).await {
            Ok(_) => taken += 1,
            Err(e @ crate::backup::Error::NotFound(_)) => debug!(volume = %fs, error = %e, "no backup"),
            Err(e) => warn!(volume = %fs, error = %e, "metadata backup failed; retrying on the next round"),
        }
    }
    Ok(taken)
}

/// Runs [`round`] forever; nothing when backups are off.
pub async fn run(b: Backends, s: Schedule) {
    if s.interval == 0 {
        return;
    }
    let mut failing = false;
    loop {
        match round(&b, &s).await {
            Ok(_) => failing = false,
            Err(e) if !failing => {
                warn!(error = %e, "cannot run the backup schedule; retrying");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(s.tick()).await;
    }
}

/// The scrape's part about backups: each live family's last good backup time (0 when
/// it has none yet) and the schedule, so the alert needs no copy of the interval.
pub fn metrics_source(b: Backends, interval: u64) -> crate::metrics::Source {
    use prometheus_client::encoding::EncodeLabelSet;
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Family {
        volume: String,
    }
    std::sync::Arc::new(move || {
        let b = b.clone();
        Box::pin(async move {
            let mut snap = crate::metrics::Snapshot::default();
            let every =
                prometheus_client::metrics::gauge::Gauge::<f64, std::sync::atomic::AtomicU64>::default();
            every.set(interval as f64);
            snap.registry.register(
                "backup_interval_seconds",
                "Seconds between two metadata backups of a volume family (--backup-interval; 0: off)",
                every,
            );
            if interval > 0 {
                let last = snap.family::<Family>(
                    "volume_last_backup_timestamp_seconds",
                    "Unix time of the last good metadata backup of the volume family (0: none yet)",
                );
                let records: std::collections::HashMap<String, i64> = b
                    .meta
                    .last_backups()
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(fs, r)| (fs, r.taken_unix))
                    .collect();
                for fs in families(&b.meta).await.unwrap_or_default() {
                    let t = records.get(&fs).copied().unwrap_or(0);
                    last.get_or_create(&Family { volume: fs }).set(t as f64);
                }
            }
            crate::metrics::encode(&snap.registry)
        })
    })
}
