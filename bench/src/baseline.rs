//! The measurements against a by-hand juicefs baseline, run in the same process:
//!
//! - `provision`: CreateVolume/DeleteVolume latency (p50/p99) and throughput through a
//!   running kelp, against `juicefs format` (which also creates the bucket) on the same
//!   servers.
//! - `node`: NodeStageVolume-to-ready time against a by-hand `juicefs mount -d`, and
//!   sequential I/O and small-file creates through a kelp publish against the directly
//!   mounted file system; peak RSS of the driver with many volumes staged.
//! - `durability`: what kelp's durable defaults cost (`appendfsync always` on the
//!   metadata server, a SeaweedFS fsync rule per bucket) against `everysec` and
//!   `durability=relaxed`, on fsync'd small-file creates and sequential writes,
//!   the settings alternating round by round on the same servers.

use crate::args::BenchArgs;
use crate::common::{
    cap, create, get_metrics, meta_db, publish_one, release_one, synced_small_files, write_synced,
};
use crate::error::{Error, Result};
use kelp::proto::csi::{
    controller_client::ControllerClient, node_client::NodeClient, DeleteVolumeRequest,
    NodePublishVolumeRequest, NodeStageVolumeRequest, NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest,
};
use kelp::volume::VolumeId;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

struct Stats {
    p50: f64,
    p99: f64,
    per_sec: f64,
}

fn stats(mut ms: Vec<f64>, wall: Duration) -> Stats {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Stats { p50: pct(&ms, 0.5), p99: pct(&ms, 0.99), per_sec: ms.len() as f64 / wall.as_secs_f64() }
}

fn progress(what: &str, i: usize, n: usize) {
    if i.is_multiple_of(20) || i == n {
        eprint!("\r{what}: {i}/{n}   ");
        let _ = std::io::stderr().flush();
        if i == n {
            eprintln!();
        }
    }
}

fn redis_flush(meta: &str, db: u32) {
    let _ = Command::new("redis-cli").args(["-u", &meta_db(meta, db), "flushdb"]).output();
}

pub(crate) async fn provision(a: &BenchArgs, ch: Channel, count: usize, baseline_db: u32) -> Result<()> {
    let mut ctl = ControllerClient::new(ch);
    // kelp CreateVolume
    let mut create_ms = Vec::with_capacity(count);
    let mut ids = Vec::with_capacity(count);
    let start = Instant::now();
    for i in 0..count {
        let t = Instant::now();
        let v = ctl.create_volume(create(format!("bench-{i}"), 1)).await?;
        create_ms.push(t.elapsed().as_secs_f64() * 1e3);
        ids.push(v.into_inner().volume.unwrap_or_default().volume_id);
        progress("kelp CreateVolume", i + 1, count);
    }
    let create = stats(create_ms, start.elapsed());
    let mut delete_ms = Vec::with_capacity(count);
    let start = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        let t = Instant::now();
        ctl.delete_volume(DeleteVolumeRequest { volume_id: id.clone(), secrets: Default::default() }).await?;
        delete_ms.push(t.elapsed().as_secs_f64() * 1e3);
        progress("kelp DeleteVolume", i + 1, count);
    }
    let delete = stats(delete_ms, start.elapsed());

    // Baseline: `juicefs format` creating the bucket and the file system, same servers.
    let mut base_ms = Vec::with_capacity(count);
    let start = Instant::now();
    for i in 0..count {
        let db = baseline_db + i as u32;
        redis_flush(&a.meta_url, db);
        let t = Instant::now();
        let out = Command::new("juicefs")
            .args(["format", "--no-update", "--storage=s3", "--capacity=1"])
            .arg(format!("--bucket={}/base-{i}", a.s3_endpoint.trim_end_matches('/')))
            .arg(format!("--access-key={}", a.s3_access_key))
            .env("SECRET_KEY", &a.s3_secret_key)
            .arg(meta_db(&a.meta_url, db))
            .arg(format!("base-{i}"))
            .output()
            .map_err(crate::error::io("running juicefs format"))?;
        base_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if !out.status.success() {
            return Err(Error::Refused(format!(
                "juicefs format failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        progress("baseline juicefs format", i + 1, count);
    }
    let base = stats(base_ms, start.elapsed());
    for i in 0..count {
        redis_flush(&a.meta_url, baseline_db + i as u32);
    }

    println!("## provision: {count} volumes");
    println!("| operation | p50 ms | p99 ms | volumes/s |");
    println!("|---|---:|---:|---:|");
    println!("| kelp CreateVolume | {:.2} | {:.2} | {:.1} |", create.p50, create.p99, create.per_sec);
    println!("| kelp DeleteVolume | {:.2} | {:.2} | {:.1} |", delete.p50, delete.p99, delete.per_sec);
    println!(
        "| baseline `juicefs format` (+ bucket) | {:.2} | {:.2} | {:.1} |",
        base.p50, base.p99, base.per_sec
    );
    println!("CreateVolume p50 speed-up over the baseline: {:.1}x", base.p50 / create.p50);
    println!("(baseline buckets base-0..base-{} are left in SeaweedFS for the caller to drop)", count - 1);
    Ok(())
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Sequential write (ending in fsync) then read of `mib` MiB through `dir`. Both sides
/// read data they just wrote, so both read through the same cache state.
fn seq_io(dir: &Path, mib: usize) -> (f64, f64) {
    let path = dir.join("seq.bin");
    let w = write_synced(&path, mib);
    let t = Instant::now();
    let data = std::fs::read(&path).expect("read");
    let r = (data.len() >> 20) as f64 / t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    (w, r)
}

/// Reads or sets one setting of the metadata server through redis-cli.
fn meta_config(meta: &str, set: Option<(&str, &str)>, get: &str) -> String {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-u", meta, "--no-auth-warning", "config"]);
    match set {
        Some((k, v)) => cmd.args(["set", k, v]),
        None => cmd.args(["get", get]),
    };
    let out = cmd.output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    out.lines().nth(1).unwrap_or(out.trim()).trim().to_string()
}

pub(crate) async fn durability(
    a: &BenchArgs,
    ch: Channel,
    rounds: usize,
    files: usize,
    seq_mib: usize,
) -> Result<()> {
    let mut ctl = ControllerClient::new(ch.clone());
    let mut node = NodeClient::new(ch);
    let strict = publish_one(a, &mut ctl, &mut node, "dbench-strict", &[]).await?;
    let relaxed = publish_one(a, &mut ctl, &mut node, "dbench-relaxed", &[("durability", "relaxed")]).await?;
    let original = meta_config(&a.meta_url, None, "appendfsync");
    // (label, metadata appendfsync, volume): kelp's default first.
    let configs = [
        ("kelp's default: appendfsync always, durability=strict", "always", &strict),
        ("appendfsync everysec, durability=strict", "everysec", &strict),
        ("appendfsync always, durability=relaxed", "always", &relaxed),
        ("appendfsync everysec, durability=relaxed", "everysec", &relaxed),
    ];
    let (mut creates, mut writes) = (vec![vec![]; configs.len()], vec![vec![]; configs.len()]);
    for round in 0..rounds {
        for k in 0..configs.len() {
            // Rotate which configuration goes first, so none always meets a warm cache.
            let i = (k + round) % configs.len();
            let (_, fsync, vol) = configs[i];
            meta_config(&a.meta_url, Some(("appendfsync", fsync)), "");
            creates[i].push(synced_small_files(&vol.target, files));
            writes[i].push(seq_io(&vol.target, seq_mib).0);
        }
        progress("durability rounds", round + 1, rounds);
    }
    meta_config(&a.meta_url, Some(("appendfsync", &original)), "");

    let med = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let labels: Vec<&str> = configs.iter().map(|(l, _, _)| *l).collect();
    release_one(&mut ctl, &mut node, strict).await?;
    release_one(&mut ctl, &mut node, relaxed).await?;
    let (c0, w0) = (med(&creates[0]), med(&writes[0]));
    println!("## durability: {rounds} rounds, medians, ratios against kelp's default");
    println!("| setting | fsync'd 4 KiB creates/s ({files} files) | ratio | sequential write {seq_mib} MiB + fsync, MiB/s | ratio |");
    println!("|---|---:|---:|---:|---:|");
    for (i, label) in labels.iter().enumerate() {
        let (c, w) = (med(&creates[i]), med(&writes[i]));
        println!("| {label} | {c:.0} | {:.2} | {w:.0} | {:.2} |", c / c0, w / w0);
    }
    println!("(the server's appendfsync was {original:?} before and is again)");
    Ok(())
}

fn small_files(dir: &Path, n: usize) -> f64 {
    let d = dir.join("small");
    std::fs::create_dir_all(&d).expect("mkdir");
    let t = Instant::now();
    for i in 0..n {
        std::fs::write(d.join(format!("f{i}")), b"x").expect("write small file");
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&d);
    rate
}

/// Scrapes `addr`'s /metrics every `every`, starting at once, on a thread of its own
/// until finished; counts the scrapes that worked.
struct Scraper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Scraper {
    fn start(addr: &str, every: Duration) -> Scraper {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, addr) = (stop.clone(), addr.to_string());
        let thread = std::thread::spawn(move || {
            let mut ok = 0;
            while !flag.load(Ordering::Relaxed) {
                ok += get_metrics(&addr).is_some() as usize;
                let next = Instant::now() + every;
                while Instant::now() < next && !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            ok
        });
        Scraper { stop, thread: Some(thread) }
    }

    fn finish(mut self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

/// Which way a node benchmark round reaches the file system.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Kelp,
    Direct,
    KelpScraped,
}

pub(crate) async fn node(
    a: &BenchArgs,
    ch: Channel,
    kelp_pid: u32,
    volumes: usize,
    seq_mib: usize,
    files: usize,
    scraping: Option<(String, Duration)>,
) -> Result<()> {
    let mut ctl = ControllerClient::new(ch.clone());
    let mut node = NodeClient::new(ch);
    let rss_before = rss_kib(kelp_pid, "VmRSS:");

    // Stage `volumes` volumes, timing each; publish the first one.
    let mut stage_ms = Vec::new();
    let mut ids = Vec::new();
    for i in 0..volumes {
        let v = ctl
            .create_volume(create(format!("nbench-{i}"), 4))
            .await?
            .into_inner()
            .volume
            .unwrap_or_default();
        let staging = a.dir.join(format!("staged-{i}"));
        let t = Instant::now();
        node.node_stage_volume(NodeStageVolumeRequest {
            volume_id: v.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(cap()),
            ..Default::default()
        })
        .await?;
        stage_ms.push(t.elapsed().as_secs_f64() * 1e3);
        ids.push(v.volume_id);
        progress("kelp NodeStageVolume", i + 1, volumes);
    }
    let rss_staged = rss_kib(kelp_pid, "VmRSS:");
    let hwm = rss_kib(kelp_pid, "VmHWM:");
    let target = a.dir.join("published");
    node.node_publish_volume(NodePublishVolumeRequest {
        volume_id: ids[0].clone(),
        staging_target_path: a.dir.join("staged-0").display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(cap()),
        ..Default::default()
    })
    .await?;

    // Baseline: the same file system (the published volume's database), mounted by
    // hand with the same cache size, so the only difference is kelp's bind mount.
    let db = VolumeId::parse(&ids[0])
        .ok_or_else(|| Error::Refused(format!("unexpected volume id {:?}", ids[0])))?
        .db;
    let direct = a.dir.join("direct");
    std::fs::create_dir_all(&direct).map_err(crate::error::io(direct.display()))?;
    let mut mount_ms = Vec::new();
    for round in 0..5 {
        let t = Instant::now();
        let out = Command::new("juicefs")
            .args([
                "mount",
                "-d",
                "--no-usage-report",
                "--backup-meta=0",
                "--metrics=127.0.0.1:0",
                "--cache-size=1024",
            ])
            .arg(format!("--cache-dir={}", a.dir.join("direct-cache").display()))
            .arg(format!("--log={}", a.dir.join("direct.log").display()))
            .arg(meta_db(&a.meta_url, db))
            .arg(&direct)
            .output()
            .map_err(crate::error::io("running juicefs mount"))?;
        if !out.status.success() {
            return Err(Error::Refused(format!("juicefs mount: {}", String::from_utf8_lossy(&out.stderr))));
        }
        mount_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if round < 4 {
            let _ = Command::new("umount").arg(&direct).status();
        }
    }

    // Interleave kelp and direct runs so drift hits both alike.
    let (mut kw, mut kr, mut dw, mut dr, mut kf, mut df) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut sw, mut sr, mut sf, mut scrapes) = (vec![], vec![], vec![], 0);
    let mut sides = vec![Side::Kelp, Side::Direct];
    if scraping.is_some() {
        sides.push(Side::KelpScraped);
    }
    for round in 0..5 {
        eprint!("\rI/O round {}/5 ", round + 1);
        // Rotate which side goes first, so none always meets a warm or a busy machine.
        sides.rotate_left(1);
        for &side in &sides {
            let dir: &Path = if side == Side::Direct { &direct } else { &target };
            let scraper = match (&scraping, side) {
                (Some((addr, every)), Side::KelpScraped) => Some(Scraper::start(addr, *every)),
                _ => None,
            };
            let (w, r) = seq_io(dir, seq_mib);
            let f = small_files(dir, files);
            let (ws, rs, fs) = match side {
                Side::Kelp => (&mut kw, &mut kr, &mut kf),
                Side::Direct => (&mut dw, &mut dr, &mut df),
                Side::KelpScraped => (&mut sw, &mut sr, &mut sf),
            };
            ws.push(w);
            rs.push(r);
            fs.push(f);
            scrapes += scraper.map(Scraper::finish).unwrap_or(0);
        }
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (st, mt) = (stats(stage_ms, Duration::from_secs(1)), stats(mount_ms, Duration::from_secs(1)));

    // Clean up.
    let _ = Command::new("umount").arg(&direct).status();
    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: ids[0].clone(),
        target_path: target.display().to_string(),
    })
    .await?;
    for (i, id) in ids.iter().enumerate() {
        node.node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: a.dir.join(format!("staged-{i}")).display().to_string(),
        })
        .await?;
        ctl.delete_volume(DeleteVolumeRequest { volume_id: id.clone(), secrets: Default::default() }).await?;
    }

    println!("## node: {volumes} volumes staged, I/O through one publish");
    println!("| measure | kelp | baseline (same file system, direct `juicefs mount -d`) | kelp / baseline |");
    println!("|---|---:|---:|---:|");
    println!("| stage → ready, p50 ms | {:.0} | {:.0} | {:.2} |", st.p50, mt.p50, st.p50 / mt.p50);
    let (kw, dw, kr, dr, kf, df) = (med(kw), med(dw), med(kr), med(dr), med(kf), med(df));
    println!("| sequential write {seq_mib} MiB, MiB/s | {kw:.0} | {dw:.0} | {:.2} |", kw / dw);
    println!("| sequential read {seq_mib} MiB, MiB/s | {kr:.0} | {dr:.0} | {:.2} |", kr / dr);
    println!("| small-file creates/s ({files} files) | {kf:.0} | {df:.0} | {:.2} |", kf / df);
    if !sw.is_empty() {
        let (sw, sr, sf) = (med(sw), med(sr), med(sf));
        println!();
        let every = scraping.as_ref().map(|(_, e)| e.as_secs()).unwrap_or(0);
        println!(
            "## the metrics endpoint's cost: kelp while /metrics is scraped every {every} s ({scrapes} scrapes, {volumes} volumes staged)"
        );
        println!("| measure | kelp, scraped | kelp | scraped / not |");
        println!("|---|---:|---:|---:|");
        println!("| sequential write {seq_mib} MiB, MiB/s | {sw:.0} | {kw:.0} | {:.3} |", sw / kw);
        println!("| sequential read {seq_mib} MiB, MiB/s | {sr:.0} | {kr:.0} | {:.3} |", sr / kr);
        println!("| small-file creates/s ({files} files) | {sf:.0} | {kf:.0} | {:.3} |", sf / kf);
    }
    println!(
        "kelp serve RSS: {:.1} MiB before, {:.1} MiB with {volumes} staged, peak {:.1} MiB",
        rss_before as f64 / 1024.0,
        rss_staged as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    Ok(())
}
