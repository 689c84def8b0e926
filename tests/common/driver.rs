//! `kelp serve` processes, all started through [`KelpBuilder`]. (This module is not
//! called `kelp`: that would shadow the crate inside `common`.)

use super::procs::{children, cmdline, kill_pids, Proc};
use super::servers::{Redis, Weed};
use super::testbed::Bed;
use super::wait::poll_until;
use super::{scratch, S3_ACCESS_KEY, S3_SECRET_KEY};
use std::ffi::OsString;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Arguments every kelp gets, unless the caller passes the same flag itself or asks
/// for [`KelpBuilder::without_default_args`]. Test paths live in scratch directories;
/// the path rules themselves are tested in security.rs.
pub const KELP_DEFAULT_ARGS: &[&str] = &["--allowed-roots=/"];

pub fn kelp_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kelp")
}

/// `--flag` of `--flag=value`.
fn flag_name(arg: &str) -> &str {
    arg.split_once('=').map_or(arg, |(flag, _)| flag)
}

/// How to start a `kelp serve`. By default it gets an endpoint and state and cache
/// directories in a fresh scratch directory, `--services=both`, `--node-id=test-node`,
/// debug logs, the S3 keys in its environment and [`KELP_DEFAULT_ARGS`]. Each
/// `--flag=value` passed with [`arg`](Self::arg) replaces the harness's own value of
/// that flag. Flags are passed in the `--flag=value` form.
pub struct KelpBuilder<'a> {
    services: String,
    redis: Option<&'a Redis>,
    weed: Option<&'a Weed>,
    /// Program and arguments that run kelp (ending with the kelp binary).
    launcher: Vec<OsString>,
    state_dir: Option<PathBuf>,
    bare: bool,
    default_args: bool,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Default for KelpBuilder<'_> {
    fn default() -> Self {
        KelpBuilder {
            services: "both".into(),
            redis: None,
            weed: None,
            launcher: vec![kelp_bin().into()],
            state_dir: None,
            bare: false,
            default_args: true,
            args: Vec::new(),
            env: Vec::new(),
        }
    }
}

impl<'a> KelpBuilder<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// `controller`, `node` or `both` (the default).
    pub fn services(mut self, services: &str) -> Self {
        self.services = services.into();
        self
    }

    /// `--meta-url` of this server, and its password (if any) in `KELP_META_PASSWORD`.
    pub fn redis(mut self, redis: &'a Redis) -> Self {
        self.redis = Some(redis);
        self
    }

    /// `--filer` and `--s3-endpoint` of this SeaweedFS.
    pub fn weed(mut self, weed: &'a Weed) -> Self {
        self.weed = Some(weed);
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs kelp in node `i`'s network namespace of `bed` (see [`Bed::command`]).
    pub fn netns(mut self, bed: &Bed, i: usize) -> Self {
        let cmd = bed.command(i, kelp_bin());
        self.launcher = std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(Into::into).collect();
        self
    }

    /// Runs kelp through `program args... <kelp>`, e.g. `unshare --mount --`.
    pub fn wrapped_in(mut self, program: &str, args: &[&str]) -> Self {
        self.launcher = std::iter::once(program)
            .chain(args.iter().copied())
            .chain([kelp_bin()])
            .map(Into::into)
            .collect();
        self
    }

    /// Runs kelp as the plugin does: `kelp init -- serve ...`, which restarts `kelp
    /// serve` when it dies ([`Kelp::pid`] is then init's).
    pub fn under_init(mut self) -> Self {
        self.launcher = [kelp_bin(), "init", "--"].map(Into::into).to_vec();
        self
    }

    /// Keeps state (and the socket, log and cache) in `dir` instead of a fresh
    /// scratch directory.
    pub fn state_dir(mut self, dir: PathBuf) -> Self {
        self.state_dir = Some(dir);
        self
    }

    /// Only `serve`, the endpoint, `--services`, [`KELP_DEFAULT_ARGS`] and what the
    /// caller adds: no state or cache directory, node id, log level or S3 keys from
    /// the harness. For tests of misconfiguration.
    pub fn bare(mut self) -> Self {
        self.bare = true;
        self
    }

    pub fn without_default_args(mut self) -> Self {
        self.default_args = false;
        self
    }

    /// Starts kelp and returns once its socket accepts connections (or the process
    /// has exited, which the caller checks).
    pub fn start(self) -> Kelp {
        let state_dir =
            self.state_dir.unwrap_or_else(|| scratch(if self.bare { "bare-kelp" } else { "kelp" }));
        let endpoint = format!("unix://{}/csi.sock", state_dir.display());
        let mut ours = vec![format!("--endpoint={endpoint}"), format!("--services={}", self.services)];
        let mut env = Vec::new();
        if let Some(r) = self.redis {
            ours.push(format!("--meta-url={}", r.url()));
            if let Some(p) = &r.password {
                env.push(("KELP_META_PASSWORD".to_string(), p.clone()));
            }
        }
        if let Some(w) = self.weed {
            ours.push(format!("--filer={}", w.filer_addr()));
            ours.push(format!("--s3-endpoint={}", w.s3_endpoint()));
        }
        if !self.bare {
            ours.push(format!("--state-dir={}", state_dir.display()));
            ours.push(format!("--cache-dir={}", state_dir.join("cache").display()));
            ours.push("--node-id=test-node".into());
            ours.push("--log-level=kelp=debug,info".into());
            env.push(("KELP_S3_ACCESS_KEY".into(), S3_ACCESS_KEY.into()));
            env.push(("KELP_S3_SECRET_KEY".into(), S3_SECRET_KEY.into()));
        }
        if self.default_args {
            ours.extend(KELP_DEFAULT_ARGS.iter().map(|a| a.to_string()));
        }
        let caller = &self.args;
        ours.retain(|a| !caller.iter().any(|c| flag_name(c) == flag_name(a)));
        let mut args = self.launcher;
        args.push("serve".into());
        args.extend(ours.into_iter().chain(self.args).map(OsString::from));
        env.extend(self.env);
        let log = state_dir.join("kelp.log");
        let mut k = Kelp { endpoint, state_dir, log, proc: None, args, env };
        k.restart();
        k
    }
}

/// A running (or stopped) `kelp serve`, killed by pid when dropped.
pub struct Kelp {
    pub endpoint: String,
    pub state_dir: PathBuf,
    /// kelp's stderr, appended to by every (re)start.
    pub log: PathBuf,
    proc: Option<Proc>,
    /// The launcher, then kelp's own arguments.
    args: Vec<OsString>,
    env: Vec<(String, String)>,
}

impl Kelp {
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().expect("kelp was started").pid()
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.is_running())
    }

    /// Kills kelp by pid (SIGKILL) and reaps it. Under `kelp init` its `kelp serve` is ended too (by pid, as
    /// init's child), so nothing of a failed test keeps running.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let serve: Vec<i32> = children(p.pid() as i32)
                .into_iter()
                .filter(|&c| cmdline(c).is_some_and(|l| l.contains(" serve ")))
                .collect();
            p.kill();
            kill_pids(&serve);
        }
    }

    /// Starts (again) with the same arguments, keeping the state directory.
    pub fn restart(&mut self) {
        self.restart_with_env(&[]);
    }

    pub fn restart_with_env(&mut self, extra_env: &[(&str, &str)]) {
        self.kill();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut cmd = Command::new(&self.args[0]);
        cmd.args(&self.args[1..]).stdout(Stdio::null()).stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("kelp binary");
        let proc = self.proc.insert(Proc { child, name: "kelp" });
        let sock = PathBuf::from(self.endpoint.trim_start_matches("unix://"));
        // A kelp that exits (at a failpoint, or by a bug) is for the caller to check.
        let up = poll_until(Duration::from_secs(30), Duration::from_millis(50), || {
            (UnixStream::connect(&sock).is_ok() || !proc.is_running()).then_some(())
        });
        assert!(up.is_some(), "kelp did not listen; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit (e.g. at a failpoint); returns whether it did.
    pub fn wait_exit(&mut self, within: Duration) -> bool {
        poll_until(within, Duration::from_millis(20), || (!self.is_running()).then_some(())).is_some()
    }
}
