//! Reaping what this node started and no staged volume owns: a FUSE holder, a juicefs
//! daemon or a JuiceFS mount left behind when `kelp serve` died half-way through an
//! operation, or its state entry was lost. Found, like everything else of kelp's, by
//! the arguments kelp gave them (`procs`): a holder by its socket below this node's
//! state directory, a juicefs by its `--log=` path in this node's log directory, and
//! a mount only through such a process, which names its mount point (so nothing kelp
//! did not start is ever touched, whatever else is mounted). One scan of /proc and of
//! the mount table per pass; it runs only while no volume operation does, so nothing
//! an operation made but has not recorded yet counts as an orphan, and it ends only
//! what two passes in a row found orphaned, so a juicefs still on its way out after
//! its unmount is not counted. A process is asked to end with SIGTERM and, if it is
//! still there [`KILL_AFTER`] later, killed: a juicefs wedged by a metadata outage
//! (docs/notes.md, "the wedge") logs the SIGTERM and never exits, and while it lives
//! its FUSE connection and its session do too, so the volume cannot be deleted. Its
//! mount is gone by then (an orphan's mounts go first), so no task writes through it.

use super::core::NodeCore;
use super::mount::{self, MountEntry};
use super::procs::{self, Process};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tracing::warn;

/// How long an orphan may take to end after SIGTERM before it is killed.
pub const KILL_AFTER: Duration = Duration::from_secs(10);

/// What to send an orphaned process on this pass, given when it was first sent
/// SIGTERM (`None`: never): SIGTERM the first time, nothing while it may still be on
/// its way out, SIGKILL once it has outlived SIGTERM by [`KILL_AFTER`].
pub fn signal_for(first_term: Option<Instant>, now: Instant) -> Option<Signal> {
    match first_term {
        None => Some(Signal::SIGTERM),
        Some(t) if now.duration_since(t) >= KILL_AFTER => Some(Signal::SIGKILL),
        Some(_) => None,
    }
}

/// What the staged volumes own.
#[derive(Debug, Default)]
pub struct Owned {
    /// Their holders' sockets.
    pub sockets: HashSet<PathBuf>,
    /// Their juicefs logs (the `--log=` path).
    pub logs: HashSet<PathBuf>,
    /// Their mount points: staging paths and targets.
    pub paths: HashSet<PathBuf>,
}

/// Where this node's helpers live.
#[derive(Debug)]
pub struct Dirs<'a> {
    /// Holders' sockets are below it (`<state>/fuse`).
    pub fuse: &'a Path,
    /// juicefs logs are in it.
    pub logs: &'a Path,
}

/// What no staged volume owns.
#[derive(Debug, Default, PartialEq)]
pub struct Orphans {
    pub holders: Vec<Pid>,
    pub juicefs: Vec<Pid>,
    /// Binds first, then the mounts they were made from (the order to unmount in).
    pub mounts: Vec<MountEntry>,
}

impl Orphans {
    pub fn is_empty(&self) -> bool {
        self.holders.is_empty() && self.juicefs.is_empty() && self.mounts.is_empty()
    }

    /// A name for each orphan, to recognise it on the next pass.
    fn keys(&self) -> HashSet<String> {
        let pids = self.holders.iter().chain(&self.juicefs).map(|p| format!("pid {p}"));
        let mounts = self.mounts.iter().map(|m| format!("mount {} {}", m.device, m.mount_point.display()));
        pids.chain(mounts).collect()
    }

    /// Only the orphans also in `before` (keys of the previous pass).
    fn also_in(mut self, before: &HashSet<String>) -> Orphans {
        self.holders.retain(|p| before.contains(&format!("pid {p}")));
        self.juicefs.retain(|p| before.contains(&format!("pid {p}")));
        self.mounts.retain(|m| before.contains(&format!("mount {} {}", m.device, m.mount_point.display())));
        self
    }
}

/// The holder's socket, if `p` is a holder of this node's.
fn holder_socket<'a>(p: &'a Process, dirs: &Dirs) -> Option<&'a Path> {
    if !p.args.iter().any(|a| a == "hold-fuse") {
        return None;
    }
    let socket = Path::new(p.arg_after("--socket")?);
    (socket.parent() == Some(dirs.fuse)).then_some(socket)
}

/// The log path, if `p` is a juicefs daemon of this node's.
fn juicefs_log<'a>(p: &'a Process, dirs: &Dirs) -> Option<&'a Path> {
    if !p.args.iter().any(|a| a == "mount") {
        return None;
    }
    p.args.iter().find_map(|a| {
        let log = Path::new(a.strip_prefix("--log=")?);
        (log.parent() == Some(dirs.logs) && log.extension().is_some_and(|e| e == "log")).then_some(log)
    })
}

/// Sorts this node's helpers into those a staged volume owns and the rest. A mount
/// is an orphan when an orphaned juicefs (its last argument) or holder
/// (`--mount-point`) names it and no staged volume's path shows the same file system;
/// its binds go with it.
pub fn find(procs: &[Process], table: &[MountEntry], dirs: &Dirs, owned: &Owned) -> Orphans {
    let mut o = Orphans::default();
    let mut named: Vec<&Path> = Vec::new();
    for p in procs {
        if let Some(socket) = holder_socket(p, dirs) {
            if !owned.sockets.contains(socket) {
                o.holders.push(p.pid);
                named.extend(p.arg_after("--mount-point").map(Path::new));
            }
        } else if let Some(log) = juicefs_log(p, dirs) {
            if !owned.logs.contains(log) {
                o.juicefs.push(p.pid);
                named.extend(p.args.last().map(Path::new));
            }
        }
    }
    let juicefs = |m: &&MountEntry| m.fs_type.starts_with("fuse.juicefs");
    let kept: HashSet<&str> = table
        .iter()
        .filter(juicefs)
        .filter(|m| owned.paths.contains(&m.mount_point))
        .map(|m| m.device.as_str())
        .collect();
    let gone: HashSet<&str> = table
        .iter()
        .filter(juicefs)
        .filter(|m| named.contains(&m.mount_point.as_path()) && !kept.contains(m.device.as_str()))
        .map(|m| m.device.as_str())
        .collect();
    // Binds were made after their source: the table's reverse order unmounts them first.
    o.mounts =
        table.iter().rev().filter(juicefs).filter(|m| gone.contains(m.device.as_str())).cloned().collect();
    o
}

impl NodeCore {
    /// What the staged volumes own, from the node state.
    fn owned(&self) -> Owned {
        let mut owned = Owned::default();
        for (id, v) in self.snapshot().volumes {
            owned.sockets.insert(self.fuse_socket(&id));
            owned.logs.insert(self.cfg.juicefs.log_path(&id.mount_name()));
            owned.paths.insert(v.staging_path.clone());
            owned.paths.extend(v.targets.keys().cloned());
        }
        owned
    }

    /// Ends every holder, juicefs and mount of this node's that no staged volume
    /// owns: mounts first (their daemons then end by themselves), then the processes.
    /// Only while no volume operation runs: the caller holds [`VolumeLocks::try_all`].
    ///
    /// [`VolumeLocks::try_all`]: crate::locks::VolumeLocks::try_all
    pub async fn reap(&self, _all: &tokio::sync::OwnedRwLockWriteGuard<()>) {
        let owned = self.owned();
        let fuse = self.cfg.state_dir.join("fuse");
        let logs = self.cfg.juicefs.log_dir.clone();
        let found = tokio::task::spawn_blocking(move || {
            let dirs = Dirs { fuse: &fuse, logs: &logs };
            find(&procs::table(), &mount::mount_table(), &dirs, &owned)
        })
        .await;
        let Ok(found) = found else { return };
        let count = |kind: &str, n: u64| {
            crate::metrics::metrics()
                .reaped
                .get_or_create(&crate::metrics::KindLabels { kind: kind.into() })
                .inc_by(n);
        };
        // Shown from the first pass, at zero.
        ["holder", "juicefs", "mount"].iter().for_each(|k| count(k, 0));
        let o = {
            let mut seen = self.reap_seen.lock().expect("reaper's last pass");
            let keys = found.keys();
            let o = found.also_in(&seen);
            *seen = keys;
            o
        };
        let now = Instant::now();
        // Held to the end of the pass, which awaits nothing more.
        let mut termed = self.reap_termed.lock().expect("reaper's signals");
        // Forget what is no longer an orphan (ended, or its pid reused since).
        termed.retain(|pid, _| o.juicefs.contains(pid) || o.holders.contains(pid));
        if o.is_empty() {
            return;
        }
        for m in &o.mounts {
            let fs_name = m.source.strip_prefix("JuiceFS:").unwrap_or_default();
            match mount::unmount_juicefs(&m.mount_point, fs_name) {
                Ok(()) => {
                    warn!(path = ?m.mount_point, fs = fs_name, "reaped a JuiceFS mount no staged volume owns");
                    count("mount", 1);
                }
                Err(e) => {
                    warn!(path = ?m.mount_point, error = %e, "cannot unmount a JuiceFS mount no staged volume owns")
                }
            }
        }
        // A daemon or holder whose mount went above may have ended already; it was
        // reaped all the same.
        for (kind, pids) in [("juicefs", &o.juicefs), ("holder", &o.holders)] {
            for pid in pids {
                let first = termed.get(pid).copied();
                let Some(sig) = signal_for(first, now) else { continue };
                let sent = procs::signal(&[*pid], sig) == 1;
                match first {
                    None => {
                        warn!(
                            pid = pid.as_raw(),
                            kind,
                            signalled = sent,
                            "reaped a process no staged volume owns"
                        );
                        count(kind, 1);
                    }
                    Some(t) => warn!(
                        pid = pid.as_raw(),
                        kind,
                        killed = sent,
                        after_secs = now.duration_since(t).as_secs(),
                        "a reaped process ignored SIGTERM; killed it"
                    ),
                }
                // A SIGKILL is sent again only after another while too (a process in
                // D state outlives it until its I/O returns).
                termed.insert(*pid, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(pid: i32, args: &str) -> Process {
        Process { pid: Pid::from_raw(pid), args: args.split(' ').map(String::from).collect() }
    }

    fn entry(device: &str, at: &str) -> MountEntry {
        MountEntry {
            device: device.into(),
            mount_point: at.into(),
            options: "rw".into(),
            fs_type: "fuse.juicefs".into(),
            source: "JuiceFS:vol".into(),
        }
    }

    #[test]
    fn an_orphan_is_asked_to_end_then_killed_if_it_does_not() {
        let t = Instant::now();
        assert_eq!(signal_for(None, t), Some(Signal::SIGTERM));
        assert_eq!(signal_for(Some(t), t + Duration::from_secs(1)), None, "on its way out");
        assert_eq!(signal_for(Some(t), t + KILL_AFTER), Some(Signal::SIGKILL));
        assert_eq!(
            signal_for(Some(t), t + KILL_AFTER * 3),
            Some(Signal::SIGKILL),
            "again, if it is still there"
        );
    }

    #[test]
    fn only_what_this_node_started_and_no_staged_volume_owns() {
        let dirs = Dirs { fuse: Path::new("/s/fuse"), logs: Path::new("/s/logs") };
        let procs = [
            proc(1, "/kelp hold-fuse --socket /s/fuse/1-a.sock"),
            proc(2, "/kelp hold-fuse --socket /s/fuse/2-b.sock --mount-point /st/b"),
            proc(3, "juicefs mount --log=/s/logs/a.log redis://m/1 /st/a"),
            proc(4, "juicefs mount --log=/s/logs/b.log redis://m/2 /st/b"),
            // Another kelp's (another state directory), and the user's own juicefs.
            proc(5, "/kelp hold-fuse --socket /other/fuse/2-b.sock --mount-point /st/c"),
            proc(6, "juicefs mount --log=/other/logs/b.log redis://m/2 /st/c"),
            proc(7, "juicefs mount redis://m/3 /mnt/mine"),
            proc(8, "/kelp serve --state-dir=/s"),
        ];
        let table = [
            entry("0:50", "/st/a"),
            entry("0:51", "/st/b"),
            entry("0:51", "/pub/b"),
            entry("0:52", "/st/c"),
            entry("0:53", "/mnt/mine"),
        ];
        let owned = Owned {
            sockets: ["/s/fuse/1-a.sock".into()].into(),
            logs: ["/s/logs/a.log".into()].into(),
            paths: ["/st/a".into()].into(),
        };
        let o = find(&procs, &table, &dirs, &owned);
        assert_eq!(o.holders, vec![Pid::from_raw(2)]);
        assert_eq!(o.juicefs, vec![Pid::from_raw(4)]);
        let at: Vec<_> = o.mounts.iter().map(|m| m.mount_point.display().to_string()).collect();
        assert_eq!(at, ["/pub/b", "/st/b"], "the bind first, then its source");

        // A staged volume that shows the same file system keeps the mount, even when
        // a stray process names it.
        let owned = Owned { paths: ["/pub/b".into()].into(), ..owned };
        let o = find(&procs, &table, &dirs, &owned);
        assert!(o.mounts.is_empty(), "{o:?}");
        // Everything owned: nothing to reap.
        let owned = Owned {
            sockets: ["/s/fuse/1-a.sock".into(), "/s/fuse/2-b.sock".into()].into(),
            logs: ["/s/logs/a.log".into(), "/s/logs/b.log".into()].into(),
            paths: ["/st/a".into(), "/st/b".into()].into(),
        };
        assert!(find(&procs, &table, &dirs, &owned).is_empty());
    }
}
