//! Which metadata master a node mounts a volume against, and when a single-node
//! writer may take a volume over from another node (DESIGN.md section 6).
//!
//! The speed of kelp comes from mounting against the master on the same node; the
//! safety rule is one writing master per volume at any moment. Both are kept by:
//! - readers and single-node writers use their local master;
//! - writers that may run on several nodes at once all use the volume's one home
//!   master, unless the volume's creator opted in to local writes;
//! - a single-node writer moving from node A to node B is fenced: A leaves a fence
//!   value in the volume's database through its own master when it lets go, and B
//!   mounts only once its own master has replicated that value (so everything A
//!   committed before it).

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
/// same numbers twice (measured: README, "Pinning"), so there is no opt-out.
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
}

/// What a publish to `node` decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handover {
    /// Record `next` and tell the node its epoch and the fence to wait for.
    Grant { next: Holder, took_over: bool },
    /// Another node holds the volume and may not be taken over.
    Refuse { holder: String, silent_for: Option<i64> },
}

/// Decides a publish of a single-node-writer volume to `node`. `takeover_after` is
/// the volume's rule for a holder that never let go: `None` never takes over;
/// `Some(s)` takes over once the holder's node has been silent for `s` seconds.
/// `holder_silent_for` is how long the holder's node has not announced itself.
pub fn handover(
    current: Option<&Holder>,
    node: &str,
    takeover_after: Option<i64>,
    holder_silent_for: Option<i64>,
) -> Handover {
    let Some(h) = current else {
        return Handover::Grant {
            next: Holder { node: node.into(), epoch: 1, released: false, wait_fence: 0 },
            took_over: false,
        };
    };
    if h.node == node {
        // The same node again (a new task, or a retry): same master, nothing to wait for
        // beyond what it already waited for.
        return Handover::Grant {
            next: Holder { node: node.into(), epoch: h.epoch + 1, released: false, wait_fence: h.wait_fence },
            took_over: false,
        };
    }
    if h.released {
        return Handover::Grant {
            next: Holder { node: node.into(), epoch: h.epoch + 1, released: false, wait_fence: h.epoch },
            took_over: false,
        };
    }
    match (takeover_after, holder_silent_for) {
        (Some(limit), Some(silent)) if silent >= limit => Handover::Grant {
            // The old holder never released: there is no fence to wait for, and what its
            // master had not replicated is lost.
            next: Holder { node: node.into(), epoch: h.epoch + 1, released: false, wait_fence: 0 },
            took_over: true,
        },
        _ => Handover::Refuse { holder: h.node.clone(), silent_for: holder_silent_for },
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
        let Handover::Grant { next: a, .. } = handover(None, "a", None, None) else { panic!() };
        assert_eq!((a.epoch, a.wait_fence), (1, 0));
        let again = handover(Some(&a), "a", None, None);
        let Handover::Grant { next: a2, .. } = again else { panic!() };
        assert_eq!(a2.epoch, 2);
        let released = Holder { released: true, ..a2 };
        let Handover::Grant { next: b, took_over } = handover(Some(&released), "b", None, None) else {
            panic!()
        };
        assert_eq!((b.node.as_str(), b.epoch, b.wait_fence, took_over), ("b", 3, 2, false));
    }

    #[test]
    fn unreleased_holder_is_refused_or_taken_over_by_rule() {
        let a = Holder { node: "a".into(), epoch: 4, released: false, wait_fence: 0 };
        assert!(matches!(handover(Some(&a), "b", None, Some(999)), Handover::Refuse { .. }));
        assert!(matches!(handover(Some(&a), "b", Some(60), Some(10)), Handover::Refuse { .. }));
        let Handover::Grant { next, took_over } = handover(Some(&a), "b", Some(60), Some(61)) else {
            panic!()
        };
        assert!(took_over);
        assert_eq!((next.epoch, next.wait_fence), (5, 0));
    }
}
