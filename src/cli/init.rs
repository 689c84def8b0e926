//! `kelp init -- serve ARGS`: the managed plugin's PID 1. Everything in the plugin's PID namespace
//! dies with PID 1, juicefs daemons included, so PID 1 must be a process that cannot
//! fail: this one only starts `kelp serve`, restarts it with capped backoff when it
//! dies, reaps every orphan (juicefs daemonises, so its daemons become our
//! children), and forwards SIGTERM/SIGINT. It allocates nothing after start, takes
//! no locks and runs no async runtime. A crashed, killed or OOM-killed `kelp serve`
//! therefore leaves every FUSE mount running; the new one re-adopts them from its
//! state file.

use clap::Args;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::os::fd::AsFd;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct InitArgs {
    /// The kelp command line to supervise, after `--`: `serve ARGS...`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<String>,
}

/// The first restart waits about this long, each further one about twice as long
/// (with jitter), up to the cap.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Kept short: while `kelp serve` is down no volume can be published on the node,
/// and starting it costs little.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A `kelp serve` that ran this long was healthy: the next restart is quick again.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

pub fn run(a: InitArgs) -> ExitCode {
    // Orphans below us (juicefs daemons) are reparented to us even when we are not
    // PID 1 (outside a plugin, in tests).
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("kelp init: cannot become a subreaper: {e}");
    }
    let mut mask = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        mask.add(s);
    }
    // Blocked here, received through the signalfd; `Command` clears the mask in children.
    if let Err(e) = mask.thread_block() {
        eprintln!("kelp init: cannot block signals: {e}");
        return ExitCode::FAILURE;
    }
    let sfd = match SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("kelp init: signalfd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let exe = std::env::current_exe().unwrap_or_else(|_| "/kelp".into());
    let schedule = || kelp::wait::backoff(FIRST_BACKOFF, MAX_BACKOFF);
    let mut pauses = schedule();
    let mut serve: Option<(Pid, Instant)> = None;
    let mut restart_at = Some(Instant::now());
    let mut stopping = false;
    loop {
        if let (None, Some(at), false) = (serve, restart_at, stopping) {
            if Instant::now() >= at {
                match Command::new(&exe).args(&a.command).spawn() {
                    Ok(child) => {
                        eprintln!("kelp init: started kelp serve (pid {})", child.id());
                        serve = Some((Pid::from_raw(child.id() as i32), Instant::now()));
                        restart_at = None;
                    }
                    Err(e) => {
                        let pause = pauses.next().unwrap_or(MAX_BACKOFF);
                        eprintln!("kelp init: cannot start kelp serve: {e}; retrying in {pause:?}");
                        restart_at = Some(Instant::now() + pause);
                    }
                }
            }
        }
        let wait = restart_at.map(|at| at.saturating_duration_since(Instant::now()));
        let timeout = wait.map_or(PollTimeout::NONE, |d| {
            PollTimeout::try_from(d.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::MAX)
        });
        let mut fds = [PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                eprintln!("kelp init: poll: {e}");
                continue;
            }
        }
        let Ok(Some(info)) = sfd.read_signal() else { continue };
        match Signal::try_from(info.ssi_signo as i32) {
            Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => {
                stopping = true;
                match serve {
                    Some((pid, _)) => {
                        let _ = kill(pid, Signal::SIGTERM);
                    }
                    None => return ExitCode::SUCCESS,
                }
            }
            Ok(Signal::SIGCHLD) => {
                // One signal may stand for many exits: reap every child that is done.
                loop {
                    match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::Exited(pid, _)) | Ok(WaitStatus::Signaled(pid, _, _))
                            if serve.is_some_and(|(s, _)| s == pid) =>
                        {
                            let (_, started) = serve.take().expect("serve is running");
                            if stopping {
                                return ExitCode::SUCCESS;
                            }
                            if started.elapsed() >= HEALTHY_RUN {
                                pauses = schedule();
                            }
                            let pause = pauses.next().unwrap_or(MAX_BACKOFF);
                            eprintln!("kelp init: kelp serve (pid {pid}) ended; restarting in {pause:?}");
                            restart_at = Some(Instant::now() + pause);
                        }
                        Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            }
            _ => {}
        }
    }
}
