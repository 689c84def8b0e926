//! `kelp-bench datapath`: kelp side by side with what a Swarm user would otherwise
//! run, on the same SeaweedFS and the same machine, in the same process: a kelp
//! publish target, a raw `juicefs mount` of the same file system, a `weed mount` of a
//! filer directory (what the Go SeaweedFS CSI driver runs per volume), and local
//! disk as the physical limit. Every round runs every workload on every target, the
//! targets in rotating order; the table shows medians and kelp's ratio to `weed
//! mount`, as speed (above 1: kelp is faster).

use crate::args::BenchArgs;
use crate::common::{median, publish_one, release_one, synced_small_files};
use crate::error::{Error, Result};
use kelp::proto::csi::{controller_client::ControllerClient, node_client::NodeClient};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// The ways to the file system that are compared.
const TARGETS: [&str; 4] = ["kelp", "juicefs mount", "weed mount", "local disk"];

/// How long after its own last workload a mount's memory is read: long enough for a
/// workload's buffers to be handed back, the same for every mount.
const MEMORY_SETTLE: Duration = Duration::from_secs(10);

/// What one workload measured on one target: a rate (higher is better) or a time.
#[derive(Clone, Copy)]
enum Unit {
    Rate,
    Seconds,
}

/// One workload's result: its name, unit and value.
type Measured = (String, Unit, f64);

struct Row {
    name: String,
    unit: Unit,
    /// Per target, one value per round.
    values: [Vec<f64>; 4],
}

/// Drops the page cache, so a read meets the file system, not the kernel's copy.
fn drop_caches() {
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// A source tree to untar: `dirs` directories of `per_dir` files of 1 to 20 KiB
/// (about 22 MB for 100 x 20), packed once with tar.
fn make_tree(root: &Path, dirs: usize, per_dir: usize) -> Result<PathBuf> {
    let src = root.join("tree-src");
    let _ = std::fs::remove_dir_all(&src);
    for d in 0..dirs {
        let dir = src.join(format!("pkg{d}/src"));
        std::fs::create_dir_all(&dir).map_err(crate::error::io(dir.display()))?;
        for f in 0..per_dir {
            let size = 1024 * (1 + (d * 7 + f * 13) % 20);
            std::fs::write(dir.join(format!("mod{f}.rs")), vec![b'a' + (f % 26) as u8; size])
                .map_err(crate::error::io("writing the source tree"))?;
        }
    }
    let tar = root.join("tree.tar");
    let ok = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .map_err(crate::error::io("running tar"))?;
    if !ok.success() {
        return Err(Error::Refused("tar could not pack the source tree".into()));
    }
    Ok(tar)
}

/// Every path under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// What juicefs counted for one volume, from kelp's /metrics (which carries each
/// volume's juicefs metrics labelled `kelp_volume`): FUSE requests, metadata
/// transactions and object requests, each as a count and the seconds they took.
#[derive(Default, Clone, Copy)]
struct Spent {
    fuse: (f64, f64),
    txn: (f64, f64),
    put: (f64, f64),
    get: (f64, f64),
}

impl Spent {
    fn read(addr: &str, volume: &str) -> Spent {
        let text = crate::common::get_metrics(addr).unwrap_or_default();
        let label = format!("kelp_volume=\"{volume}\"");
        let mut s = Spent::default();
        for line in text.lines().filter(|l| l.contains(&label)) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let v: f64 = value.parse().unwrap_or(0.0);
            let name = series.split('{').next().unwrap_or_default();
            let Some((family, part)) = name.rsplit_once('_') else { continue };
            let slot = match family {
                "juicefs_fuse_ops_durations_histogram_seconds" => &mut s.fuse,
                "juicefs_transaction_durations_histogram_seconds" => &mut s.txn,
                "juicefs_object_request_durations_histogram_seconds" if series.contains("method=\"PUT\"") => {
                    &mut s.put
                }
                "juicefs_object_request_durations_histogram_seconds" if series.contains("method=\"GET\"") => {
                    &mut s.get
                }
                _ => continue,
            };
            match part {
                "count" => slot.0 += v,
                "sum" => slot.1 += v,
                _ => {}
            }
        }
        s
    }

    fn since(self, before: Spent) -> Spent {
        let d = |a: (f64, f64), b: (f64, f64)| (a.0 - b.0, a.1 - b.1);
        Spent {
            fuse: d(self.fuse, before.fuse),
            txn: d(self.txn, before.txn),
            put: d(self.put, before.put),
            get: d(self.get, before.get),
        }
    }
}

/// Takes [`Spent`] laps of one volume, workload after workload.
struct Profiler<'a> {
    addr: &'a str,
    volume: &'a str,
    last: Spent,
}

impl Profiler<'_> {
    fn lap(&mut self) -> Spent {
        let now = Spent::read(self.addr, self.volume);
        let lap = now.since(self.last);
        self.last = now;
        lap
    }
}

/// One round of every workload in `dir`: (name, unit, value), and with a profiler,
/// what juicefs counted during each.
fn workloads(
    dir: &Path,
    tar: &Path,
    seq_mib: usize,
    files: usize,
    mut prof: Option<Profiler>,
) -> (Vec<Measured>, Vec<Spent>) {
    let (out, laps) = run_workloads(dir, tar, seq_mib, files, &mut || prof.as_mut().map(Profiler::lap));
    (out, laps.into_iter().flatten().collect())
}

fn run_workloads(
    dir: &Path,
    tar: &Path,
    seq_mib: usize,
    files: usize,
    lap: &mut dyn FnMut() -> Option<Spent>,
) -> (Vec<Measured>, Vec<Option<Spent>>) {
    let mut out = Vec::new();
    let mut laps = Vec::new();
    lap();
    let w = seq_write(dir, seq_mib);
    rec(&mut out, &mut laps, lap, (format!("sequential write {seq_mib} MiB, fsync, MiB/s"), Unit::Rate, w));
    drop_caches();
    let t = Instant::now();
    let data = std::fs::read(dir.join("seq.bin")).unwrap_or_default();
    rec(
        &mut out,
        &mut laps,
        lap,
        (
            format!("sequential read {seq_mib} MiB after drop_caches, MiB/s"),
            Unit::Rate,
            (data.len() >> 20) as f64 / secs(t),
        ),
    );
    let _ = std::fs::remove_file(dir.join("seq.bin"));
    rec(
        &mut out,
        &mut laps,
        lap,
        (format!("{files} creates with fsync, per s"), Unit::Rate, synced_small_files(dir, files)),
    );
    let tree = dir.join("tree");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(&tree).expect("mkdir tree");
    let t = Instant::now();
    let untarred =
        Command::new("tar").arg("-xf").arg(tar).arg("-C").arg(&tree).status().is_ok_and(|s| s.success());
    let untar = secs(t);
    if untarred {
        rec(&mut out, &mut laps, lap, ("untar of the source tree, s".into(), Unit::Seconds, untar));
    }
    drop_caches();
    let t = Instant::now();
    let paths = walk(&tree);
    rec(&mut out, &mut laps, lap, ("cold find, s".into(), Unit::Seconds, secs(t)));
    let t = Instant::now();
    let _ = walk(&tree);
    rec(&mut out, &mut laps, lap, ("warm find, s".into(), Unit::Seconds, secs(t)));
    drop_caches();
    let t = Instant::now();
    let statted = paths.iter().filter(|p| std::fs::symlink_metadata(p).is_ok()).count();
    rec(
        &mut out,
        &mut laps,
        lap,
        (format!("cold stat of {statted} entries, per s"), Unit::Rate, statted as f64 / secs(t)),
    );
    let t = Instant::now();
    let _ = Command::new("ls").arg("-lR").arg(&tree).stdout(Stdio::null()).status();
    rec(&mut out, &mut laps, lap, ("ls -lR, s".into(), Unit::Seconds, secs(t)));
    let t = Instant::now();
    let _ = std::fs::remove_dir_all(&tree);
    rec(&mut out, &mut laps, lap, ("rm -rf of the tree, s".into(), Unit::Seconds, secs(t)));
    (out, laps)
}

/// Keeps one workload's result, and what juicefs counted during it.
fn rec(
    out: &mut Vec<Measured>,
    laps: &mut Vec<Option<Spent>>,
    lap: &mut dyn FnMut() -> Option<Spent>,
    item: Measured,
) {
    out.push(item);
    laps.push(lap());
}

/// Writes `mib` MiB and fsyncs them, leaving the file for a cold read; MiB/s.
fn seq_write(dir: &Path, mib: usize) -> f64 {
    crate::common::write_synced(&dir.join("seq.bin"), mib)
}

/// Memory (KiB) of `pids`, as two figures: private (pages no other process maps,
/// file-backed ones included) and anonymous (heap and stacks). The first is what the
/// issue asked for, but it counts the program's own code when it is the only process
/// running that binary, which a second volume's daemon then shares for free; the
/// second is what each further volume costs.
fn memory_kib(pids: &[i32]) -> (u64, u64) {
    let field = |text: &str, names: &[&str]| -> u64 {
        text.lines()
            .filter(|l| names.iter().any(|n| l.starts_with(n)))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum()
    };
    pids.iter()
        .map(|p| {
            let text = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).unwrap_or_default();
            (field(&text, &["Private_Clean:", "Private_Dirty:"]), field(&text, &["Anonymous:"]))
        })
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

fn pids_with(arg: &str) -> Vec<i32> {
    crate::procs::with_arg(arg)
}

/// Waits until `dir` is a mount that answers, up to `within`.
fn wait_mounted(dir: &Path, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(&dir.display().to_string())));
        if mounted && std::fs::read_dir(dir).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// A `weed mount` of the filer's `path` at `dir`, timed until it answers.
fn weed_mount(filer: &str, path: &str, dir: &Path, cache: &Path) -> Result<(Child, f64)> {
    std::fs::create_dir_all(dir).map_err(crate::error::io(dir.display()))?;
    let t = Instant::now();
    let child = Command::new("weed")
        .arg("mount")
        .arg(format!("-filer={filer}"))
        .arg(format!("-filer.path={path}"))
        .arg(format!("-dir={}", dir.display()))
        .arg(format!("-cacheDir={}", cache.display()))
        .arg("-cacheCapacityMB=1024")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(crate::error::io("running weed mount"))?;
    if !wait_mounted(dir, Duration::from_secs(30)) {
        return Err(Error::Refused(format!(
            "weed mount of {path} at {} did not answer in 30 s",
            dir.display()
        )));
    }
    Ok((child, secs(t) * 1000.0))
}

fn unmount(dir: &Path) {
    let _ = Command::new("umount").arg(dir).status();
}

pub async fn run(
    a: &BenchArgs,
    ch: Channel,
    filer: &str,
    rounds: usize,
    seq_mib: usize,
    files: usize,
    metrics_addr: Option<&str>,
) -> Result<()> {
    let mut ctl = ControllerClient::new(ch.clone());
    let mut node = NodeClient::new(ch);
    std::fs::create_dir_all(&a.dir).map_err(crate::error::io(a.dir.display()))?;
    let tar = make_tree(&a.dir, 100, 20)?;

    // Stage until usable: kelp (a fresh volume each time), raw juicefs and weed mount.
    let mut stage_ms: [Vec<f64>; 3] = Default::default();
    for i in 0..5 {
        let t = Instant::now();
        let p = publish_one(a, &mut ctl, &mut node, &format!("dp-stage-{i}"), &[]).await?;
        stage_ms[0].push(secs(t) * 1000.0);
        let db = kelp::volume::VolumeId::parse(&p.id).map(|id| id.db).unwrap_or(0);
        let direct = a.dir.join(format!("dp-direct-{i}"));
        std::fs::create_dir_all(&direct).map_err(crate::error::io(direct.display()))?;
        let t = Instant::now();
        let ok = Command::new("juicefs")
            .args(["mount", "-d", "--no-usage-report", "--backup-meta=0", "--cache-size=1024"])
            .stderr(Stdio::null())
            .arg(format!("--cache-dir={}", a.dir.join("dp-direct-cache").display()))
            .arg(format!("--log={}", a.dir.join(format!("dp-direct-{i}.log")).display()))
            .arg(crate::common::meta_db(&a.meta_url, db))
            .arg(&direct)
            .status()
            .map_err(crate::error::io("running juicefs mount"))?;
        if ok.success() {
            stage_ms[1].push(secs(t) * 1000.0);
        }
        unmount(&direct);
        let (mut weed, ms) = weed_mount(
            filer,
            &format!("/dp-stage-{i}"),
            &a.dir.join(format!("dp-weed-{i}")),
            &a.dir.join("dp-weed-cache"),
        )?;
        stage_ms[2].push(ms);
        unmount(&a.dir.join(format!("dp-weed-{i}")));
        let _ = weed.kill();
        let _ = weed.wait();
        release_one(&mut ctl, &mut node, p).await?;
        eprint!("\rstage-until-usable round {}/5 ", i + 1);
    }

    // The targets for the workloads.
    let kelp = publish_one(a, &mut ctl, &mut node, "dp-kelp", &[]).await?;
    let kelp_fs = kelp::volume::VolumeId::parse(&kelp.id).map(|id| id.fs_name).unwrap_or_default();
    // Its juicefs's log, which names the process, is named after the mount (the file
    // system and, for a tree-layout volume, its member), not after the file system.
    let kelp_mount = kelp::volume::VolumeId::parse(&kelp.id).map(|id| id.mount_name()).unwrap_or_default();
    let db = kelp::volume::VolumeId::parse(&kelp.id).map(|id| id.db).unwrap_or(0);
    let direct = a.dir.join("dp-direct");
    std::fs::create_dir_all(&direct).map_err(crate::error::io(direct.display()))?;
    let direct_log = a.dir.join("dp-direct.log");
    let ok = Command::new("juicefs")
        .args(["mount", "-d", "--no-usage-report", "--backup-meta=0", "--cache-size=1024"])
        .stderr(Stdio::null())
        .arg(format!("--cache-dir={}", a.dir.join("dp-direct-cache").display()))
        .arg(format!("--log={}", direct_log.display()))
        .arg(crate::common::meta_db(&a.meta_url, db))
        .arg(&direct)
        .status()
        .map_err(crate::error::io("running juicefs mount"))?;
    if !ok.success() {
        return Err(Error::Refused("juicefs mount of the kelp volume failed".into()));
    }
    let weed_dir = a.dir.join("dp-weed");
    let (mut weed, _) = weed_mount(filer, "/dp-weed", &weed_dir, &a.dir.join("dp-weed-cache"))?;
    let local = a.dir.join("dp-local");
    let dirs: [PathBuf; 4] =
        [kelp.target.join("w"), direct.join("w-direct"), weed_dir.join("w"), local.clone()];
    for d in &dirs {
        std::fs::create_dir_all(d).map_err(crate::error::io(d.display()))?;
    }
    // Private memory of each mount's processes, idle.
    let mem = |which: usize| -> (u64, u64) {
        match which {
            0 => memory_kib(&kelp_juicefs_pids(&kelp_mount)),
            1 => memory_kib(&pids_with(&format!("--log={}", direct_log.display()))),
            2 => memory_kib(&[weed.id() as i32]),
            _ => (0, 0),
        }
    };
    let idle: Vec<(u64, u64)> = (0..3).map(mem).collect();
    // Memory after the workloads is read for each mount the same time after its own
    // last workload: read once at the end, the mount that ran last in the final
    // rotation would be caught mid-release while the others had minutes to return
    // memory, which made kelp look 8x heavier than the same juicefs in earlier runs.
    let mut busy: Vec<(u64, u64)> = vec![(0, 0); 3];

    let mut rows: Vec<Row> = Vec::new();
    let mut profile: Vec<(String, Spent)> = Vec::new();
    let mut order: Vec<usize> = (0..4).collect();
    for round in 0..rounds {
        order.rotate_left(1);
        for &t in &order {
            eprint!("\rround {}/{rounds}: {:<14}", round + 1, TARGETS[t]);
            let prof = metrics_addr.filter(|_| t == 0).map(|addr| Profiler {
                addr,
                volume: &kelp_fs,
                last: Spent::default(),
            });
            let (results, laps) = workloads(&dirs[t], &tar, seq_mib, files, prof);
            if !laps.is_empty() {
                profile = results.iter().map(|r| r.0.clone()).zip(laps).collect();
            }
            for (name, unit, v) in results {
                let row = match rows.iter_mut().position(|r| r.name == name) {
                    Some(i) => &mut rows[i],
                    None => {
                        rows.push(Row { name, unit, values: Default::default() });
                        rows.last_mut().expect("just pushed")
                    }
                };
                row.values[t].push(v);
            }
            if round + 1 == rounds && t < busy.len() {
                std::thread::sleep(MEMORY_SETTLE);
                busy[t] = mem(t);
            }
        }
    }
    eprintln!();

    println!("## datapath: {rounds} rounds, medians; kelp / weed as speed (above 1: kelp faster)");
    println!("| workload | kelp | juicefs mount | weed mount | local disk | kelp / weed |");
    println!("|---|---:|---:|---:|---:|---:|");
    let st: Vec<f64> = stage_ms.iter().map(|v| median(v)).collect();
    println!(
        "| stage (kelp) or mount until usable, p50 ms | {:.0} | {:.0} | {:.0} | - | {:.2} |",
        st[0],
        st[1],
        st[2],
        st[2] / st[0]
    );
    for r in &rows {
        let m: Vec<f64> = r.values.iter().map(|v| median(v)).collect();
        let ratio = match r.unit {
            Unit::Rate => m[0] / m[2],
            Unit::Seconds => m[2] / m[0],
        };
        let fmt = |v: f64| match r.unit {
            Unit::Rate => format!("{v:.0}"),
            Unit::Seconds => format!("{v:.3}"),
        };
        println!(
            "| {} | {} | {} | {} | {} | {ratio:.2} |",
            r.name,
            fmt(m[0]),
            fmt(m[1]),
            fmt(m[2]),
            fmt(m[3])
        );
    }
    let mib = |k: u64| k as f64 / 1024.0;
    for (what, pick) in [("private", 0), ("anonymous", 1)] {
        let m = |t: usize| {
            let (i, b) = (idle[t], busy[t]);
            if pick == 0 {
                (i.0, b.0)
            } else {
                (i.1, b.1)
            }
        };
        let (k, j, w) = (m(0), m(1), m(2));
        println!(
            "| mount processes' {what} memory, idle / 10 s after its last workload, MiB | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | - | {:.2} / {:.2} |",
            mib(k.0),
            mib(k.1),
            mib(j.0),
            mib(j.1),
            mib(w.0),
            mib(w.1),
            w.0 as f64 / k.0.max(1) as f64,
            w.1 as f64 / k.1.max(1) as f64
        );
    }

    if !profile.is_empty() {
        println!();
        println!("## where kelp's time went (its juicefs's own counters, last round)");
        println!("| workload | FUSE requests | their s | metadata transactions | their s | object PUTs | their s | object GETs | their s |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (name, p) in &profile {
            println!(
                "| {name} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} | {:.2} |",
                p.fuse.0, p.fuse.1, p.txn.0, p.txn.1, p.put.0, p.put.1, p.get.0, p.get.1
            );
        }
        println!("(requests overlap: their seconds can add up to more than the workload took)");
    }

    unmount(&weed_dir);
    let _ = weed.kill();
    let _ = weed.wait();
    unmount(&direct);
    let _ = std::fs::remove_dir_all(&local);
    release_one(&mut ctl, &mut node, kelp).await?;
    Ok(())
}

/// The juicefs processes kelp runs for the volume mounted as `mount_name` (their
/// `--log=` ends in `logs/<mount name>.log`, wherever kelp's state directory is).
fn kelp_juicefs_pids(mount_name: &str) -> Vec<i32> {
    let suffix = format!("/logs/{mount_name}.log");
    crate::procs::with_an_arg(|a| a.starts_with("--log=") && a.ends_with(&suffix))
}
