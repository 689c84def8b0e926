//! Running `juicefs mount` for a staged volume. The daemon outlives kelp on purpose: a
//! restarted or upgraded driver must not take every task's file system down with it,
//! and kelp re-adopts the mounts on start (see `supervisor`).

use super::mount::{self, Error, Health, Result};
use crate::meta::MetaUrl;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::Command;

/// How kelp runs juicefs on this node.
#[derive(Debug, Clone)]
pub struct JuicefsConfig {
    pub binary: PathBuf,
    /// Per-volume cache directories are made below this.
    pub cache_dir: PathBuf,
    /// Local read cache per volume, MiB.
    pub cache_size_mib: u64,
    /// juicefs logs go to `<log_dir>/<fs name>.log`.
    pub log_dir: PathBuf,
    /// How long a mount may take to show its root before staging fails.
    pub ready_timeout: Duration,
    /// How long I/O waits through a metadata server outage before failing.
    pub outage_wait: Duration,
}

/// juicefs's `--io-retries` for I/O that waits about `wait` through a metadata
/// outage before `EIO`. Its Redis client retries a failed command that many times,
/// pausing 20 ms, doubling with jitter, up to 10 s each (juicefs's defaults): about
/// nine quick retries, then one every 10 s. The default 10 gives up after about 30 s.
pub fn io_retries_for(wait: Duration) -> u64 {
    9 + wait.as_secs().div_ceil(10)
}

/// One mount to make.
pub struct MountSpec<'a> {
    pub fs_name: &'a str,
    pub meta: &'a MetaUrl,
    pub db: u32,
    pub mount_point: &'a Path,
    pub read_only: bool,
    /// Per-volume override of the cache size (MiB).
    pub cache_size_mib: Option<u64>,
    /// Per-volume cache directory (default: `<cache_dir>/<fs name>`).
    pub cache_dir: Option<&'a Path>,
    /// The FUSE holder's socket (see `fuse_fd`): juicefs hands it the connection, and
    /// resumes the held one when started again on a mount whose daemon died.
    pub fuse_socket: Option<&'a Path>,
}

impl JuicefsConfig {
    pub fn log_path(&self, fs_name: &str) -> PathBuf {
        self.log_dir.join(format!("{fs_name}.log"))
    }

    /// Mounts and returns once the root inode is visible at the mount point.
    pub async fn mount(&self, m: &MountSpec<'_>) -> Result<()> {
        let log = self.log_path(m.fs_name);
        std::fs::create_dir_all(&self.log_dir).map_err(mount::io("create", &self.log_dir))?;
        let cache = m.cache_dir.map(Path::to_path_buf).unwrap_or_else(|| self.cache_dir.join(m.fs_name));
        let mut cmd = Command::new(&self.binary);
        cmd.arg("mount")
            .arg("--background")
            .arg("--no-usage-report")
            .arg("--backup-meta=0")
            .arg(format!("--log={}", log.display()))
            .arg(format!("--cache-dir={}", cache.display()))
            .arg(format!("--cache-size={}", m.cache_size_mib.unwrap_or(self.cache_size_mib)))
            .arg(format!("--io-retries={}", io_retries_for(self.outage_wait)))
            .arg("--metrics=127.0.0.1:0");
        if m.read_only {
            cmd.arg("--read-only");
        }
        cmd.arg(m.meta.public_db_url(m.db)).arg(m.mount_point);
        // The password goes by environment, never on a command line others can read.
        cmd.env_remove("META_PASSWORD").env_remove(super::fuse_fd::ENV);
        if let Some(socket) = m.fuse_socket {
            cmd.env(super::fuse_fd::ENV, socket);
        }
        if let Some(p) = m.meta.password() {
            cmd.env("META_PASSWORD", p);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(false);
        let started = Instant::now();
        let child = cmd.spawn().map_err(mount::io("run juicefs", &self.binary))?;
        let out = tokio::time::timeout(self.ready_timeout, child.wait_with_output()).await;
        let log_tail = || self.log_tail(m.fs_name);
        match out {
            Err(_) => {
                let _ = mount::unmount(m.mount_point);
                return Err(Error::Timeout {
                    volume: m.fs_name.into(),
                    path: m.mount_point.display().to_string(),
                    secs: self.ready_timeout.as_secs(),
                    log_tail: log_tail(),
                });
            }
            Ok(Err(e)) => return Err(mount::io("wait for juicefs", &self.binary)(e)),
            Ok(Ok(o)) if !o.status.success() => {
                let mut tail = log_tail();
                tail.push_str(&String::from_utf8_lossy(&o.stderr));
                return Err(Error::Juicefs {
                    volume: m.fs_name.into(),
                    path: m.mount_point.display().to_string(),
                    status: o.status.to_string(),
                    log_tail: last_lines(&tail, 15),
                });
            }
            Ok(Ok(_)) => {}
        }
        // `--background` returns once the mount answers; make sure it is JuiceFS's root.
        let left = self.ready_timeout.saturating_sub(started.elapsed()).max(Duration::from_secs(1));
        let ready = crate::wait::poll_until(left, Duration::from_millis(400), || async {
            (mount::health(m.mount_point, Duration::from_secs(2)).await == (Health::Alive { root: true }))
                .then_some(())
        })
        .await;
        ready.ok_or_else(|| Error::Timeout {
            volume: m.fs_name.into(),
            path: m.mount_point.display().to_string(),
            secs: self.ready_timeout.as_secs(),
            log_tail: log_tail(),
        })
    }

    /// Whether a juicefs process of this volume runs. The supervisor parent counts:
    /// it restarts a crashed child by itself.
    pub fn daemon_running(&self, fs_name: &str) -> bool {
        !self.daemons(fs_name).is_empty()
    }

    /// The juicefs processes of this volume: those whose arguments hold the `--log=`
    /// path kelp gave only to them (juicefs hides the rest of its command line).
    pub fn daemons(&self, fs_name: &str) -> Vec<nix::unistd::Pid> {
        super::procs::with_arg(&format!("--log={}", self.log_path(fs_name).display()))
    }

    /// Where the volume's running juicefs serves its Prometheus metrics: it picks a
    /// free loopback port (`--metrics=127.0.0.1:0`) and logs it at start; the last
    /// such line is the current daemon's.
    pub fn metrics_addr(&self, fs_name: &str) -> Option<std::net::SocketAddr> {
        use std::io::{Read, Seek, SeekFrom};
        const MARK: &str = "Prometheus metrics listening on \"";
        let mut f = std::fs::File::open(self.log_path(fs_name)).ok()?;
        let len = f.metadata().ok()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(256 * 1024))).ok()?;
        let mut tail = Vec::new();
        f.read_to_end(&mut tail).ok()?;
        let tail = String::from_utf8_lossy(&tail);
        let at = tail.rfind(MARK)? + MARK.len();
        tail[at..].split('"').next()?.parse().ok()
    }

    /// The last lines of the volume's juicefs log, for error messages.
    pub fn log_tail(&self, fs_name: &str) -> String {
        let text = std::fs::read_to_string(self.log_path(fs_name)).unwrap_or_default();
        last_lines(&text, 15)
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
