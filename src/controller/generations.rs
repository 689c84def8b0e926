//! Watching retired metadata generations for a tail. A takeover retires the old
//! holder's generation with a digest of every key's content (`meta::generation`).
//! What the old holder's master accepted after that is its tail: it lives in the
//! retired database on that master, and reaches the others only by replication once a
//! partition heals. So the tail is counted on the old holder's own master and only
//! while it can be read (never on the controller's, which may not have it yet), keys
//! of files apart from counters and sessions, until two counts in a row agree; then
//! it is reported once, naming the files, so that an operator learns which volume has
//! writes that no mount shows, and where.

use super::Backends;
use crate::meta::{Generation, MetaServer, Tail};
use std::time::Duration;
use tracing::{error, info, warn};

/// How often the retired generations are counted.
const EVERY: Duration = Duration::from_secs(10);
/// A master that does not answer a ping within this is not counted on this round.
const REACH: Duration = Duration::from_secs(2);

/// Counts every unsettled retired generation's tail once; returns how many have one.
pub async fn check(b: &Backends) -> crate::meta::Result<usize> {
    let mut with_tail = 0;
    for fs_name in b.meta.volumes_with_generations().await? {
        for (db, mut g) in b.meta.generations(&fs_name).await? {
            if !g.settled {
                let Some(master) = old_holders_master(b, &g).await? else { continue };
                let tail = master.generation_tail(db).await?;
                if !record(&fs_name, db, &mut g, &master, tail).await? {
                    continue;
                }
                b.meta.set_generation(&fs_name, db, &g).await?;
            }
            with_tail += g.tail_keys.is_some_and(|k| k > 0) as usize;
        }
    }
    Ok(with_tail)
}

/// The master the old holder wrote through, when it can be read now.
async fn old_holders_master(b: &Backends, g: &Generation) -> crate::meta::Result<Option<MetaServer>> {
    let Some(node) = b.meta.node(&g.from_node).await? else { return Ok(None) };
    if node.local_meta.is_empty() {
        return Ok(None);
    }
    let master = b.meta.peer(&node.local_meta)?;
    Ok(matches!(tokio::time::timeout(REACH, master.ping()).await, Ok(Ok(()))).then_some(master))
}

/// Folds one count into the record; returns whether the record changed. The report is
/// logged once, when two counts in a row agree.
async fn record(
    fs_name: &str,
    db: u32,
    g: &mut Generation,
    master: &MetaServer,
    tail: Tail,
) -> crate::meta::Result<bool> {
    let Tail::Counted { changed, gone, other, file_keys } = tail else {
        if tail == Tail::NotComparable && !g.settled {
            warn!(volume = %fs_name, retired_db = db, "this retired generation was recorded by an older kelp, whose digests cannot be compared across masters: its tail is not counted; inspect it with the recovery steps if its old holder wrote after the takeover");
            g.settled = true;
            return Ok(true);
        }
        return Ok(false);
    };
    let keys = changed + gone;
    let counted_on = master.url().public_url();
    let same = g.tail_keys == Some(keys)
        && g.tail_other == Some(other)
        && g.counted_on.as_ref() == Some(&counted_on);
    if !same {
        g.tail_keys = Some(keys);
        g.tail_other = Some(other);
        g.counted_on = Some(counted_on);
        g.tail_files = master.tail_files(db, &file_keys).await?;
        return Ok(true);
    }
    g.settled = true;
    if keys > 0 {
        let files: Vec<String> = g
            .tail_files
            .iter()
            .map(|f| f.path.clone().unwrap_or_else(|| format!("inode {} (no path)", f.inode)))
            .collect();
        error!(volume = %fs_name, retired_db = db, keys, changed, deleted = gone, other, files = ?files,
            from_node = %g.from_node, taken_over_by = %g.to_node, epoch = g.epoch, counted_on = %master.url(),
            "a retired metadata generation holds writes to files made after the volume was taken over: they are not in the live volume; recover them with `kelp admin generations` and the recovery steps in docs/pinning.md (After a partition)");
    } else {
        info!(volume = %fs_name, retired_db = db, other, counted_on = %master.url(),
            "retired metadata generation holds no file written after the takeover");
    }
    Ok(true)
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
                "Keys of files written to a retired metadata generation after its takeover, as last counted on the old holder's master (-1: not yet)",
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
