//! Keeps this node's mounts as the state file says they should be: on start and then
//! periodically it remounts dead JuiceFS mounts at the same path and re-binds their
//! targets (so tasks get working I/O back without a new publish), ends the juicefs
//! of a stuck or wedged mount so a new one serves its held connection, forgets volumes
//! that were deleted, and releases staged volumes nothing has published for a while,
//! because Swarm may never send NodeUnstageVolume.

use super::core::{NodeCore, PROBE_TIMEOUT};
use super::fuse_fd;
use super::mount::{self, Health};
use super::stage::StageRequest;
use super::state::StagedVolume;
use super::wedge::{self, Verdict};
use crate::error::{Error, Result};
use crate::meta::Finding;
use crate::volume::VolumeId;
use nix::sys::signal::Signal;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// The longest a failing volume waits between repair attempts.
const RETRY_CAP: Duration = Duration::from_secs(60);

impl NodeCore {
    /// Reaps a juicefs this driver started and wakes repair when it ends: an unmount
    /// ends it on purpose (repair then finds nothing to do), a crash leaves a held
    /// mount stalled until repair starts the next daemon. Daemons adopted after a
    /// driver restart are not this driver's children; repair finds them within its
    /// interval. A new daemon's silence is counted from nothing: the stuck watch
    /// judges a daemon, not a volume.
    pub(super) fn watch_daemon(&self, id: &VolumeId, daemon: super::jfs::Daemon) {
        self.stuck.lock().expect("stuck daemons").remove(id);
        let ended = self.daemon_ended.clone();
        tokio::spawn(async move {
            daemon.exited().await;
            ended.notify_one();
        });
    }

    /// Whether the volume's juicefs has not answered even its own `.config` (served
    /// without the metadata server) for `--stuck-daemon-after`: then the daemon is
    /// stuck itself, not waiting for a slow master, and only a new one helps.
    /// juicefs's own supervisor, which kelp does not run, kept the same watch.
    async fn daemon_stuck(&self, id: &VolumeId, staging: &std::path::Path) -> bool {
        let answers = !matches!(mount::health(&staging.join(".config"), PROBE_TIMEOUT).await, Health::Hung);
        let mut stuck = self.stuck.lock().expect("stuck daemons");
        if answers {
            stuck.remove(id);
            return false;
        }
        let since = *stuck.entry(id.clone()).or_insert_with(Instant::now);
        warn!(volume_id = %id, stuck_for_secs = since.elapsed().as_secs(), "juicefs does not answer its own files");
        since.elapsed() >= self.cfg.stuck_daemon_after
    }

    /// Whether the volume's mount is wedged ([`wedge`]): probes its master, the
    /// kernel's count of requests waiting on its FUSE connection and, only when
    /// both say there may be one, juicefs's own counters.
    async fn wedge_verdict(&self, id: &VolumeId, v: &StagedVolume, master: bool) -> Verdict {
        let Some(bound) = self.cfg.wedged_after else { return Verdict::Fine };
        // Without its master a mount is judged without probing it: a stall, not a
        // wedge, and a stat of a stalled mount would only wait out its timeout.
        let health = match master {
            true => self.juicefs_health(id, &v.staging_path).await,
            false => Health::Hung,
        };
        if !matches!(health, Health::Hung | Health::Alive { root: true }) {
            self.wedges.lock().expect("wedge watch").judge(id, wedge::Seen::gone(), bound);
            return Verdict::Fine;
        }
        let waiting = match (master, mount::mount_at(&v.staging_path)) {
            (true, Some(m)) => wedge::waiting(Path::new(wedge::FUSECTL), &m.device),
            _ => None,
        };
        let progress = match (waiting, self.cfg.juicefs.metrics_addr(&id.mount_name())) {
            (Some(w), Some(addr)) if w > 0 => {
                crate::metrics::scrape_text(addr, PROBE_TIMEOUT).await.and_then(|t| wedge::progress(&t))
            }
            _ => None,
        };
        let seen = wedge::Seen { master, root: health != Health::Hung, waiting, progress };
        let verdict = self.wedges.lock().expect("wedge watch").judge(id, seen, bound);
        if let Verdict::Silent(d) = verdict {
            if d >= self.cfg.repair_interval {
                warn!(volume_id = %id, silent_secs = d.as_secs(), ?seen, "mount silent while its metadata master answers");
            }
        }
        verdict
    }

    /// Ends the volume's juicefs when its mount is wedged (`wedge`), so that a new
    /// one answers the stuck requests on the held FUSE connection. Judged on every
    /// repair pass, also for a volume whose upkeep is backing off after failures
    /// (which a metadata outage causes): the bound counts from the master's return.
    /// Returns whether it acted.
    pub async fn heal_wedge(&self, id: &VolumeId) -> bool {
        let Some(v) = self.staged(id) else { return false };
        // Healed only on a held connection: without its holder, ending juicefs would
        // end the kernel mount, and tasks in other mount namespaces would keep a dead one.
        if v.fenced.is_some()
            || self.cfg.wedged_after.is_none()
            || !self.cfg.juicefs.daemon_running(&id.mount_name())
            || !fuse_fd::holder_running(&self.fuse_socket(id))
        {
            return false;
        }
        let master = match self.server_for(v.home.as_deref()) {
            Ok(server) => matches!(tokio::time::timeout(PROBE_TIMEOUT, server.ping()).await, Ok(Ok(()))),
            Err(_) => false,
        };
        let Verdict::Wedged(silent) = self.wedge_verdict(id, &v, master).await else { return false };
        let ended = super::procs::signal(&self.cfg.juicefs.daemons(&id.mount_name()), Signal::SIGKILL);
        error!(
            volume_id = %id,
            path = ?v.staging_path,
            silent_secs = silent.as_secs(),
            ended,
            "mount wedged: its metadata master answers, but it has answered nothing for --wedged-after; ended its juicefs, a new one answers the stuck requests (EINTR) on the held FUSE connection"
        );
        let labels = crate::metrics::VolumeLabels::new(id, &self.cfg.node_id, v.home.is_some());
        crate::metrics::metrics().wedges_healed.get_or_create(&labels).inc();
        true
    }

    /// Brings a staged volume back to health: remounts a dead or missing JuiceFS
    /// mount at the same path and re-binds every target. Returns whether it acted.
    pub async fn repair(&self, id: &VolumeId) -> Result<bool> {
        let Some(v) = self.staged(id) else { return Ok(false) };
        if v.fenced.is_some() {
            // Stopped or cut off on purpose (`lease`): bringing it back would let this
            // node write without a lease.
            return Ok(false);
        }
        let mut acted = false;
        let daemon = self.cfg.juicefs.daemon_running(&id.mount_name());
        let held = fuse_fd::holder_running(&self.fuse_socket(id));
        // Without a daemon a held mount does not answer; probing it would only wait.
        let health = if !daemon && held && mount::mount_at(&v.staging_path).is_some() {
            Health::Hung
        } else {
            self.juicefs_health(id, &v.staging_path).await
        };
        if health == Health::Hung && daemon {
            if self.daemon_stuck(id, &v.staging_path).await {
                let ended =
                    super::procs::signal(&self.cfg.juicefs.daemons(&id.mount_name()), Signal::SIGKILL);
                error!(
                    volume_id = %id,
                    path = ?v.staging_path,
                    stuck_secs = self.cfg.stuck_daemon_after.as_secs(),
                    ended,
                    "juicefs has not answered even its own files; ended it, a new one resumes the held FUSE connection"
                );
                return Ok(true);
            }
            // A slow metadata server makes a mount slow, not dead; remounting would
            // only break the tasks using it.
            warn!(volume_id = %id, path = ?v.staging_path, "staged mount does not answer; leaving it");
            return Ok(false);
        }
        self.stuck.lock().expect("stuck daemons").remove(id);
        if health != (Health::Alive { root: true }) {
            if held && !daemon && health != Health::Missing {
                warn!(volume_id = %id, path = ?v.staging_path, "juicefs of the staged mount is gone; starting a new one on the held FUSE connection");
            } else {
                warn!(volume_id = %id, path = ?v.staging_path, "staged mount is dead or gone; remounting");
                for t in v.targets.keys() {
                    mount::unmount_juicefs(t, &id.fs_name)?;
                }
            }
            self.stage(id, &StageRequest::again(&v)).await?;
            let labels = crate::metrics::VolumeLabels::new(id, &self.cfg.node_id, v.home.is_some());
            crate::metrics::metrics().remounts.get_or_create(&labels).inc();
            acted = true;
        }
        let mut created = Vec::new();
        for (t, &ro) in &v.targets {
            let bound = mount::mount_at(t).is_some_and(|m| m.is_juicefs_of(&id.fs_name))
                && mount::health(t, PROBE_TIMEOUT).await == (Health::Alive { root: true });
            if bound {
                continue;
            }
            // Never onto something kelp did not mount, and never on top of a mount.
            let rebound = mount::unmount_juicefs(t, &id.fs_name)
                .map_err(Error::from)
                .and_then(|()| self.bind_target(id, &v, t, ro));
            match rebound {
                Ok(dirs) => {
                    info!(volume_id = %id, target = ?t, "target re-bound");
                    created.extend(dirs);
                    acted = true;
                }
                Err(e) => {
                    error!(volume_id = %id, target = ?t, error = %e, "cannot re-bind the target; leaving it as it is")
                }
            }
        }
        if !created.is_empty() {
            self.update(|s| {
                if let Some(v) = s.volumes.get_mut(id) {
                    v.created.extend(created);
                }
            })
            .await?;
        }
        Ok(acted)
    }

    /// Forgets a volume whose file system no longer exists, unmounting what is left.
    pub async fn drop_vanished(&self, id: &VolumeId) -> Result<bool> {
        let Some(v) = self.staged(id) else { return Ok(false) };
        match self.check_exists(&self.server_for(v.home.as_deref())?, id, v.live_db(id)).await {
            Err(Error::NotFound(_)) => {
                warn!(volume_id = %id, "volume no longer exists; removing its mounts");
                self.release_volume(id, &v, false).await?;
                Ok(true)
            }
            Err(e) => Err(e),
            Ok(()) => Ok(false),
        }
    }
}

/// A volume whose repair keeps failing: tried again on a growing schedule, not on
/// every pass, and logged when it starts failing and when it recovers, not each time.
struct Streak {
    failures: u32,
    next: Instant,
    pauses: Box<dyn Iterator<Item = Duration> + Send>,
}

/// The failure streaks of the volumes whose upkeep currently fails.
#[derive(Default)]
pub struct Retries(HashMap<VolumeId, Streak>);

impl Retries {
    fn due(&self, id: &VolumeId) -> bool {
        self.0.get(id).is_none_or(|s| Instant::now() >= s.next)
    }

    fn failed(&mut self, id: &VolumeId, first_every: Duration, what: &str, e: &Error) {
        let streak = self.0.entry(id.clone()).or_insert_with(|| Streak {
            failures: 0,
            next: Instant::now(),
            pauses: Box::new(crate::wait::backoff(first_every, RETRY_CAP.max(first_every))),
        });
        streak.failures += 1;
        let pause = streak.pauses.next().unwrap_or(RETRY_CAP);
        streak.next = Instant::now() + pause;
        if streak.failures == 1 {
            warn!(volume_id = %id, error = %e, retry_in = ?pause, "{what} failed; retrying with backoff (logged again when it recovers)");
        } else {
            tracing::debug!(volume_id = %id, error = %e, failures = streak.failures, retry_in = ?pause, "{what} still failing");
        }
    }

    fn succeeded(&mut self, id: &VolumeId) {
        if let Some(s) = self.0.remove(id) {
            info!(volume_id = %id, failures = s.failures, "volume upkeep works again");
        }
    }
}

/// One pass over every staged volume; volumes in a failure streak are skipped until
/// their next try is due.
pub async fn tick(core: &NodeCore, retries: &mut Retries) {
    crate::failpoint::panic_once("repair:tick");
    // Leftovers are judged only while no volume operation runs (one may be making
    // a mount, or opening a log, it has not recorded yet); the next pass tries again.
    let all = core.locks.try_all();
    if let Some(all) = &all {
        core.reap(all).await;
    }
    let (dir, cap) = (core.cfg.juicefs.log_dir.clone(), core.cfg.log_cap);
    let staged = core.snapshot().volumes.keys().map(VolumeId::mount_name).collect();
    let keep = if all.is_some() { super::logs::KEEP_UNSTAGED } else { Duration::MAX };
    if let Ok(rotated) =
        tokio::task::spawn_blocking(move || super::logs::bound(&dir, cap, &staged, keep)).await
    {
        for (log, bytes) in rotated {
            info!(log = ?log, bytes, "log over its cap: kept as .1 and started afresh");
        }
    }
    // The volumes' own upkeep takes their locks.
    drop(all);
    let volumes = core.snapshot().volumes;
    retries.0.retain(|id, _| volumes.contains_key(id));
    for (id, v) in volumes {
        // A volume busy with an RPC is looked at on the next pass.
        let Ok(_guard) = core.locks.lock(&id.to_string(), Duration::from_millis(50)).await else { continue };
        let Some(v) = core.staged(&id).filter(|now| now.staging_path == v.staging_path) else { continue };
        if matches!(v.fenced, Some(super::state::Fenced::Stalled { .. })) {
            // Its juicefs is stopped: anything that reads the mount would hang.
            continue;
        }
        if core.heal_wedge(&id).await || !retries.due(&id) {
            continue;
        }
        match core.drop_vanished(&id).await {
            Ok(true) => {
                retries.succeeded(&id);
                continue;
            }
            Ok(false) => {}
            Err(e) => {
                retries.failed(&id, core.cfg.repair_interval, "checking whether the volume still exists", &e);
                continue;
            }
        }
        let idle_for = v.idle_since.map(|t| crate::unix_now() - t).unwrap_or(0);
        if v.targets.is_empty() && idle_for >= core.cfg.idle_release.as_secs() as i64 {
            info!(
                volume_id = %id,
                idle_secs = idle_for,
                "releasing staged volume: nothing has published it for the idle period (Swarm may not send NodeUnstageVolume)"
            );
            match core.unstage(&id, &v.staging_path).await {
                Ok(()) => retries.succeeded(&id),
                Err(e) => retries.failed(&id, core.cfg.repair_interval, "release", &e),
            }
            continue;
        }
        match core.repair(&id).await {
            Ok(_) => retries.succeeded(&id),
            Err(e) => retries.failed(&id, core.cfg.repair_interval, "repair", &e),
        }
    }
}

/// Announces the node (its heartbeat, which decides when a silent node's volumes may
/// be taken over) and runs [`tick`], forever, at the configured interval. The
/// heartbeat is logged when it starts failing and when it works again; each problem
/// with the master's configuration when it appears and when it is gone.
pub async fn run(core: Arc<NodeCore>) {
    let mut heartbeat_ok: Option<bool> = None;
    let mut known: Vec<Finding> = Vec::new();
    let mut retries = Retries::default();
    if core.cfg.wedged_after.is_some() && !wedge::ensure_fusectl() {
        warn!(path = wedge::FUSECTL, "cannot read the kernel's FUSE connections (fusectl); a wedged mount is recognised only when its root does not answer a stat");
    }
    loop {
        match core.announce().await {
            Ok(found) => {
                if heartbeat_ok == Some(false) {
                    info!("node heartbeat works again");
                }
                heartbeat_ok = Some(true);
                for f in found.iter().filter(|f| !known.contains(f)) {
                    warn!(setting = f.setting, server = %core.meta.url(), "metadata master: {}", f.problem);
                }
                for f in known.iter().filter(|f| !found.contains(f)) {
                    info!(setting = f.setting, server = %core.meta.url(), "metadata master: {} is fixed", f.setting);
                }
                known = found;
            }
            Err(e) => {
                match heartbeat_ok {
                    None => {
                        warn!(error = %e, "cannot announce this node yet; retrying every repair interval")
                    }
                    Some(true) => warn!(error = %e, "node heartbeat failed; retrying every repair interval"),
                    Some(false) => tracing::debug!(error = %e, "node heartbeat still failing"),
                }
                heartbeat_ok = Some(false);
            }
        }
        tick(&core, &mut retries).await;
        core.report_local_mounts().await;
        tokio::select! {
            _ = tokio::time::sleep(core.cfg.repair_interval) => {}
            _ = core.daemon_ended.notified() => {
                info!("a juicefs daemon ended; checking the mounts now");
            }
        }
    }
}
