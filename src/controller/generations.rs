//! Watching retired metadata generations for a tail. A takeover retires the old
//! holder's generation with a digest of every key (`meta::generation`). What the old
//! holder's master accepted after that reaches the controller's master only when a
//! partition heals, by replication, and only into the retired database: this loop
//! counts it there and reports every change, so an operator learns which volume has
//! writes that no mount shows, and how many.

use super::Backends;
use std::time::Duration;
use tracing::{error, info, warn};

/// How often the retired generations are counted.
const EVERY: Duration = Duration::from_secs(10);

/// Counts every retired generation's tail once; returns how many have one.
pub async fn check(b: &Backends) -> crate::meta::Result<usize> {
    let mut with_tail = 0;
    for fs_name in b.meta.volumes_with_generations().await? {
        for (db, mut g) in b.meta.generations(&fs_name).await? {
            let Some(tail) = b.meta.generation_tail(db).await? else { continue };
            let keys = tail.keys();
            if keys > 0 {
                with_tail += 1;
            }
            if g.tail_keys == Some(keys) {
                continue;
            }
            if keys > 0 {
                error!(volume = %fs_name, retired_db = db, keys, changed = tail.changed, deleted = tail.gone,
                    from_node = %g.from_node, taken_over_by = %g.to_node, epoch = g.epoch,
                    "a retired metadata generation holds writes made after the volume was taken over: they are not in the live volume; inspect them with `kelp admin generations` and the recovery steps in docs/pinning.md (After a partition)");
            } else if g.tail_keys.is_none() {
                info!(volume = %fs_name, retired_db = db, "retired metadata generation holds nothing written after the takeover");
            }
            g.tail_keys = Some(keys);
            b.meta.set_generation(&fs_name, db, &g).await?;
        }
    }
    Ok(with_tail)
}

/// Runs [`check`] forever.
pub async fn watch(b: Backends) {
    let mut failing = false;
    loop {
        match check(&b).await {
            Ok(_) => failing = false,
            Err(e) if !failing => {
                warn!(error = %e, "cannot count the tails of retired metadata generations; retrying");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// The controller's part of a scrape: whether its backends answer, and the last
/// count of every retired generation's tail.
pub fn metrics_source(b: Backends) -> crate::metrics::Source {
    use prometheus_client::encoding::EncodeLabelSet;
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Backend {
        backend: String,
    }
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Retired {
        volume: String,
        db: String,
        from_node: String,
    }
    std::sync::Arc::new(move || {
        let b = b.clone();
        Box::pin(async move {
            let mut snap = crate::metrics::Snapshot::default();
            let up = snap.family::<Backend>(
                "controller_backend_up",
                "1 when the controller's backend answers a ping within 2 s: metadata (the registry's server), filer",
            );
            let within = Duration::from_secs(2);
            let meta = matches!(tokio::time::timeout(within, b.meta.ping()).await, Ok(Ok(())));
            let filer = matches!(tokio::time::timeout(within, b.filer.ping()).await, Ok(Ok(())));
            up.get_or_create(&Backend { backend: "metadata".into() }).set(meta as u8 as f64);
            up.get_or_create(&Backend { backend: "filer".into() }).set(filer as u8 as f64);
            let tails = snap.family::<Retired>(
                "generation_tail_keys",
                "Keys written to a retired metadata generation after its takeover, as last counted (-1: not yet)",
            );
            if let Ok(names) = b.meta.volumes_with_generations().await {
                for fs_name in names {
                    for (db, g) in b.meta.generations(&fs_name).await.unwrap_or_default() {
                        let labels =
                            Retired { volume: fs_name.clone(), db: db.to_string(), from_node: g.from_node };
                        tails.get_or_create(&labels).set(g.tail_keys.map(|k| k as f64).unwrap_or(-1.0));
                    }
                }
            }
            crate::metrics::encode(&snap.registry)
        })
    })
}
