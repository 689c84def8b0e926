//! Running `juicefs mount` for a staged volume. The daemon outlives kelp on purpose: a
//! restarted or upgraded driver must not take every task's file system down with it,
//! and kelp re-adopts the mounts on start (see `repair`).

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
    /// juicefs's `--max-fuse-io`: the largest read or write one FUSE request carries.
    pub max_fuse_io: String,
    /// `GOMEMLIMIT` for each juicefs, MiB; `None` leaves the Go runtime's default.
    pub go_mem_limit_mib: Option<u64>,
    /// How long the mount of a single-node writer keeps attributes, names and
    /// directory listings in the kernel (juicefs's default, 1 s, when zero).
    pub sole_writer_cache: Duration,
}

/// Set, it makes `juicefs mount` the serving process itself instead of a supervisor
/// that re-executes itself as one.
const SUPERVISOR_ENV: &str = "JFS_SUPERVISOR";

/// A running juicefs that kelp started. Dropping it leaves the process running.
pub struct Daemon {
    child: tokio::process::Child,
}

impl Daemon {
    /// Resolves when the process has ended (and reaps it).
    pub async fn exited(mut self) {
        let _ = self.child.wait().await;
    }
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
    /// The volume's mount name ([`crate::volume::VolumeId::mount_name`]): names its
    /// log, default cache directory and daemon.
    pub name: &'a str,
    pub meta: &'a MetaUrl,
    pub db: u32,
    /// The tree-layout volume's directory (juicefs `--subdir`); `None` mounts the root.
    pub subdir: Option<&'a str>,
    pub mount_point: &'a Path,
    pub read_only: bool,
    /// Per-volume override of the cache size (MiB).
    pub cache_size_mib: Option<u64>,
    /// Per-volume cache directory (default: `<cache_dir>/<mount name>`).
    pub cache_dir: Option<&'a Path>,
    /// The FUSE holder's socket (see `fuse_fd`): juicefs hands it the connection, and
    /// resumes the held one when started again on a mount whose daemon died.
    pub fuse_socket: Option<&'a Path>,
    /// This node holds the volume as its single-node writer: no other client changes
    /// the file system while this mount lives (a new holder fences this one first),
    /// so what this mount cached cannot go stale behind its back.
    pub sole_writer: bool,
}

impl JuicefsConfig {
    pub fn log_path(&self, fs_name: &str) -> PathBuf {
        self.log_dir.join(format!("{fs_name}.log"))
    }

    /// Starts the volume's juicefs and returns once the root inode is visible at the
    /// mount point, with the running daemon.
    ///
    /// juicefs runs as one foreground process, not `--background`: its background
    /// mode sleeps 500 ms before it first looks at the mount point, which was most
    /// of the time a stage took, and it runs a second, supervising juicefs that
    /// costs about 18 MiB per volume for a job kelp already does (the FUSE holder
    /// keeps the connection; [`Daemon::exited`] and repair restart a dead daemon).
    /// `JFS_SUPERVISOR` makes juicefs serve the mount itself, and `_FUSE_FD_COMM`
    /// points the FUSE library at the holder, the socket its supervisor would serve.
    pub async fn mount(&self, m: &MountSpec<'_>) -> Result<Daemon> {
        let log = self.log_path(m.name);
        std::fs::create_dir_all(&self.log_dir).map_err(mount::io("create", &self.log_dir))?;
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(mount::io("open", &log))?;
        let log_err = log_file.try_clone().map_err(mount::io("open", &log))?;
        let cache = m.cache_dir.map(Path::to_path_buf).unwrap_or_else(|| self.cache_dir.join(m.name));
        let mut cmd = Command::new(&self.binary);
        cmd.arg("mount")
            .arg("--no-usage-report")
            .arg("--no-syslog")
            .arg("--backup-meta=0")
            // Not read in the foreground (the log is stderr, below), but it names the
            // volume's processes: see `daemons`.
            .arg(format!("--log={}", log.display()))
            .arg(format!("--cache-dir={}", cache.display()))
            .arg(format!("--cache-size={}", m.cache_size_mib.unwrap_or(self.cache_size_mib)))
            .arg(format!("--io-retries={}", io_retries_for(self.outage_wait)))
            .arg(format!("--max-fuse-io={}", self.max_fuse_io))
            .arg("--metrics=127.0.0.1:0");
        if m.read_only {
            cmd.arg("--read-only");
        }
        if let Some(dir) = m.subdir {
            cmd.arg(format!("--subdir={dir}"));
        }
        let keep = self.sole_writer_cache.as_secs();
        if m.sole_writer && keep > 0 {
            // juicefs's 1 s caches exist for other clients' changes; a sole writer has
            // none, and every lookup, getattr and readdir it saves is a round trip.
            for cache in ["attr", "entry", "dir-entry", "negative-entry"] {
                cmd.arg(format!("--{cache}-cache={keep}s"));
            }
            cmd.arg("--readdir-cache");
        }
        cmd.arg(m.meta.public_db_url(m.db)).arg(m.mount_point);
        // The password goes by environment, never on a command line others can read.
        for var in ["META_PASSWORD", SUPERVISOR_ENV, super::fuse_fd::ENV, "JFS_SUPER_COMM"] {
            cmd.env_remove(var);
        }
        cmd.env(SUPERVISOR_ENV, "kelp");
        if let Some(socket) = m.fuse_socket {
            cmd.env(super::fuse_fd::ENV, socket);
        }
        if let Some(p) = m.meta.password() {
            cmd.env("META_PASSWORD", p);
        }
        if let Some(limit) = self.go_mem_limit_mib {
            cmd.env("GOMEMLIMIT", format!("{limit}MiB"));
        }
        cmd.stdin(Stdio::null()).stdout(log_err).stderr(log_file).kill_on_drop(false);
        // Its own process group: a signal to kelp's group (a stopping plugin) must not
        // take the mounts down with it.
        cmd.process_group(0);
        // SAFETY: only async-signal-safe calls (open, write, close, setrlimit) between
        // fork and exec. What juicefs's supervisor did for its child: the kernel's OOM
        // killer spares the daemon of a mounted file system, and a busy volume gets
        // the descriptors it needs.
        unsafe {
            cmd.pre_exec(|| {
                let fd = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY);
                if fd >= 0 {
                    libc::write(fd, b"-1000".as_ptr().cast(), 5);
                    libc::close(fd);
                }
                let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
                    lim.rlim_cur = lim.rlim_max;
                    libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(mount::io("run juicefs", &self.binary))?;
        let log_tail = || self.log_tail(m.name);
        // Fast at first: a healthy mount answers in about 200 ms.
        let ready = crate::wait::poll_until(self.ready_timeout, Duration::from_millis(100), || {
            let exited = child.try_wait();
            async move {
                match exited {
                    Ok(Some(status)) => return Some(Err(status.to_string())),
                    Err(e) => return Some(Err(format!("cannot wait for it: {e}"))),
                    Ok(None) => {}
                }
                (mount::health(m.mount_point, Duration::from_secs(2)).await == (Health::Alive { root: true }))
                    .then_some(Ok(()))
            }
        })
        .await;
        match ready {
            Some(Ok(())) => {
                tracing::debug!(
                    volume = m.name,
                    ms = started.elapsed().as_millis() as u64,
                    "juicefs mount answers"
                );
                Ok(Daemon { child })
            }
            Some(Err(status)) => Err(Error::Juicefs {
                volume: m.name.into(),
                path: m.mount_point.display().to_string(),
                status,
                log_tail: log_tail(),
            }),
            None => {
                // It is ours and it failed: end it, and whatever it mounted.
                let _ = child.start_kill();
                let _ = child.wait().await;
                let _ = mount::unmount(m.mount_point);
                Err(Error::Timeout {
                    volume: m.name.into(),
                    path: m.mount_point.display().to_string(),
                    secs: self.ready_timeout.as_secs(),
                    log_tail: log_tail(),
                })
            }
        }
    }

    /// Whether a juicefs process of this volume runs.
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
