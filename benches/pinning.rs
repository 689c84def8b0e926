//! Benchmark (not a test): what local-master pinning buys. On a simulated node (a
//! network namespace), the same JuiceFS file system is mounted twice: once against
//! the node's own metadata server (pinned, what kelp does) and once against a remote
//! master behind an injected one-way delay (2 ms, then 10 ms). Both run the same
//! small-file workloads in the same process; the table gives ops/s and the ratio.
//!
//! Run: `cargo bench --bench pinning` (root, FUSE, `ip netns`). Remote runs are
//! bounded in time per phase, so at 10 ms they cover fewer files than the local run;
//! ops/s compare rates, not totals.

#[path = "../tests/common/mod.rs"]
mod common;

use common::testbed::{Bed as Net, DelayProxy};
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const META_PORT: u16 = 6379;
const FILES: usize = 10_000;
/// Longest a remote phase may run.
const PHASE_BUDGET: Duration = Duration::from_secs(25);

/// Runs `op` for i in 0..n until done or the budget is spent; returns ops/s and count.
fn timed(n: usize, budget: Duration, mut op: impl FnMut(usize)) -> (f64, usize) {
    let start = Instant::now();
    let mut done = 0;
    while done < n && start.elapsed() < budget {
        op(done);
        done += 1;
    }
    (done as f64 / start.elapsed().as_secs_f64(), done)
}

struct Result {
    create: f64,
    stat: f64,
    delete: f64,
    git: f64,
    files: usize,
}

fn small_files(dir: &Path, budget: Duration) -> Result {
    let d = dir.join(format!("small-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let (create, files) = timed(FILES, budget, |i| std::fs::write(d.join(format!("f{i}")), b"x").unwrap());
    let (stat, _) = timed(files, budget, |i| {
        std::fs::metadata(d.join(format!("f{i}"))).unwrap();
    });
    let (delete, _) = timed(files, budget, |i| {
        let _ = std::fs::remove_file(d.join(format!("f{i}")));
    });
    let _ = std::fs::remove_dir_all(&d);
    // git-like: objects written to a lock file then renamed into place, in fan-out
    // directories, then the tree walked (what a checkout or commit does).
    let g = dir.join(format!("git-{}", std::process::id()));
    for fan in 0..16 {
        std::fs::create_dir_all(g.join(format!("objects/{fan:02x}"))).unwrap();
    }
    let (git, _) = timed(FILES / 4, budget, |i| {
        let dir = g.join(format!("objects/{:02x}", i % 16));
        let lock = dir.join(format!("o{i}.lock"));
        std::fs::write(&lock, b"blob").unwrap();
        std::fs::rename(&lock, dir.join(format!("o{i}"))).unwrap();
        std::fs::metadata(dir.join(format!("o{i}"))).unwrap();
    });
    let _ = std::fs::remove_dir_all(&g);
    Result { create, stat, delete, git, files }
}

fn mount(net: &Net, node: usize, url: &str, at: &Path, log: &Path) {
    std::fs::create_dir_all(at).unwrap();
    let out = net
        .command(node, "juicefs")
        .args(["mount", "-d", "--no-usage-report", "--backup-meta=0", "--metrics=127.0.0.1:0"])
        .arg(format!("--cache-dir={}", at.with_extension("cache").display()))
        .arg(format!("--log={}", log.display()))
        .arg(url)
        .arg(at)
        .output()
        .unwrap();
    assert!(out.status.success(), "mount {url}: {}", String::from_utf8_lossy(&out.stderr));
}

fn main() {
    let net = Net::new(2);
    let bridge = net.bridge_ip();
    let weed = Weed::start_at(&bridge.to_string());
    let n0 = net.nodes()[0].ip;
    let mut redis = Vec::new();
    let replication = DelayProxy::start(
        format!("{bridge}:0").parse().unwrap(),
        format!("{n0}:{META_PORT}").parse().unwrap(),
        Duration::from_millis(2),
    );
    for i in 0..2 {
        let mut cmd = net.command(i, "redis-server");
        cmd.args([
            "--bind",
            "0.0.0.0",
            "--port",
            &META_PORT.to_string(),
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--repl-diskless-sync-delay",
            "0",
        ])
        .arg("--dir")
        .arg(scratch("pinbench-redis"))
        .stdout(std::process::Stdio::null());
        if i == 1 {
            cmd.args([
                "--replicaof",
                &bridge.to_string(),
                &replication.addr.port().to_string(),
                "--replica-read-only",
                "no",
            ]);
        }
        redis.push(Proc { child: cmd.spawn().unwrap(), name: "redis-server" });
        assert!(wait_addr(&net.nodes()[i].ip.to_string(), META_PORT, Duration::from_secs(10)));
    }
    let fmt = Command::new("juicefs")
        .args(["format", "--no-update", "--storage=s3", "--trash-days=0"])
        .arg(format!("--bucket={}/kelp-pinbench", weed.s3_endpoint()))
        .arg(format!("--access-key={S3_ACCESS_KEY}"))
        .env("SECRET_KEY", S3_SECRET_KEY)
        .arg(format!("redis://{n0}:{META_PORT}/1"))
        .arg("pinbench")
        .output()
        .unwrap();
    assert!(fmt.status.success(), "{}", String::from_utf8_lossy(&fmt.stderr));
    // Let the replica catch up with the format.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Command::new("redis-cli")
        .args([
            "-h",
            &net.nodes()[1].ip.to_string(),
            "-p",
            &META_PORT.to_string(),
            "-n",
            "1",
            "exists",
            "setting",
        ])
        .output()
        .map(|o| o.stdout.starts_with(b"1"))
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "replica never got the format");
        std::thread::sleep(Duration::from_millis(100));
    }

    let root = scratch("pinbench");
    let local = root.join("local");
    mount(&net, 1, &format!("redis://127.0.0.1:{META_PORT}/1"), &local, &root.join("local.log"));
    let local_r = small_files(&local, Duration::from_secs(600));

    println!("## pinning: small-file metadata work on node 1, {FILES} files local");
    println!("| one-way delay | workload | local master ops/s | remote master ops/s | local / remote |");
    println!("|---|---|---:|---:|---:|");
    for delay_ms in [2u64, 10] {
        let remote_proxy = DelayProxy::start(
            format!("{bridge}:0").parse().unwrap(),
            format!("{n0}:{META_PORT}").parse().unwrap(),
            Duration::from_millis(delay_ms),
        );
        let remote = root.join(format!("remote-{delay_ms}"));
        mount(
            &net,
            1,
            &format!("redis://{bridge}:{}/1", remote_proxy.addr.port()),
            &remote,
            &root.join(format!("remote-{delay_ms}.log")),
        );
        let r = small_files(&remote, PHASE_BUDGET);
        for (what, l, m) in [
            ("create", local_r.create, r.create),
            ("stat", local_r.stat, r.stat),
            ("delete", local_r.delete, r.delete),
            ("git-like objects (write lock, rename, stat)", local_r.git, r.git),
        ] {
            println!("| {delay_ms} ms | {what} | {l:.0} | {m:.0} | {:.1}x |", l / m);
        }
        eprintln!(
            "(remote at {delay_ms} ms covered {} of {FILES} files within its {} s budget per phase)",
            r.files,
            PHASE_BUDGET.as_secs()
        );
        let _ = Command::new("umount").arg(&remote).status();
        drop(remote_proxy);
    }
    let _ = Command::new("umount").arg(&local).status();
    eprintln!("local run covered {} files", local_r.files);
    drop(redis);
    drop(weed);
}
