//! Mounts: the crate's own mountinfo parser, `juicefs mount` by hand, and cleanup.

use super::procs::{juicefs_pids_with, kill_pids, pids_with_cmdline};
use super::run;
use super::servers::Redis;
pub use kelp::node::mount::{mount_at, mounts_under, MountEntry};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The file system type mounted at exactly `path`, if any.
pub fn fs_type_at(path: &Path) -> Option<String> {
    mount_at(path).map(|m| m.fs_type)
}

/// `juicefs mount -d` of a volume kelp made, straight from the metadata database.
pub fn juicefs_mount(redis: &Redis, db: u32, mount_point: &Path) {
    juicefs_mount_with(redis, db, mount_point, &[]);
}

/// `juicefs mount -d` of the volume with id `volume_id` as a node mounts it: its own
/// directory (`--subdir`) for a tree-layout volume, the root for a root-layout one.
pub fn juicefs_mount_volume(redis: &Redis, volume_id: &str, mount_point: &Path) {
    let id = kelp::volume::VolumeId::parse(volume_id).expect("a kelp volume id");
    let subdir: Vec<String> = id.subdir().map(|d| format!("--subdir={d}")).into_iter().collect();
    juicefs_mount_with(redis, id.db, mount_point, &subdir.iter().map(String::as_str).collect::<Vec<_>>());
}

/// [`juicefs_mount`] with more options (`--subdir`, `--cache-size=0`, ...).
pub fn juicefs_mount_with(redis: &Redis, db: u32, mount_point: &Path, extra: &[&str]) {
    std::fs::create_dir_all(mount_point).unwrap();
    let mut cmd = Command::new("juicefs");
    cmd.args(["mount", "-d", "--no-usage-report", "--backup-meta=0", "--metrics=127.0.0.1:0"])
        .args(extra)
        .arg(format!("--cache-dir={}", mount_point.with_extension("cache").display()))
        .arg(format!("--log={}", mount_point.with_extension("log").display()))
        .arg(format!("redis://127.0.0.1:{}/{db}", redis.port))
        .arg(mount_point);
    if let Some(p) = &redis.password {
        cmd.env("META_PASSWORD", p);
    }
    run(&mut cmd);
}

pub fn umount(path: &Path) {
    let _ = Command::new("umount").arg(path).status();
    if mount_at(path).is_some() {
        let _ = Command::new("umount").arg("-l").arg(path).status();
    }
}

/// Test cleanup after a failure: lazily unmounts everything below `root` (deepest
/// first) and kills, by pid, the juicefs daemons a kelp with `state_dir` started
/// (their command line names their log under `<state_dir>/logs/`).
pub fn force_cleanup(root: &Path, state_dir: &Path) {
    unmount_all_under(root);
    kill_pids(&juicefs_pids_with(&format!("{}/logs/", state_dir.display())));
    // The FUSE holders of that kelp: without them no hung mount is left behind.
    kill_pids(&pids_with_cmdline(&format!("hold-fuse --socket {}/fuse/", state_dir.display())));
}

/// Unmounts everything below a directory and ends, by pid, the juicefs daemons whose
/// command line names it, when dropped: also when a test fails half way.
pub struct MountsBelow(pub PathBuf);

impl Drop for MountsBelow {
    fn drop(&mut self) {
        unmount_all_under(&self.0);
        kill_pids(&juicefs_pids_with(&self.0.display().to_string()));
    }
}

/// Lazily unmounts everything below `root`, newest (and so deepest) first, as
/// [`mounts_under`] lists them.
fn unmount_all_under(root: &Path) {
    for m in mounts_under(root) {
        let _ = Command::new("umount").arg("-l").arg(&m.mount_point).status();
    }
}

/// `juicefs fsck --path / --recursive` of the file system in database `db` of the
/// server at `meta_url` (`redis://host:port`), JuiceFS's own check: it must call a
/// kelp file system clean. Panics with its output otherwise.
pub fn assert_fsck_clean(meta_url: &str, password: Option<&str>, db: u32) {
    let mut cmd = Command::new("juicefs");
    cmd.args(["fsck", "--path", "/", "--recursive"]).arg(format!("{meta_url}/{db}"));
    if let Some(p) = password {
        cmd.env("META_PASSWORD", p);
    }
    let out = cmd.output().expect("juicefs fsck");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "juicefs fsck of {meta_url}/{db} found problems:\n{text}");
}
