//! Keeping each staged volume's FUSE connection alive across the death of its juicefs
//! daemons. JuiceFS (>= 1.2) hands the `/dev/fuse` descriptor of a mount to whatever
//! listens on the unix socket named by `_FUSE_FD_COMM` (normally its own supervisor
//! process), and a juicefs started later with the same socket takes the descriptor
//! back and serves the *same* kernel mount. kelp's holder plays the supervisor's part
//! of that exchange, so juicefs runs as one process per volume. While a holder keeps the
//! descriptor, killing every juicefs process of a volume only stalls I/O: no mount
//! disappears, so no task, in any mount namespace, ever sees `ENOTCONN`, and a path
//! kelp owns is never a bare directory.
//!
//! One holder process per staged volume (`kelp hold-fuse`), started before its
//! juicefs and outliving `kelp serve` like the daemons do. It is small and
//! synchronous on purpose. The exchange, per connection (juicefs `cmd/passfd.go`, the
//! supervisor's side, and its FUSE library's `mount`, the daemon's):
//!
//! 1. holder -> juicefs: payload = the FUSE `InitIn` bytes that came with the
//!    descriptor (or `FUSE` before there is one), rights = `[/dev/null, fuse fd?]`
//!    (the first descriptor is a placeholder juicefs expects);
//! 2. juicefs -> holder: `InitIn` bytes + `[fuse fd]` to hand over a live connection,
//!    `CLOSE` + `[fd]` when it took ours, or nothing.
//!
//! The holder also enforces a leased writer's lease while `kelp serve` is down (see
//! `lease`): the driver stamps the node's last renewal in [`lease_file`] and names the
//! volume's lease and juicefs in [`lease_spec_file`]; once the stamp is older than the
//! lease, the holder stops that juicefs. Only the driver resumes it, after it has
//! renewed and found the volume still its own.
//!
//! The holder exits when the connection it holds is aborted (the volume was
//! unmounted: `poll` reports `POLLERR` on the descriptor), or when it never received
//! one within [`NO_FD_EXIT`]. Once it has held a connection it never waits for
//! another: a client that connects just as the mount ends must not turn it back into
//! a fresh holder, which would outlive its volume until [`NO_FD_EXIT`].
//!
//! Whether a holder runs is read from a lock it holds ([`lock_file`]), never by
//! connecting to it: every connection is an exchange that hands the descriptor over,
//! so a probe that hangs up made the holder log a failed exchange each time.

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The environment variable juicefs's FUSE library reads the holder's socket path
/// from: the socket a juicefs supervisor serves its child (kelp runs no supervisor).
pub const ENV: &str = "_FUSE_FD_COMM";
/// A holder that never got a descriptor (its mount failed) does not linger.
const NO_FD_EXIT: Duration = Duration::from_secs(300);
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
const NO_FD_SETTINGS: &[u8] = b"FUSE";

/// The socket of a volume's holder: short, as unix socket paths are limited to 107
/// bytes, and unique per volume incarnation (database and UUID tag).
pub fn socket_path(state_dir: &Path, db: u32, tag: &str) -> PathBuf {
    state_dir.join("fuse").join(format!("{db}-{tag}.sock"))
}

/// The node's last lease renewal that worked: CLOCK_MONOTONIC milliseconds, when it
/// was sent. One per node.
pub fn lease_file(state_dir: &Path) -> PathBuf {
    state_dir.join("fuse").join("lease")
}

/// A leased volume's lease (ms) and the argument that names its juicefs processes,
/// beside the holder's socket; absent for volumes without a lease.
pub fn lease_spec_file(socket: &Path) -> PathBuf {
    socket.with_extension("lease")
}

/// CLOCK_MONOTONIC in milliseconds: one clock for every process on the node.
pub fn monotonic_ms() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000
}

/// Writes `text` to `path` through a temporary file and a rename, so a reader never
/// sees half of it.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// How long before a lease ends its writer is stopped (as the driver does).
const LEASE_EARLY_MS: u64 = 500;

/// Stops the volume's juicefs once the node's lease stamp is older than the volume's
/// lease, once per stamp.
fn enforce_lease(socket: &Path, stopped_for: &mut Option<u64>) {
    let Ok(spec) = std::fs::read_to_string(lease_spec_file(socket)) else { return };
    let Some((lease_ms, needle)) = spec.trim().split_once(' ') else { return };
    let Ok(lease_ms) = lease_ms.parse::<u64>() else { return };
    let state_dir = socket.parent().and_then(Path::parent).unwrap_or(Path::new("/"));
    // No stamp at all: the driver has not renewed since the node started; stop.
    let stamp =
        std::fs::read_to_string(lease_file(state_dir)).ok().and_then(|s| s.trim().parse::<u64>().ok());
    let (now, last) = (monotonic_ms(), stamp.unwrap_or(0));
    // A stamp from the future was written before a reboot: it covers nothing.
    let fresh = last <= now && now - last + LEASE_EARLY_MS < lease_ms;
    if fresh || *stopped_for == Some(last) {
        return;
    }
    let pids = super::procs::with_arg(needle);
    let n = super::procs::signal(&pids, nix::sys::signal::Signal::SIGSTOP);
    eprintln!("kelp hold-fuse: the node's lease lapsed and kelp serve has not renewed it; stopped {n} juicefs processes of this volume");
    *stopped_for = Some(last);
}

/// The file a holder keeps an exclusive `flock` on while it listens on `socket`.
pub fn lock_file(socket: &Path) -> PathBuf {
    socket.with_extension("lock")
}

/// Whether a holder listens on `socket`: its lock is held. A holder of an older kelp
/// took no lock; only then is it asked by connecting.
pub fn holder_running(socket: &Path) -> bool {
    match std::fs::File::open(lock_file(socket)) {
        Ok(f) => {
            // SAFETY: flock on a descriptor we own; a shared lock we get is dropped with `f`.
            let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
            r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => UnixStream::connect(socket).is_ok(),
        Err(_) => false,
    }
}

/// Takes the holder's lock on `socket` for the life of the returned file. A probe
/// holds it shared for an instant, so a busy lock is tried again for a second.
fn take_lock(socket: &Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(lock_file(socket))?;
    let deadline = Instant::now() + Duration::from_secs(1);
    // SAFETY: flock on a descriptor we own.
    while unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) || Instant::now() > deadline {
            return Err(e);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(f)
}

struct Held {
    fd: OwnedFd,
    settings: Vec<u8>,
}

fn aborted(fd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::empty())];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(0) => false,
        Ok(_) => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL)),
        Err(_) => true,
    }
}

/// Runs the holder on `socket` until the FUSE connection it holds ends.
pub fn hold(socket: &Path) -> std::io::Result<()> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    // Taken once it listens: whoever sees the lock held can hand it a mount.
    let _lock = take_lock(socket)?;
    let placeholder: OwnedFd = std::fs::File::open("/dev/null")?.into();
    let started = Instant::now();
    let mut held: Option<Held> = None;
    let mut stopped_for = None;
    loop {
        enforce_lease(socket, &mut stopped_for);
        if let Some(h) = &held {
            if aborted(&h.fd) {
                eprintln!("kelp hold-fuse: the FUSE connection ended (unmounted); exiting");
                break;
            }
        } else if started.elapsed() > NO_FD_EXIT {
            eprintln!("kelp hold-fuse: no FUSE connection was handed over; exiting");
            break;
        }
        let mut fds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        if let Some(h) = &held {
            // No events asked: only errors (the connection aborted) wake us.
            fds.push(PollFd::new(h.fd.as_fd(), PollFlags::empty()));
        }
        // Every 200 ms at most, so a lapsed lease is enforced before it ends.
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        // The end of the mount first: a client waiting at the same moment must not
        // be handed a dead connection, nor keep this holder.
        if held.as_ref().is_some_and(|h| aborted(&h.fd))
            || !fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN))
        {
            continue;
        }
        let (conn, _) = listener.accept()?;
        match exchange(&conn, &placeholder, &mut held) {
            Ok(()) => {}
            // The client hung up before the exchange: nothing was handed over.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)) => {}
            Err(e) => eprintln!("kelp hold-fuse: exchange failed: {e}"),
        }
    }
    let _ = std::fs::remove_file(socket);
    let _ = std::fs::remove_file(lock_file(socket));
    Ok(())
}

/// One exchange with a juicefs process (see the module docs).
fn exchange(conn: &UnixStream, placeholder: &OwnedFd, held: &mut Option<Held>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
    conn.set_write_timeout(Some(EXCHANGE_TIMEOUT))?;
    if held.as_ref().is_some_and(|h| aborted(&h.fd)) {
        // Ended since the loop looked: hand nothing over; the loop exits next.
        return Ok(());
    }
    let mut rights = vec![placeholder.as_raw_fd()];
    let settings = match held {
        Some(h) => {
            rights.push(h.fd.as_raw_fd());
            h.settings.clone()
        }
        None => NO_FD_SETTINGS.to_vec(),
    };
    let cmsg = [ControlMessage::ScmRights(&rights)];
    sendmsg::<()>(conn.as_raw_fd(), &[IoSlice::new(&settings)], &cmsg, MsgFlags::empty(), None)?;

    let mut buf = vec![0u8; 4096];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let (len, received) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(conn.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
        let mut received: Vec<OwnedFd> = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                // SAFETY: the kernel just installed these descriptors for us; we own them.
                received.extend(fds.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        (msg.bytes, received)
    };
    let reply = &buf[..len];
    let mut received = received.into_iter();
    match received.next() {
        Some(fd) if reply != b"CLOSE" && !reply.is_empty() && !aborted(&fd) => {
            eprintln!(
                "kelp hold-fuse: holding the volume's FUSE connection ({} bytes of init data)",
                reply.len()
            );
            *held = Some(Held { fd, settings: reply.to_vec() });
        }
        _ => {}
    }
    Ok(())
}

/// Starts a holder on `socket` unless one answers there already, and returns once it
/// listens. It runs in its own process group, so a signal to `kelp serve`'s group
/// does not reach it, and outlives `kelp serve`.
pub fn ensure_holder(socket: &Path, log: &Path, mount_point: &Path) -> std::io::Result<()> {
    if holder_running(socket) {
        return Ok(());
    }
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("hold-fuse")
        .arg("--socket")
        .arg(socket)
        .arg("--mount-point")
        .arg(mount_point)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(3);
    while !holder_running(socket) {
        if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
            return Err(std::io::Error::other(format!("the FUSE holder on {socket:?} did not start")));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Reap it when it ends, so it never lingers as a zombie of `kelp serve`.
    std::thread::spawn(move || child.wait());
    Ok(())
}

/// The holder processes serving `socket`.
pub fn holders(socket: &Path) -> Vec<nix::unistd::Pid> {
    super::procs::with_arg(&socket.display().to_string())
}

/// Waits (briefly) until the holder on `socket` has gone, as it does once the
/// connection it held ended, so a new stage of the volume starts a fresh one.
pub fn wait_holder_gone(socket: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    while holder_running(socket) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}
