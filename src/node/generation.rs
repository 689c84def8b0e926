//! Which metadata database a stage may use. A takeover moves a volume to a new
//! database (its live generation) that the new holder seeds from the old one on its
//! own master; the publish context carries both numbers (`kelp/db`, `kelp/seed`). The
//! seed empties and rewrites a database, so the node takes neither number on the
//! CO's word: both must be what the registry's holder record says for this volume,
//! this node and this epoch, or the stage is refused before anything is touched.

use super::core::NodeCore;
use super::stage::StageRequest;
use crate::error::{Error, Result};
use crate::pinning::Holder;
use crate::volume::VolumeId;

/// What the stage asks for, in the registry's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asked {
    /// The database the mount would use (the context's `kelp/db`, or the id's).
    pub live: u32,
    /// The database to seed `live` from (0: none).
    pub seed: u32,
    /// The writer epoch the context hands this node.
    pub epoch: u64,
}

impl Asked {
    pub fn of(id: &VolumeId, req: &StageRequest) -> Asked {
        Asked { live: if req.db == 0 { id.db } else { req.db }, seed: req.seed, epoch: req.epoch }
    }

    /// Whether the stage uses anything but the database the volume id names.
    pub fn beyond_id(&self, id: &VolumeId) -> bool {
        self.live != id.db || self.seed != 0
    }
}

/// The decision: `Ok` when the registry gives this volume, on `node`, exactly the
/// databases `asked` names (a seed only to the node the takeover granted it, at an
/// epoch it was granted). A number that was once this volume's (the id's, or a
/// retired generation in `retired`) is a stale context (`FailedPrecondition`: publish
/// again); any other number was never this volume's (`InvalidArgument`).
pub fn judge(
    id: &VolumeId,
    node: &str,
    asked: Asked,
    holder: Option<&Holder>,
    retired: &[u32],
) -> Result<()> {
    let ours = |db: u32| db == id.db || retired.contains(&db);
    let refuse = |db: u32, why: String| {
        let msg = format!("the publish context for volume {id} {why}; kelp mounts and seeds only the databases the registry gives a volume");
        if ours(db) {
            Err(Error::FailedPrecondition(format!(
                "{msg} (this context is older than the registry's record: publish the volume again)"
            )))
        } else {
            Err(Error::InvalidArgument(msg))
        }
    };
    let Some(h) = holder else {
        if asked.live != id.db {
            return refuse(asked.live, format!("names metadata database {}, but the registry records no generation of it but database {}", asked.live, id.db));
        }
        if asked.seed != 0 {
            return refuse(
                asked.seed,
                format!(
                    "asks to seed from database {}, but the registry records no takeover of it",
                    asked.seed
                ),
            );
        }
        return Ok(());
    };
    let live = if h.db == 0 { id.db } else { h.db };
    if asked.live != live {
        return refuse(
            asked.live,
            format!("names metadata database {}, but its live generation is database {live}", asked.live),
        );
    }
    if asked.seed != 0 {
        if asked.seed == live {
            return Err(Error::InvalidArgument(format!(
                "the publish context for volume {id} asks to seed database {live} from itself"
            )));
        }
        // An older epoch of the same grant is a CO's earlier context (a publish that
        // was retried): the databases are the same. A newer one was never granted.
        if h.seed != asked.seed || h.node != node || asked.epoch > h.epoch {
            return refuse(asked.seed, format!(
                "asks to seed from database {} at epoch {}, but the registry records {} for node {} at epoch {}",
                asked.seed,
                asked.epoch,
                if h.seed == 0 { "no seed".to_string() } else { format!("a seed from database {}", h.seed) },
                h.node,
                h.epoch
            ));
        }
    }
    Ok(())
}

impl NodeCore {
    /// Checks a stage's databases against the registry (see [`judge`]). A stage of
    /// the id's own database with no seed also goes ahead while the registry cannot be
    /// read: that database is the volume's by its id, and `check_exists` confirms the
    /// file system in it is this volume's.
    pub async fn check_generation(&self, id: &VolumeId, req: &StageRequest) -> Result<()> {
        let asked = Asked::of(id, req);
        let holder = match self.registry.holder(&id.fs_name).await {
            Ok(h) => h,
            Err(e) if asked.beyond_id(id) => return Err(e.into()),
            Err(e) => {
                tracing::debug!(volume_id = %id, error = %e, "cannot read the volume's holder record; staging its own database");
                return Ok(());
            }
        };
        let plain = holder.as_ref().is_none_or(|h| h.db == 0 || h.db == id.db);
        let retired = if plain && !asked.beyond_id(id) {
            Vec::new()
        } else {
            self.registry.generations(&id.fs_name).await?.into_iter().map(|(db, _)| db).collect()
        };
        judge(id, &self.cfg.node_id, asked, holder.as_ref(), &retired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> VolumeId {
        VolumeId::parse("kelp1:5:0a1b2c3d:media:feedbeef").unwrap()
    }

    fn holder(node: &str, epoch: u64, db: u32, seed: u32) -> Holder {
        Holder { node: node.into(), epoch, released: false, wait_fence: 0, db, seed }
    }

    fn asked(live: u32, seed: u32, epoch: u64) -> Asked {
        Asked { live, seed, epoch }
    }

    fn code(r: Result<()>) -> &'static str {
        match r {
            Ok(()) => "ok",
            Err(Error::InvalidArgument(_)) => "invalid",
            Err(Error::FailedPrecondition(_)) => "stale",
            Err(e) => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn a_volume_never_taken_over_stages_only_its_own_database() {
        let id = id();
        assert_eq!(code(judge(&id, "n1", asked(5, 0, 0), None, &[])), "ok");
        assert_eq!(code(judge(&id, "n1", asked(5, 0, 3), Some(&holder("n1", 3, 0, 0)), &[])), "ok");
        // Another volume's database, or one nobody allocated: never this volume's.
        assert_eq!(code(judge(&id, "n1", asked(9, 0, 0), None, &[])), "invalid");
        assert_eq!(code(judge(&id, "n1", asked(1000, 0, 3), Some(&holder("n1", 3, 0, 0)), &[])), "invalid");
        // A seed with no takeover: the forged context that emptied another database.
        assert_eq!(code(judge(&id, "n1", asked(5, 9, 3), Some(&holder("n1", 3, 0, 0)), &[])), "invalid");
        assert_eq!(code(judge(&id, "n1", asked(9, 5, 3), Some(&holder("n1", 3, 0, 0)), &[])), "invalid");
    }

    #[test]
    fn a_takeover_is_staged_as_the_registry_recorded_it() {
        let id = id();
        let taken = holder("n2", 7, 12, 5);
        assert_eq!(code(judge(&id, "n2", asked(12, 5, 7), Some(&taken), &[5])), "ok");
        // The same seed asked by another node, at another epoch, or from elsewhere.
        assert_eq!(code(judge(&id, "n1", asked(12, 5, 7), Some(&taken), &[5])), "stale");
        assert_eq!(code(judge(&id, "n2", asked(12, 5, 8), Some(&taken), &[5])), "stale");
        assert_eq!(code(judge(&id, "n2", asked(12, 5, 6), Some(&taken), &[5])), "ok");
        assert_eq!(code(judge(&id, "n2", asked(12, 8, 7), Some(&taken), &[5])), "invalid");
        assert_eq!(code(judge(&id, "n2", asked(12, 12, 7), Some(&taken), &[5])), "invalid");
        // A reader of the live generation; one with a context from before the takeover.
        assert_eq!(code(judge(&id, "n3", asked(12, 0, 0), Some(&taken), &[5])), "ok");
        assert_eq!(code(judge(&id, "n3", asked(5, 0, 0), Some(&taken), &[5])), "stale");
        // Once the holder let go, its seed is spent.
        let released = holder("n2", 7, 12, 0);
        assert_eq!(code(judge(&id, "n2", asked(12, 5, 7), Some(&released), &[5])), "stale");
        assert_eq!(code(judge(&id, "n2", asked(12, 0, 7), Some(&released), &[5])), "ok");
    }
}
