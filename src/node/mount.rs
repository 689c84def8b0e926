//! Mount helpers: reading the mount table, bind mounts, unmounts that cope with dead
//! FUSE connections, and a health probe that never hangs the caller forever.

use std::path::{Path, PathBuf};
use std::time::Duration;
use sys_mount::{Mount, MountFlags, UnmountFlags};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {path:?}: {source}")]
    Io { op: &'static str, path: String, source: std::io::Error },
    #[error("mount of {volume} at {path:?} was not ready after {secs} s; juicefs log tail:\n{log_tail}")]
    Timeout { volume: String, path: String, secs: u64, log_tail: String },
    #[error("{path:?} holds a {fs_type} mount of {mounted:?}, which kelp did not make; it was left alone")]
    Foreign { path: String, fs_type: String, mounted: String },
    #[error("juicefs mount of {volume} at {path:?} failed ({status}); juicefs log tail:\n{log_tail}")]
    Juicefs { volume: String, path: String, status: String, log_tail: String },
}

pub type Result<T> = std::result::Result<T, Error>;

pub fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io { op, path: path.display().to_string(), source }
}

/// One line of /proc/self/mountinfo, the parts kelp looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct MountEntry {
    /// `major:minor` of the file system: a bind mount shares it with its source.
    pub device: String,
    pub mount_point: PathBuf,
    pub options: String,
    pub fs_type: String,
    pub source: String,
}

/// Parses the mount table; unescapes the octal escapes the kernel uses for spaces.
pub fn mount_table() -> Vec<MountEntry> {
    std::fs::read_to_string("/proc/self/mountinfo").map(|t| parse_mountinfo(&t)).unwrap_or_default()
}

pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            Some(MountEntry {
                device: l.get(2)?.to_string(),
                mount_point: PathBuf::from(unescape(l.get(4)?)),
                options: l.get(5)?.to_string(),
                fs_type: r.first()?.to_string(),
                source: unescape(r.get(1).copied().unwrap_or_default()),
            })
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl MountEntry {
    /// Whether this is the JuiceFS mount of file system `fs_name`, or a bind of it
    /// (a bind shows its source's type and source). Dead FUSE mounts still qualify.
    pub fn is_juicefs_of(&self, fs_name: &str) -> bool {
        self.fs_type.starts_with("fuse.juicefs") && self.source.strip_prefix("JuiceFS:") == Some(fs_name)
    }
}

/// The topmost mount at exactly `path`, if any.
pub fn mount_at(path: &Path) -> Option<MountEntry> {
    mount_table().into_iter().rev().find(|m| m.mount_point == path)
}

/// All mounts at or below `path`, deepest first (the order to unmount them in).
pub fn mounts_under(path: &Path) -> Vec<MountEntry> {
    let mut v: Vec<_> = mount_table().into_iter().filter(|m| m.mount_point.starts_with(path)).collect();
    v.reverse();
    v
}

/// What `stat` on a mount point says about the file system behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Answers; `root` tells if the inode is 1 (a JuiceFS root is inode 1).
    Alive {
        root: bool,
    },
    /// The FUSE server is gone ("transport endpoint is not connected").
    Dead,
    /// Did not answer in time (a hung server).
    Hung,
    Missing,
}

/// Stats `path` on a blocking thread with a timeout, so a hung FUSE server cannot
/// hang the RPC that asked.
pub async fn health(path: &Path, within: Duration) -> Health {
    use std::os::unix::fs::MetadataExt;
    let p = path.to_path_buf();
    let probe = tokio::task::spawn_blocking(move || std::fs::metadata(&p));
    match tokio::time::timeout(within, probe).await {
        Err(_) => Health::Hung,
        Ok(Err(_)) => Health::Hung,
        Ok(Ok(Ok(m))) => Health::Alive { root: m.ino() == 1 },
        Ok(Ok(Err(e))) if e.raw_os_error() == Some(libc_enotconn()) => Health::Dead,
        Ok(Ok(Err(e))) if e.kind() == std::io::ErrorKind::NotFound => Health::Missing,
        Ok(Ok(Err(_))) => Health::Dead,
    }
}

fn libc_enotconn() -> i32 {
    libc::ENOTCONN
}

/// Bind-mounts `source` on `target` (both may be `/proc/self/fd/N` paths of opened
/// directories, so the checked directories are the ones used).
pub fn bind(source: &Path, target: &Path) -> Result<()> {
    Mount::builder().flags(MountFlags::BIND).mount(source, target).map(drop).map_err(io("bind mount", target))
}

/// Makes the bind mount at `mounted` read-only for real (the kernel ignores
/// MS_RDONLY on the bind itself). `mounted` must name the new mount's root, e.g. a
/// descriptor opened after the bind.
pub fn remount_read_only(mounted: &Path) -> Result<()> {
    Mount::builder()
        .flags(MountFlags::BIND | MountFlags::REMOUNT | MountFlags::RDONLY)
        .mount("", mounted)
        .map(drop)
        .map_err(io("read-only remount", mounted))
}

/// Unmounts the JuiceFS mounts of `fs_name` at `path`, never anything else: a mount
/// of another file system on top is left alone and reported as an error.
pub fn unmount_juicefs(path: &Path, fs_name: &str) -> Result<()> {
    match mount_at(path) {
        None => Ok(()),
        Some(m) if m.is_juicefs_of(fs_name) => {
            unmount_top(path)?;
            unmount_juicefs(path, fs_name)
        }
        Some(m) => {
            Err(Error::Foreign { path: path.display().to_string(), fs_type: m.fs_type, mounted: m.source })
        }
    }
}

/// `UMOUNT_NOFOLLOW`, spelled out: sys-mount 3.1's `UnmountFlags::NOFOLLOW` holds
/// `O_NOFOLLOW` (0x20000), a bit `umount2` rejects with EINVAL, so every unmount
/// asking for it would fail as "not a mount point".
const NOFOLLOW: UnmountFlags = UnmountFlags::from_bits_retain(libc::UMOUNT_NOFOLLOW);

/// Unmounts the topmost mount at `path` without following a symlink there.
fn unmount_top(path: &Path) -> Result<()> {
    unmount_with(path, NOFOLLOW)
}

/// Unmounts once with `flags`. Nothing mounted counts as done; a busy or dead mount
/// (a task still has files open, or its FUSE daemon is gone) is detached lazily, so
/// the path is free at once and the kernel lets go when the last user does.
fn unmount_with(path: &Path, flags: UnmountFlags) -> Result<()> {
    let errno = |e: &std::io::Error| e.raw_os_error().unwrap_or(0);
    match sys_mount::unmount(path, flags) {
        Ok(()) => Ok(()),
        // "Not a mount point" is done only if the table agrees; a mount the kernel
        // will not unmount must not make a caller loop on it.
        Err(e) if matches!(errno(&e), libc::EINVAL | libc::ENOENT) && mount_at(path).is_none() => Ok(()),
        Err(e) if matches!(errno(&e), libc::EBUSY | libc::ENOTCONN | libc::EIO) => {
            sys_mount::unmount(path, flags | UnmountFlags::DETACH).map_err(io("lazy unmount", path))
        }
        Err(e) => Err(io("unmount", path)(e)),
    }
}

/// Unmounts everything at `path` (stacked mounts one by one); nothing mounted is
/// success.
pub fn unmount(path: &Path) -> Result<()> {
    for _ in 0..8 {
        if mount_at(path).is_none() {
            return Ok(());
        }
        unmount_with(path, UnmountFlags::empty())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_lines() {
        let t = "36 35 98:0 /mnt1 /mnt\\040x rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                 40 22 0:52 / /var/lib/kelp/st rw,relatime shared:3 - fuse.juicefs JuiceFS:media rw,user_id=0\n";
        let m = parse_mountinfo(t);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt x"));
        assert_eq!(m[1].fs_type, "fuse.juicefs");
        assert_eq!(m[1].source, "JuiceFS:media");
        assert_eq!(m[1].device, "0:52");
    }

    /// Needs root (as the whole node service does); skipped otherwise.
    #[test]
    fn binds_and_unmounts_without_following_symlinks() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&dst).unwrap();
        bind(&src, &dst).unwrap();
        assert!(mount_at(&dst).is_some());
        // Through a symlink nothing is unmounted, and the error says so.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&dst, &link).unwrap();
        assert!(unmount_top(&link).is_ok(), "nothing is mounted at the link itself");
        assert!(mount_at(&dst).is_some(), "the symlink was not followed");
        unmount_top(&dst).unwrap();
        assert!(mount_at(&dst).is_none());
        assert!(unmount_top(&dst).is_ok(), "unmounting nothing is done");
    }
}
