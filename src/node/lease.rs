//! This node's lease, and the fence it puts on its own writers when the lease lapses.
//!
//! A single-node writer that may be taken over (`takeover-after`) writes only while
//! this node holds a lease, renewed once a second at the controller's registry server
//! itself, never only at its own master: a partition that cuts this node off from the
//! controller shows here as failed renewals even while the local master still answers.
//! Once the last renewal that worked was sent longer ago than the volume's lease, its
//! juicefs is stopped (SIGSTOP): I/O waits, and no metadata write leaves the node.
//! The controller takes the volume over only after twice the lease and a margin
//! (`pinning::lease_ms`), so the fence is always in place first.
//!
//! While `kelp serve` itself is down nothing renews: each volume's FUSE holder then
//! stops its juicefs at the same deadline (`fuse_fd`), and a restarted driver renews
//! first and settles every leased volume before anything else.
//!
//! When a renewal works again, each fenced volume is looked up in the registry: still
//! held by this node, its juicefs continues (SIGCONT) exactly where it stopped; taken
//! over, its juicefs and FUSE holder are killed, so the task's file system fails
//! every call (ENOTCONN) instead of writing into a generation nobody reads, and only
//! unpublish and unstage remain.

use super::core::NodeCore;
use super::state::Fenced;
use crate::error::{Error, Result};
use crate::volume::VolumeId;
use nix::sys::signal::Signal;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// How often the lease is renewed; the shortest lease survives two lost renewals.
pub const RENEW_EVERY: Duration = Duration::from_secs(1);
/// A renewal that has not answered by then counts as failed (a held connection must
/// not look like a live registry).
const RENEW_TIMEOUT: Duration = Duration::from_millis(900);
/// How often lapsed leases are checked.
const TICK: Duration = Duration::from_millis(200);
/// How long before the lease ends the fence goes up.
const FENCE_EARLY: Duration = Duration::from_millis(500);

impl NodeCore {
    /// Renews the lease once, bounded by [`RENEW_TIMEOUT`].
    pub async fn renew_lease(&self) -> Result<String> {
        let sent = Instant::now();
        let sent_ms = super::fuse_fd::monotonic_ms();
        let renewed = tokio::time::timeout(RENEW_TIMEOUT, self.registry.renew_lease(&self.cfg.node_id)).await;
        let run_id = match renewed {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::Unavailable(format!(
                    "the registry server {} did not answer a lease renewal within {} ms",
                    self.registry.url(),
                    RENEW_TIMEOUT.as_millis()
                )))
            }
        };
        {
            let mut clock = self.lease.lock().expect("lease clock");
            clock.last_ok = Some(sent);
            clock.server = Some(run_id.clone());
        }
        // For the FUSE holders, which fence on their own while this process is down.
        let stamp = super::fuse_fd::lease_file(&self.cfg.state_dir);
        if let Err(e) = std::fs::create_dir_all(stamp.parent().unwrap_or(&self.cfg.state_dir))
            .and_then(|()| super::fuse_fd::write_atomic(&stamp, &sent_ms.to_string()))
        {
            warn!(error = %e, path = ?stamp, "cannot record the lease renewal for the FUSE holders");
        }
        Ok(run_id)
    }

    /// How long ago the last renewal that worked was sent (`None`: none since start).
    pub fn lease_age(&self) -> Option<Duration> {
        self.lease.lock().expect("lease clock").last_ok.map(|t| t.elapsed())
    }

    /// A writer that may be taken over must renew at the very server the controller
    /// judges leases at (`registry`, its run id): a lease renewed anywhere else would
    /// not show a partition, and the controller could take the volume over from a node
    /// that never fenced itself.
    pub(super) async fn check_lease_server(&self, id: &VolumeId, registry: &str) -> Result<()> {
        if registry.is_empty() {
            return Ok(());
        }
        let here = self.renew_lease().await?;
        if here != registry {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} may be taken over (takeover-after), so this node must renew its lease at the controller's registry server, but --registry-url {} is another server (or it restarted since the publish); set --registry-url on every node to the controller's --meta-url",
                self.registry.url()
            )));
        }
        Ok(())
    }

    /// Fences every leased writer whose lease has (nearly) lapsed.
    async fn fence_lapsed(&self) {
        let age = self.lease_age();
        for (id, v) in self.snapshot().volumes {
            if !v.leased() || matches!(v.fenced, Some(Fenced::TakenOver { .. })) {
                continue;
            }
            let lease = Duration::from_millis(v.lease_ms);
            let lapsed = age.is_none_or(|a| a + FENCE_EARLY >= lease);
            if !lapsed {
                continue;
            }
            // Stopped again on every pass: a juicefs started since (a stage racing
            // this) is caught too.
            let stopped = super::procs::signal(&self.cfg.juicefs.daemons(&id.mount_name()), Signal::SIGSTOP);
            if v.fenced.is_none() {
                self.count_fence(&id, "lease_lapsed");
                error!(volume_id = %id, lease_ms = v.lease_ms, since_renewal_ms = age.map(|a| a.as_millis() as u64),
                    processes = stopped, registry = %self.registry.url(),
                    "lease lapsed: this node cannot reach the registry server; the volume's I/O is stopped until the lease is renewed, so no other node's takeover can meet writes from here");
                let _ = self
                    .update(|s| {
                        if let Some(v) = s.volumes.get_mut(&id) {
                            v.fenced = Some(Fenced::Stalled { since_unix: crate::unix_now() });
                        }
                    })
                    .await;
            }
        }
    }

    /// After a renewal that worked: every leased volume is checked against the
    /// registry's holder record. Still ours: a fenced one continues. Another node's: it
    /// is cut off for good.
    async fn settle_after_renewal(&self) {
        for (id, v) in self.snapshot().volumes {
            if !v.leased() || matches!(v.fenced, Some(Fenced::TakenOver { .. })) {
                continue;
            }
            let holder = match self.registry.holder(&id.fs_name).await {
                Ok(h) => h,
                Err(e) => {
                    warn!(volume_id = %id, error = %e, "cannot read the volume's holder; checked again after the next renewal");
                    continue;
                }
            };
            let ours = holder.as_ref().is_some_and(|h| h.node == self.cfg.node_id);
            if ours {
                // Also after a fence by the FUSE holder while this process was down,
                // which the state does not record.
                let n = super::procs::signal(&self.cfg.juicefs.daemons(&id.mount_name()), Signal::SIGCONT);
                if v.fenced.is_some() {
                    info!(volume_id = %id, processes = n, "lease renewed and this node still holds the volume: its I/O continues");
                    let _ = self
                        .update(|s| {
                            if let Some(v) = s.volumes.get_mut(&id) {
                                v.fenced = None;
                            }
                        })
                        .await;
                }
                continue;
            }
            let by = holder.map(|h| h.node).unwrap_or_default();
            if v.targets.is_empty() && v.fenced.is_none() {
                // Idle here (a clean handover, or the task already gone): let go of it
                // as an idle release would; a later publish stages afresh and waits for
                // the new holder's fence.
                let Ok(_guard) = self.locks.lock(&id.to_string(), Duration::from_secs(1)).await else {
                    continue;
                };
                match self.release_volume(&id, &v, false).await {
                    Ok(()) => {
                        info!(volume_id = %id, holder = %by, "another node holds the volume now; released its idle staged mount here")
                    }
                    Err(e) => {
                        warn!(volume_id = %id, error = %e, "cannot release the idle staged mount of a volume another node holds; retried after the next renewal")
                    }
                }
                continue;
            }
            self.cut_off(&id, &by).await;
        }
    }

    fn count_fence(&self, id: &VolumeId, kind: &str) {
        let labels = crate::metrics::EventLabels {
            volume: id.fs_name.clone(),
            volume_id: id.to_string(),
            node: self.cfg.node_id.clone(),
            kind: kind.into(),
        };
        crate::metrics::metrics().fences.get_or_create(&labels).inc();
    }

    /// Ends this node's mount of a volume another node took over: its juicefs and the
    /// FUSE holder are killed, which ends the FUSE connection, so every call of the
    /// task fails with ENOTCONN; nothing is unmounted under the CO's feet.
    async fn cut_off(&self, id: &VolumeId, by: &str) {
        self.count_fence(id, "taken_over");
        let juicefs = super::procs::signal(&self.cfg.juicefs.daemons(&id.mount_name()), Signal::SIGKILL);
        let holders = super::procs::signal(&super::fuse_fd::holders(&self.fuse_socket(id)), Signal::SIGKILL);
        error!(volume_id = %id, taken_over_by = %by, juicefs, holders,
            "the volume was taken over by another node while this node could not renew its lease; its mount here is cut off (the task gets errors); what this node's master accepted after the lease lapsed stays in the retired metadata generation (kelp admin generations)");
        let by = by.to_string();
        let _ = self
            .update(|s| {
                if let Some(v) = s.volumes.get_mut(id) {
                    v.fenced = Some(Fenced::TakenOver { by_node: by });
                }
            })
            .await;
    }
}

/// A fenced volume takes no new stage or publish: `Unavailable` while the lease is
/// being renewed (the CO retries), `FailedPrecondition` once it was taken over.
pub fn refuse_fenced(id: &VolumeId, v: &super::state::StagedVolume) -> Result<()> {
    match &v.fenced {
        Some(Fenced::TakenOver { by_node }) => Err(Error::FailedPrecondition(format!(
            "volume {id} was taken over by node {by_node:?} while this node could not renew its lease; its mount here is cut off: unpublish and unstage it"
        ))),
        Some(Fenced::Stalled { .. }) => Err(Error::Unavailable(format!(
            "volume {id} is fenced on this node: its lease lapsed because the registry server is unreachable; it continues once the lease is renewed"
        ))),
        None => Ok(()),
    }
}

/// Renews this node's lease every [`RENEW_EVERY`] and fences writers whose lease
/// lapsed, forever. The renewals run apart from the fence checks, so a renewal that
/// hangs until its timeout never delays a fence. Renewal failures are logged when
/// they start and when they stop.
pub async fn run(core: Arc<NodeCore>) {
    // A restarted driver does not know when its predecessor last renewed: one renewal
    // first, so a healthy node does not stall its writers for a moment at every start;
    // if it fails, every leased writer is fenced at once.
    if core.renew_lease().await.is_ok() {
        core.settle_after_renewal().await;
    }
    let renewer = core.clone();
    tokio::spawn(async move {
        let mut failing = false;
        let mut every = tokio::time::interval(RENEW_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            match renewer.renew_lease().await {
                Ok(_) => {
                    if failing {
                        info!(registry = %renewer.registry.url(), "lease renewals work again");
                        failing = false;
                    }
                    renewer.settle_after_renewal().await;
                }
                Err(e) => {
                    if !failing {
                        warn!(error = %e, "lease renewal failed; leased writers are fenced if it keeps failing");
                        failing = true;
                    }
                }
            }
        }
    });
    loop {
        core.fence_lapsed().await;
        tokio::time::sleep(TICK).await;
    }
}
