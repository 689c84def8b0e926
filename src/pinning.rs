//! Which metadata master a node mounts a volume against, and when a single-node
//! writer may take a volume over from another node. The invariant behind every rule
//! here: one master takes a file system's writes at any moment (docs/design.md,
//! section 2).
//!
//! The speed of kelp comes from mounting against the master on the same node; the
//! safety rule is one writing master per volume at any moment. Both are kept by:
//! - readers and single-node writers use their local master;
//! - writers that may run on several nodes at once all use the volume's one home
//!   master, unless the volume's creator opted in to local writes;
//! - a single-node writer moving from node A to node B is fenced: A leaves a fence
//!   value in the volume's database through its own master when it lets go, and B
//!   mounts only once its own master has replicated that value (so everything A
//!   committed before it);
//! - a writer that never let go is taken over only when its lease, renewed at the
//!   controller's own registry server, has lapsed for the volume's `takeover-after`,
//!   twice the lease the holder fences itself at; and the new holder writes a new
//!   metadata generation (a fresh database seeded from its own master), so nothing
//!   the old holder's master accepted afterwards can merge into it.

use crate::proto::csi::volume_capability::access_mode::Mode;

/// What a publish lets a node do with a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Reader,
    /// One node at a time writes (SINGLE_NODE_* modes).
    SingleNodeWriter,
    /// Several nodes may write at once (MULTI_NODE_SINGLE_WRITER, MULTI_NODE_MULTI_WRITER).
    /// Swarm never sets `readonly` and never says which task is "the" writer of a
    /// multi-node single-writer volume, so those count as shared writers too.
    SharedWriter,
}

impl Role {
    /// How the registry records a publication's role (`kelp:pubs:<fs>`; the release
    /// script in `meta::family` matches `single`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::SingleNodeWriter => "single",
            Role::SharedWriter => "shared",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [Role::Reader, Role::SingleNodeWriter, Role::SharedWriter].into_iter().find(|r| r.as_str() == s)
    }
}

pub fn role(mode: Mode, readonly: bool) -> Role {
    match mode {
        _ if readonly => Role::Reader,
        Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly => Role::Reader,
        Mode::MultiNodeSingleWriter | Mode::MultiNodeMultiWriter => Role::SharedWriter,
        Mode::SingleNodeWriter
        | Mode::SingleNodeSingleWriter
        | Mode::SingleNodeMultiWriter
        | Mode::Unknown => Role::SingleNodeWriter,
    }
}

/// Where a node's mount sends its metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Master {
    Local,
    Home,
}

/// The pinning rule. Writers on several nodes always share the home master: two
/// masters handing out inode and chunk numbers for one file system at once give the
/// same numbers twice (measured: docs/pinning.md), so there is no opt-out.
pub fn master_for(role: Role) -> Master {
    match role {
        Role::Reader | Role::SingleNodeWriter => Master::Local,
        Role::SharedWriter => Master::Home,
    }
}

/// The registry's record of which node holds a single-node-writer volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holder {
    pub node: String,
    /// Bumped by every publish; the holder writes it as its fence when it lets go.
    pub epoch: u64,
    /// The holder's publication was withdrawn (ControllerUnpublishVolume).
    pub released: bool,
    /// The fence the holder had to see before mounting.
    pub wait_fence: u64,
    /// The database of the volume's live metadata generation (0: the one in the
    /// volume id). A takeover moves the volume to a new one.
    pub db: u32,
    /// The generation the holder seeds `db` from on its own master before mounting
    /// (0: none; set only from a takeover until the holder lets go).
    pub seed: u32,
}

/// How long a holder's lease lasts for a volume with `takeover-after` = `t` seconds:
/// the holder fences itself once it has not renewed for this long, and the controller
/// waits for `t`, so between the two there is a whole lease more plus
/// [`CLOCK_MARGIN_MS`] for a slow fence and for clocks that run at different rates.
pub fn lease_ms(takeover_after_secs: i64) -> u64 {
    let t = (takeover_after_secs.max(MIN_TAKEOVER_AFTER) as u64) * 1000;
    (t - CLOCK_MARGIN_MS) / 2
}

/// The smallest `takeover-after`: a lease of 3 s survives two lost renewals (one a
/// second) before the holder fences itself.
pub const MIN_TAKEOVER_AFTER: i64 = 8;
/// What `takeover-after` keeps beyond twice the lease.
pub const CLOCK_MARGIN_MS: u64 = 2000;

/// The takeover rule of an old volume made before leases existed, whose
/// `takeover-after` may be below [`MIN_TAKEOVER_AFTER`]: it is raised to it.
pub fn effective_takeover_after(takeover_after: Option<i64>) -> Option<i64> {
    takeover_after.map(|t| t.max(MIN_TAKEOVER_AFTER))
}

/// What a publish to `node` decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handover {
    /// Record `next` and tell the node its epoch and the fence to wait for.
    Grant { next: Holder, took_over: bool },
    /// Another node holds the volume and may not be taken over.
    Refuse { holder: String, lease: Lease },
}

/// What the controller knows of a holder's lease, all on its own server's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// Last renewed at the controller's own server this many ms ago.
    SilentFor(i64),
    /// The holder's lease was not stamped by the controller's server as it runs now
    /// (it restarted, or the holder never renewed there): its silence is counted from
    /// now on.
    NotHere,
}

/// Decides a publish of a single-node-writer volume to `node`. `takeover_after` is
/// the volume's rule for a holder that never let go: `None` never takes over;
/// `Some(s)` takes over once the holder's lease has lapsed for `s` seconds.
/// On a takeover, `next.db` is left 0 for the registry to allocate the new
/// generation, and `next.seed` names the generation it is seeded from.
pub fn handover(current: Option<&Holder>, node: &str, takeover_after: Option<i64>, lease: Lease) -> Handover {
    let Some(h) = current else {
        return Handover::Grant {
            next: Holder { node: node.into(), epoch: 1, ..Holder::default() },
            took_over: false,
        };
    };
    if h.node == node {
        // The same node again (a new task, or a retry): same master and generation,
        // nothing to wait for beyond what it already waited for.
        return Handover::Grant {
            next: Holder { epoch: h.epoch + 1, released: false, ..h.clone() },
            took_over: false,
        };
    }
    if h.released {
        return Handover::Grant {
            next: Holder {
                node: node.into(),
                epoch: h.epoch + 1,
                released: false,
                wait_fence: h.epoch,
                db: h.db,
                seed: 0,
            },
            took_over: false,
        };
    }
    match (effective_takeover_after(takeover_after), lease) {
        (Some(limit), Lease::SilentFor(ms)) if ms >= limit * 1000 => Handover::Grant {
            // The old holder never released, but has fenced itself: no fence to wait
            // for. A new generation keeps whatever its master accepted afterwards out.
            next: Holder {
                node: node.into(),
                epoch: h.epoch + 1,
                released: false,
                wait_fence: 0,
                db: 0,
                seed: h.db,
            },
            took_over: true,
        },
        _ => Handover::Refuse { holder: h.node.clone(), lease },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_rule() {
        assert_eq!(master_for(role(Mode::SingleNodeWriter, false)), Master::Local);
        assert_eq!(master_for(role(Mode::MultiNodeReaderOnly, false)), Master::Local);
        assert_eq!(master_for(role(Mode::MultiNodeMultiWriter, true)), Master::Local);
        assert_eq!(master_for(role(Mode::MultiNodeMultiWriter, false)), Master::Home);
        assert_eq!(master_for(role(Mode::MultiNodeSingleWriter, false)), Master::Home);
    }

    #[test]
    fn clean_handover_waits_for_the_previous_epoch() {
        let quiet = Lease::SilentFor(0);
        let Handover::Grant { next: a, .. } = handover(None, "a", None, quiet) else { panic!() };
        assert_eq!((a.epoch, a.wait_fence), (1, 0));
        let again = handover(Some(&a), "a", None, quiet);
        let Handover::Grant { next: a2, .. } = again else { panic!() };
        assert_eq!(a2.epoch, 2);
        let released = Holder { released: true, ..a2 };
        let Handover::Grant { next: b, took_over } = handover(Some(&released), "b", None, quiet) else {
            panic!()
        };
        assert_eq!((b.node.as_str(), b.epoch, b.wait_fence, took_over), ("b", 3, 2, false));
    }

    #[test]
    fn unreleased_holder_is_refused_or_taken_over_by_rule() {
        let a = Holder { node: "a".into(), epoch: 4, db: 7, ..Holder::default() };
        let silent = |s: i64| Lease::SilentFor(s * 1000);
        assert!(matches!(handover(Some(&a), "b", None, silent(999)), Handover::Refuse { .. }));
        assert!(matches!(handover(Some(&a), "b", Some(60), silent(10)), Handover::Refuse { .. }));
        assert!(matches!(handover(Some(&a), "b", Some(60), Lease::NotHere), Handover::Refuse { .. }));
        let Handover::Grant { next, took_over } = handover(Some(&a), "b", Some(60), silent(61)) else {
            panic!()
        };
        assert!(took_over);
        // A new generation, seeded from the one the old holder wrote.
        assert_eq!((next.epoch, next.wait_fence, next.db, next.seed), (5, 0, 0, 7));
        // Old volumes with a shorter takeover-after wait at least the minimum.
        assert!(matches!(handover(Some(&a), "b", Some(3), silent(5)), Handover::Refuse { .. }));
    }

    #[test]
    fn the_lease_leaves_a_whole_lease_and_a_margin_before_a_takeover() {
        for t in [MIN_TAKEOVER_AFTER, 10, 60, 3600] {
            let l = lease_ms(t);
            assert!(l >= 3000, "{t}: {l}");
            assert!(2 * l + CLOCK_MARGIN_MS <= t as u64 * 1000, "{t}: {l}");
        }
    }
}
