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
                    "a retired metadata generation holds writes made after the volume was taken over: they are not in the live volume; inspect them with `kelp admin generations` and the README's recovery steps");
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
