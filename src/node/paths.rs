//! Paths the orchestrator hands in are untrusted: a buggy or hostile CO could point
//! a target at `/etc` through a symlink or `..`. Every staging and target path goes
//! through here before kelp mounts, unmounts or removes anything:
//!
//! - lexically: absolute, no `..`, no control characters, strictly below one of the
//!   node's allowed roots (`--allowed-roots`; the managed plugin's `/data`);
//! - on disk: resolved beneath the root without following any symlink (`openat2`
//!   with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), creating missing directories one
//!   by one from their parent's descriptor, so a symlink swapped in midway is refused
//!   instead of followed;
//! - mounts go through the opened descriptor (`/proc/self/fd/N`), so what was checked
//!   is what gets mounted on.

use crate::error::{Error, Result};
use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{mkdirat, Mode};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// What kelp appends to a path it sets aside (`remove_created`): `.kelp-lost-` and a
/// unix time of up to 20 digits.
const SET_ASIDE_SUFFIX: usize = ".kelp-lost-".len() + 20;
/// The longest path kelp accepts. Mounts are made through descriptors and would take
/// any length, but unmount(2) and rename(2) take the path itself, which the kernel
/// limits to PATH_MAX (4096 bytes with its NUL): a longer path mounts, then can never
/// be let go. Room is kept for the set-aside suffix.
pub const MAX_PATH_BYTES: usize = 4095 - SET_ASIDE_SUFFIX;
/// The longest path component kelp accepts: NAME_MAX (255), less the set-aside suffix.
pub const MAX_NAME_BYTES: usize = 255 - SET_ASIDE_SUFFIX;

/// The roots below which the orchestrator's paths may live.
#[derive(Debug, Clone)]
pub struct PathPolicy {
    roots: Vec<PathBuf>,
}

/// A directory opened safely (an `O_PATH` descriptor) and the directories kelp made
/// on the way, which are the only ones it may remove later.
pub struct OpenedDir {
    pub path: PathBuf,
    fd: OwnedFd,
    pub created: Vec<PathBuf>,
}

impl OpenedDir {
    /// A path naming exactly the opened directory, for mount(2).
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// Seals (or unseals) the directory itself, under whatever is mounted on it: while
    /// sealed nothing can be created in it, so an application that writes there while
    /// no volume is mounted (a repair in progress) gets `EPERM` instead of filling the
    /// node's disk with writes the volume never sees. Best effort: file systems without
    /// the immutable flag are left as they are.
    pub fn seal(&self, on: bool) {
        if let Err(e) = set_immutable(&self.proc_path(), on) {
            tracing::debug!(path = ?self.path, error = %e, "cannot change the immutable flag; the directory stays writable while unmounted");
        }
    }
}

/// `FS_IMMUTABLE_FL` of `linux/fs.h` (libc does not export it).
const FS_IMMUTABLE_FL: libc::c_long = 0x10;

fn set_immutable(dir: &Path, on: bool) -> std::io::Result<()> {
    // Reopened through the descriptor path: an O_PATH descriptor cannot take ioctls.
    let f = std::fs::File::open(dir)?;
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS/SETFLAGS read and write one c_long at the pointer.
    if unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let wanted = if on { flags | FS_IMMUTABLE_FL } else { flags & !FS_IMMUTABLE_FL };
    if wanted != flags && unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_SETFLAGS, &wanted) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl PathPolicy {
    pub fn new(roots: Vec<PathBuf>) -> PathPolicy {
        PathPolicy { roots }
    }

    /// The lexical checks: the path as kelp records it (`.` and repeated slashes
    /// folded), or `InvalidArgument` naming what is wrong.
    pub fn check(&self, raw: &str, what: &str) -> Result<PathBuf> {
        let bad = |why: &str| Error::InvalidArgument(format!("{what} {raw:?} {why}"));
        if raw.is_empty() {
            return Err(Error::InvalidArgument(format!("{what} is required")));
        }
        if raw.chars().any(char::is_control) {
            return Err(bad("contains control characters"));
        }
        let path = Path::new(raw);
        if !path.is_absolute() {
            return Err(bad("must be an absolute path"));
        }
        if raw.len() > MAX_PATH_BYTES {
            return Err(bad(&format!(
                "is {} bytes long; kelp takes paths of at most {MAX_PATH_BYTES}",
                raw.len()
            )));
        }
        if let Some(long) = path.components().find(|c| c.as_os_str().len() > MAX_NAME_BYTES) {
            return Err(bad(&format!(
                "has a component of {} bytes; kelp takes components of at most {MAX_NAME_BYTES}",
                long.as_os_str().len()
            )));
        }
        let mut clean = PathBuf::from("/");
        for c in path.components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(n) => clean.push(n),
                Component::ParentDir => return Err(bad("must not contain `..`")),
                Component::Prefix(_) => return Err(bad("is not a Linux path")),
            }
        }
        if self.root_of(&clean).is_none() {
            let roots: Vec<_> = self.roots.iter().map(|r| r.display().to_string()).collect();
            return Err(bad(&format!(
                "is not below the node's allowed roots ({}); set --allowed-roots (KELP_ALLOWED_ROOTS) to where the orchestrator keeps its paths",
                roots.join(", ")
            )));
        }
        Ok(clean)
    }

    fn root_of<'a>(&'a self, path: &Path) -> Option<&'a Path> {
        self.roots.iter().map(PathBuf::as_path).find(|r| path.starts_with(r) && path != *r)
    }

    /// Opens the checked directory `path` without following symlinks, creating
    /// missing directories when `create` is set. A symlink anywhere below the root, or
    /// a non-directory, is `InvalidArgument`; a missing path without `create` is
    /// `NotFound`.
    pub fn open_dir(&self, path: &Path, create: bool) -> Result<OpenedDir> {
        let root = self.root_of(path).ok_or_else(|| {
            Error::InvalidArgument(format!("{path:?} is not below the node's allowed roots"))
        })?;
        let rest = path.strip_prefix(root).expect("checked below its root");
        let sys = |op: &str, p: &Path, e: Errno| {
            match e {
            Errno::ELOOP | Errno::EXDEV | Errno::ENOTDIR => Error::InvalidArgument(format!(
                "{p:?} is not a plain directory below {root:?} (a symbolic link or a file is in the way); kelp never follows links in paths it is given"
            )),
            Errno::ENOENT => Error::NotFound(format!("{p:?} does not exist")),
            e => Error::Internal(format!("{op} {p:?}: {e}")),
        }
        };
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        // The root itself is the operator's configuration and may be reached through links.
        let mut dir =
            nix::fcntl::open(root, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(|e| sys("open allowed root", root, e))?;
        let mut at = root.to_path_buf();
        let mut created = Vec::new();
        for name in rest.components() {
            at.push(name);
            let next = match openat2(&dir, name.as_os_str(), how) {
                Err(Errno::ENOENT) if create => {
                    match mkdirat(&dir, name.as_os_str(), Mode::from_bits_truncate(0o750)) {
                        Ok(()) => created.push(at.clone()),
                        Err(Errno::EEXIST) => {}
                        Err(e) => return Err(sys("create", &at, e)),
                    }
                    openat2(&dir, name.as_os_str(), how)
                }
                other => other,
            };
            dir = next.map_err(|e| sys("open", &at, e))?;
        }
        Ok(OpenedDir { path: path.to_path_buf(), fd: dir, created })
    }
}

/// Lets go of `path`: removes it if kelp created it, then the empty directories kelp
/// created above it (deepest first; one that is not empty stops the walk, as other
/// paths still use it). `created` holds what kelp made on the way to `path`. If
/// `path` itself still holds files it is never emptied: it is renamed aside
/// (`<name>.kelp-lost-<unix time>`) so the CO's path is free, and the new name is
/// returned for the operator to inspect. Only `path` is ever renamed.
pub fn remove_created(path: &Path, created: &[PathBuf]) -> Option<PathBuf> {
    let mut set_aside = None;
    if created.iter().any(|c| c == path) {
        match std::fs::remove_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if e.raw_os_error() == Some(libc_enotempty()) => {
                let aside = PathBuf::from(format!("{}.kelp-lost-{}", path.display(), crate::unix_now()));
                match std::fs::rename(path, &aside) {
                    Ok(()) => {
                        tracing::error!(path = ?path, moved_to = ?aside, "files were found in a directory kelp mounted on (written while nothing was mounted there); moved aside, never deleted");
                        set_aside = Some(aside);
                    }
                    Err(e) => {
                        tracing::error!(path = ?path, error = %e, "cannot move aside a directory that holds files")
                    }
                }
                return set_aside;
            }
            Err(e) => {
                tracing::warn!(path = ?path, error = %e, "cannot remove a directory kelp created");
                return None;
            }
        }
    }
    let mut parents: Vec<&PathBuf> = created.iter().filter(|c| path.starts_with(c) && *c != path).collect();
    parents.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for dir in parents {
        if std::fs::remove_dir(dir).is_err() {
            break;
        }
    }
    set_aside
}

fn libc_enotempty() -> i32 {
    Errno::ENOTEMPTY as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(root: &Path) -> PathPolicy {
        PathPolicy::new(vec![root.to_path_buf()])
    }

    #[test]
    fn lexical_checks_refuse_what_could_escape() {
        let p = policy(Path::new("/data"));
        assert_eq!(p.check("/data/x//y/./z", "t").unwrap(), PathBuf::from("/data/x/y/z"));
        for bad in
            ["", "rel/x", "/data/../etc", "/data/x/../../etc", "/etc/x", "/data", "/data/a\nb", "/dat/x"]
        {
            assert!(matches!(p.check(bad, "t"), Err(Error::InvalidArgument(_))), "{bad:?}");
        }
    }

    #[test]
    fn paths_kelp_could_not_let_go_of_are_refused() {
        let p = policy(Path::new("/data"));
        let name = |n: usize| "n".repeat(n);
        assert!(p.check(&format!("/data/{}", name(MAX_NAME_BYTES)), "t").is_ok());
        let long_name = format!("/data/{}", name(MAX_NAME_BYTES + 1));
        assert!(matches!(p.check(&long_name, "t"), Err(Error::InvalidArgument(_))));
        // Many short components: the whole length counts too.
        let deep = |bytes: usize| {
            let mut s = String::from("/data");
            while s.len() + 2 <= bytes {
                s.push_str("/x");
            }
            s
        };
        assert!(p.check(&deep(MAX_PATH_BYTES), "t").is_ok());
        let too_long = format!("{}/xx", deep(MAX_PATH_BYTES));
        assert!(matches!(p.check(&too_long, "t"), Err(Error::InvalidArgument(_))));
        // The set-aside name of the longest accepted path still fits the kernel's limits.
        assert!(MAX_PATH_BYTES + ".kelp-lost-".len() + 20 < 4096 && MAX_NAME_BYTES + 31 <= 255);
    }

    #[test]
    fn opening_creates_records_and_refuses_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let p = policy(&root);
        let made = p.open_dir(&root.join("a/b"), true).unwrap();
        assert_eq!(made.created, vec![root.join("a"), root.join("a/b")]);
        assert!(p.open_dir(&root.join("a/b"), false).unwrap().created.is_empty());
        assert!(matches!(p.open_dir(&root.join("missing"), false), Err(Error::NotFound(_))));
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        for via in ["link", "link/sub"] {
            let e = p.open_dir(&root.join(via), true);
            assert!(matches!(e, Err(Error::InvalidArgument(_))), "{via}");
        }
        assert!(!outside.join("sub").exists(), "nothing was created through the link");
        // A sibling keeps the shared parent: only the released path goes.
        let sibling = p.open_dir(&root.join("a/c"), true).unwrap();
        assert_eq!(sibling.created, vec![root.join("a/c")]);
        assert_eq!(remove_created(&root.join("a/c"), &[root.join("a"), root.join("a/c")]), None);
        assert!(!root.join("a/c").exists() && root.join("a").exists());
        std::fs::write(root.join("a/b/file"), b"x").unwrap();
        let aside = remove_created(&root.join("a/b"), &made.created).unwrap();
        assert!(aside.join("file").exists());
        assert!(root.join("a").exists(), "the parent of a set-aside directory stays");
    }
}
