//! Metadata backups on real servers (docs/operations.md, "Metadata backups"): files
//! written through kelp mounts, a backup, more writes, the whole metadata server
//! wiped (`FLUSHALL`), then the documented recovery: every file from before the
//! backup reads back with its checksum, the writes after it are reported lost, juicefs
//! fsck calls the file systems clean, and the same volume ids stage and take writes
//! again. And the schedule: one controller of two takes the backups, and the last
//! one's time is in `kelp admin volumes` and `/metrics`.

mod common;

use common::csi::{self, volume_capability::access_mode::Mode, Clients};
use common::*;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const GIB: i64 = 1 << 30;
const MODE: Mode = Mode::MultiNodeMultiWriter;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `kelp admin ... ARGS` against `redis` and `weed`: (success, stdout + stderr).
fn admin(redis: &Redis, weed: &Weed, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(kelp_bin());
    cmd.args(["admin", "--meta-url", &redis.url()]);
    if let Some(first) = args.first().filter(|a| **a == "backup") {
        cmd.args([*first, "--filer", &weed.filer_addr()]).args(&args[1..]);
    } else {
        cmd.args(args);
    }
    cmd.env("KELP_META_PASSWORD", redis.password.as_deref().unwrap_or_default());
    let out = cmd.output().expect("kelp admin");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

struct Vol {
    id: String,
    fs: String,
    staging: PathBuf,
    target: PathBuf,
}

/// A fresh metadata server, a kelp that backs up only on demand, and `names` volumes.
async fn bed(scratch_name: &str, names: &[&str]) -> (Redis, Kelp, Clients, PathBuf, Vec<Vol>) {
    bed_on(shared_weed(), scratch_name, names).await
}

/// [`bed`] on `weed`.
async fn bed_on(
    weed: &Weed,
    scratch_name: &str,
    names: &[&str],
) -> (Redis, Kelp, Clients, PathBuf, Vec<Vol>) {
    let redis = Redis::start(Some(META_PASSWORD));
    let kelp = KelpBuilder::new()
        .redis(&redis)
        .weed(weed)
        .args(["--repair-interval=1", "--idle-release=3", "--backup-interval=0"])
        .start();
    let root = scratch(scratch_name);
    let mut c = csi::connect(&kelp.endpoint).await;
    let mut vols = Vec::new();
    for name in names {
        let v = c.create(name, GIB).await.unwrap();
        vols.push(Vol {
            id: v.volume_id.clone(),
            fs: v.volume_context["fsName"].clone(),
            staging: root.join(format!("{name}-staging")),
            target: root.join(format!("{name}-target")),
        });
    }
    (redis, kelp, c, root, vols)
}

/// [`bed`] with one volume, staged and published.
async fn one_mounted(scratch_name: &str, name: &str) -> (Redis, Kelp, Clients, PathBuf, Vol) {
    let (redis, kelp, mut c, root, mut vols) = bed(scratch_name, &[name]).await;
    let vol = vols.remove(0);
    mount(&mut c, &vol).await;
    (redis, kelp, c, root, vol)
}

/// The end of a [`one_mounted`] test: `vol` unmounted and deleted, nothing left mounted.
async fn finish(c: &mut Clients, vol: &Vol, root: &Path, kelp: &Kelp) {
    unmount(c, vol).await;
    delete(c, &vol.id).await;
    force_cleanup(root, &kelp.state_dir);
}

/// DeleteVolume, retried while it refuses because a JuiceFS session is still counted
/// (a client's session outlives its exit by up to two heartbeats, and a restore brings
/// back the sessions its backup saw, which then expire), as a CO retries.
async fn delete(c: &mut Clients, id: &str) {
    let done = poll_until_async(Duration::from_secs(90), Duration::from_secs(1), || {
        let (mut c, id) = (c.clone(), id.to_string());
        async move {
            match c.delete(&id).await {
                Err(e) if e.code() == tonic::Code::FailedPrecondition => None,
                done => Some(done),
            }
        }
    })
    .await;
    match done {
        Some(done) => done.unwrap(),
        None => c.delete(id).await.unwrap(),
    }
}

async fn mount(c: &mut Clients, v: &Vol) {
    c.stage(&v.id, &s(&v.staging), MODE).await.unwrap();
    c.publish(&v.id, &s(&v.staging), &s(&v.target), MODE, false).await.unwrap();
}

async fn unmount(c: &mut Clients, v: &Vol) {
    c.unpublish(&v.id, &s(&v.target)).await.unwrap();
    c.unstage(&v.id, &s(&v.staging)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wiped_metadata_server_is_restored_from_the_last_backup() {
    // Backups on demand only: the test decides which writes come before the backup.
    // A SeaweedFS of its own: `restore --all` finds every bucket with a backup.
    let weed = &Weed::start();
    let (redis, kelp, mut c, root, vols) = bed_on(weed, "backup-wipe", &["bk-alpha", "bk-beta"]).await;
    let mut before = Vec::new();
    for v in &vols {
        mount(&mut c, v).await;
        std::fs::create_dir_all(v.target.join("sub")).unwrap();
        let mut files = write_summed(&v.target, "before", 12);
        files.extend(
            write_summed(&v.target.join("sub"), "deep", 3).into_iter().map(|(n, h)| (format!("sub/{n}"), h)),
        );
        before.push(files);
    }

    let (ok, out) = admin(&redis, weed, &["backup", "now"]);
    assert!(ok, "{out}");
    for v in &vols {
        assert!(out.contains(&format!("{}: kelp-backups/", v.fs)), "{out}");
    }
    let (ok, listing) = admin(&redis, weed, &["backup", "list"]);
    assert!(ok && vols.iter().all(|v| listing.contains(&v.fs)), "{listing}");
    let (ok, table) = admin(&redis, weed, &["volumes"]);
    assert!(ok && table.contains(" s ago") && !table.contains("never"), "{table}");

    // Writes after the backup: new files and a change to an old one.
    let mut after = Vec::new();
    for v in &vols {
        after.push(write_summed(&v.target, "after", 4));
        unmount(&mut c, v).await;
    }

    // The whole metadata server is lost.
    assert_eq!(redis.cli(0, &["FLUSHALL"]), "OK");
    for v in &vols {
        assert_eq!(redis.cli(db_of(&v.id), &["DBSIZE"]), "0");
    }

    let started = std::time::Instant::now();
    let (ok, summary) = admin(&redis, weed, &["backup", "restore", "--all"]);
    let restore_secs = started.elapsed().as_secs_f64();
    assert!(ok, "{summary}");
    println!("restore of 2 volumes: {restore_secs:.2} s\n{summary}");
    for v in &vols {
        assert!(summary.contains(&format!("{}: restored from kelp-backups/", v.fs)), "{summary}");
        assert!(
            summary.contains(&format!("{}: LOST: ", v.fs)),
            "writes after the backup must be reported: {summary}"
        );
    }
    // A second restore over the restored databases is refused without --force.
    let (ok, again) = admin(&redis, weed, &["backup", "restore", &vols[0].fs]);
    assert!(!ok && again.contains("--force"), "{again}");

    for v in &vols {
        assert_fsck_clean(&redis.url(), redis.password.as_deref(), db_of(&v.id));
    }
    // The same ids, as Swarm keeps them, list, stage and take writes again.
    let listed = c.ctl.list_volumes(csi::ListVolumesRequest::default()).await.unwrap().into_inner();
    for v in &vols {
        assert!(listed.entries.iter().any(|e| e.volume.as_ref().unwrap().volume_id == v.id), "{listed:?}");
    }
    for (i, v) in vols.iter().enumerate() {
        mount(&mut c, v).await;
        for (name, sum) in &before[i] {
            assert_eq!(checksum(&v.target.join(name)).as_deref(), Some(sum.as_str()), "{name} of {}", v.fs);
        }
        for (name, _) in &after[i] {
            assert!(!v.target.join(name).exists(), "{name} was written after the backup");
        }
        let again = write_summed(&v.target, "again", 2);
        for (name, sum) in &again {
            assert_eq!(checksum(&v.target.join(name)).as_deref(), Some(sum.as_str()));
        }
        unmount(&mut c, v).await;
        assert_fsck_clean(&redis.url(), redis.password.as_deref(), db_of(&v.id));
    }
    for v in &vols {
        delete(&mut c, &v.id).await;
    }
    force_cleanup(&root, &kelp.state_dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_controller_of_two_takes_scheduled_backups_and_their_time_is_exported() {
    let redis = Redis::start(Some(META_PASSWORD));
    let weed = shared_weed();
    let addr = format!("127.0.0.1:{}", free_port());
    let start = |node: &str, metrics: Option<&str>| {
        let mut b = KelpBuilder::new().redis(&redis).weed(weed).services("controller").args([
            "--backup-interval=5".to_string(),
            "--backup-keep-hourly=1".to_string(),
            "--backup-keep-daily=0".to_string(),
            format!("--node-id={node}"),
        ]);
        if let Some(m) = metrics {
            b = b.arg(format!("--metrics-addr={m}"));
        }
        b.start()
    };
    let first = start("ctl-1", Some(&addr));
    let second = start("ctl-2", None);
    let mut c = csi::connect(&first.endpoint).await;
    let vol = c.create("bk-scheduled", GIB).await.unwrap();
    let fs = vol.volume_context["fsName"].clone();
    let exported = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("kelp_volume_last_backup_timestamp_seconds{") && l.contains(&fs))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    // Three backups, 5 s apart, from one controller only.
    let taken = poll_until(Duration::from_secs(60), Duration::from_secs(1), || {
        let logs = [first.log_text(), second.log_text()];
        let counts: Vec<usize> = logs.iter().map(|l| l.matches("metadata backed up").count()).collect();
        (counts.iter().sum::<usize>() >= 3).then_some(counts)
    });
    let counts = taken.expect("three scheduled backups within a minute");
    assert!(counts.contains(&0), "both controllers took backups: {counts:?}");
    let metrics = scrape(&addr);
    let t = exported(&metrics).unwrap_or_else(|| panic!("no last-backup time for {fs}:\n{metrics}"));
    assert!((kelp::unix_now() as f64 - t) < 30.0, "{t}");
    let interval = metrics.lines().find_map(|l| l.strip_prefix("kelp_backup_interval_seconds "));
    assert_eq!(interval.and_then(|v| v.parse::<f64>().ok()), Some(5.0), "{metrics}");
    // Retention: one hourly, no daily: only the newest object stays.
    let objects = objects_under(weed, &format!("/buckets/kelp-{fs}/kelp-backups"));
    assert!(objects <= 2, "retention keeps the newest (and one being written): {objects}");
    c.delete(&vol.volume_id).await.unwrap();
}

/// The cost of a backup and a restore of a volume of `KELP_BENCH_FILES` (default
/// 10,000) files of 4 KiB in 100 directories: time, bytes, and the longest a client
/// of the same server waited meanwhile (its stall). Not part of the suite:
/// `cargo test --test backup -- --ignored --nocapture backup_cost` (docs/benchmarks.md).
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn backup_cost() {
    let files: usize = std::env::var("KELP_BENCH_FILES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let (redis, kelp, mut c, root, vol) = one_mounted("backup-cost", "bk-cost").await;
    let weed = shared_weed();
    let started = std::time::Instant::now();
    // Four writers, 25 directories each: a FUSE round trip per call, not the CPU, is
    // what bounds one writer.
    std::thread::scope(|s| {
        for w in 0..4 {
            let target = &vol.target;
            s.spawn(move || {
                for d in (w..100).step_by(4) {
                    let dir = target.join(format!("d{d}"));
                    std::fs::create_dir_all(&dir).unwrap();
                    for f in 0..files / 100 {
                        std::fs::write(dir.join(format!("f{f}")), [d as u8; 4096]).unwrap();
                    }
                }
            });
        }
    });
    println!("wrote {files} files in {:.1} s", started.elapsed().as_secs_f64());
    unmount(&mut c, &vol).await;

    // A client of the same server pings throughout; its longest wait is the stall.
    let url = format!("redis://:{META_PASSWORD}@127.0.0.1:{}/0", redis.url().rsplit(':').next().unwrap());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
            let mut worst = Duration::ZERO;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = std::time::Instant::now();
                let _: String = redis::cmd("PING").query(&mut con).unwrap();
                worst = worst.max(t.elapsed());
                std::thread::sleep(Duration::from_millis(1));
            }
            worst
        })
    };
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let (ok, out) = admin(&redis, weed, &["backup", "now", &vol.fs]);
        assert!(ok, "{out}");
        rounds.push((t.elapsed().as_secs_f64(), out.trim().to_string()));
        std::thread::sleep(Duration::from_millis(1100)); // one object per second
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let worst = prober.join().unwrap();
    for (secs, out) in &rounds {
        println!("backup now: {secs:.2} s: {out}");
    }
    println!("longest PING of another client during the backups: {:.1} ms", worst.as_secs_f64() * 1000.0);
    // The objects live inline in the filer's entries, so a listing carries them whole.
    let t = std::time::Instant::now();
    let (ok, out) = admin(&redis, weed, &["backup", "list", &vol.fs]);
    assert!(ok, "{out}");
    let listed = out.lines().filter(|l| l.contains("kelp-backups/")).count();
    println!("backup list of {listed} objects: {:.2} s", t.elapsed().as_secs_f64());

    assert_eq!(redis.cli(0, &["FLUSHALL"]), "OK");
    let t = std::time::Instant::now();
    let (ok, out) = admin(&redis, weed, &["backup", "restore", &vol.fs]);
    assert!(ok, "{out}");
    println!("restore after FLUSHALL: {:.2} s\n{out}", t.elapsed().as_secs_f64());
    mount(&mut c, &vol).await;
    assert_eq!(std::fs::read_dir(vol.target.join("d99")).unwrap().count(), files / 100);
    finish(&mut c, &vol, &root, &kelp).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_taken_while_a_writer_runs_is_a_consistent_point_in_time() {
    let (redis, kelp, mut c, root, vol) = one_mounted("backup-writer", "bk-writer").await;
    let weed = shared_weed();
    // The writer: files of up to 1.5 MiB, each fsynced; (name, sha256, unix time of
    // the fsync's return).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, dir) = (stop.clone(), vol.target.clone());
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = format!("w-{i}");
                let data: Vec<u8> = (0..(i * 65_537) % (3 << 19) + 1).map(|j| (j * 13 + i) as u8).collect();
                let mut f = std::fs::File::create(dir.join(&name)).unwrap();
                std::io::Write::write_all(&mut f, &data).unwrap();
                f.sync_all().unwrap();
                acked.push((name, hex(&Sha256::digest(&data)), journal::unix_secs()));
                i += 1;
            }
            acked
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let (ok, out) = admin(&redis, weed, &["backup", "now"]);
    assert!(ok, "{out}");
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = writer.join().unwrap();
    unmount(&mut c, &vol).await;
    let object = out.split_whitespace().find(|w| w.starts_with("kelp-backups/")).unwrap();
    let taken = kelp::backup::policy::time_of(object.trim_start_matches("kelp-backups/")).unwrap() as f64;
    let before = acked.iter().filter(|(_, _, t)| *t < taken).count();
    assert!(
        before > 0 && before < acked.len(),
        "the writer must run across the backup: {before} of {}",
        acked.len()
    );

    assert_eq!(redis.cli(0, &["FLUSHALL"]), "OK");
    let (ok, summary) = admin(&redis, weed, &["backup", "restore", &vol.fs]);
    assert!(ok, "{summary}");
    assert_fsck_clean(&redis.url(), redis.password.as_deref(), db_of(&vol.id));
    mount(&mut c, &vol).await;
    for (name, sum, at) in &acked {
        match checksum(&vol.target.join(name)) {
            // Present: whole, whenever it was written.
            Some(got) if got == *sum => {}
            // A file the backup caught half written was not yet fsynced at the backup.
            Some(_) | None => assert!(
                *at >= taken,
                "{name}, fsynced at {at} before the backup at {taken}, is missing or damaged"
            ),
        }
    }
    finish(&mut c, &vol, &root, &kelp).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_is_restored_as_a_new_volume_while_its_original_is_written() {
    let (redis, kelp, mut c, root, orig) = one_mounted("backup-clone", "bk-orig").await;
    let weed = shared_weed();
    let before = write_summed(&orig.target, "before", 6);
    let (ok, out) = admin(&redis, weed, &["backup", "now", &orig.fs]);
    assert!(ok, "{out}");
    // After the backup the original grows (a file appended to, new files), and a
    // writer keeps writing it while the past is restored beside it. (Rewriting or
    // deleting a file would free objects the backup's tree still names.)
    let appended = orig.target.join("before-1");
    let mut f = std::fs::OpenOptions::new().append(true).open(&appended).unwrap();
    std::io::Write::write_all(&mut f, b"after the backup").unwrap();
    f.sync_all().unwrap();
    let appended_sum = checksum(&appended).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, dir) = (stop.clone(), orig.target.clone());
        std::thread::spawn(move || {
            let mut written = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                written.extend(write_summed(&dir, &format!("live{}", written.len()), 1));
            }
            written
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let (ok, out) = admin(&redis, weed, &["backup", "restore", &orig.fs, "--as", "bk-past"]);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let live = writer.join().unwrap();
    assert!(ok, "{out}");
    assert!(live.len() >= 2, "the writer ran across the restore: {live:?}");
    let past = Vol {
        id: out.split_whitespace().find(|w| w.starts_with("kelp1:")).unwrap().to_string(),
        fs: "bk-past".into(),
        staging: root.join("past-staging"),
        target: root.join("past-target"),
    };

    // The past: the files as they were at the backup, and nothing later.
    mount(&mut c, &past).await;
    for (name, sum) in &before {
        assert_eq!(checksum(&past.target.join(name)).as_deref(), Some(sum.as_str()), "{name} in the past");
    }
    let names = |dir: &Path| {
        let mut n: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.retain(|n| !n.starts_with('.'));
        n.sort();
        n
    };
    assert_eq!(names(&past.target).len(), before.len(), "{:?}", names(&past.target));
    // Both are independent: a write to the past is not in the original.
    let only_past = write_summed(&past.target, "only-past", 1);
    assert!(!orig.target.join(&only_past[0].0).exists());
    // The original is untouched: its later writes all whole.
    assert_eq!(checksum(&appended).as_deref(), Some(appended_sum.as_str()));
    for (name, sum) in &live {
        assert_eq!(
            checksum(&orig.target.join(name)).as_deref(),
            Some(sum.as_str()),
            "{name} in the original"
        );
    }
    unmount(&mut c, &past).await;
    unmount(&mut c, &orig).await;
    assert_fsck_clean(&redis.url(), redis.password.as_deref(), db_of(&orig.id));
    delete(&mut c, &past.id).await;
    delete(&mut c, &orig.id).await;
    force_cleanup(&root, &kelp.state_dir);
}
