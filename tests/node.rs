//! The node service on real servers: stage and publish, read-only binds, clean
//! unmounts, and recovery from a killed juicefs, a killed kelp and a restarted
//! metadata server, each followed by I/O that works without a new publish call.

mod common;

use common::csi::{self, volume_capability::access_mode::Mode, Clients, ProbeRequest};
use common::journal::JournalWriter;
use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::Code;

const GIB: i64 = 1 << 30;

struct Bed {
    redis: Redis,
    weed: &'static Weed,
    kelp: Kelp,
    root: PathBuf,
}

impl Drop for Bed {
    fn drop(&mut self) {
        force_cleanup(&self.root, &self.kelp.state_dir);
    }
}

/// Each test gets its own redis (some restart it) and kelp; SeaweedFS is shared.
fn bed(name: &str) -> Bed {
    bed_with(name, &[])
}

fn bed_with(name: &str, extra: &[String]) -> Bed {
    let redis = Redis::start(Some(META_PASSWORD));
    let weed = shared_weed();
    let kelp = KelpBuilder::new()
        .redis(&redis)
        .weed(weed)
        .args(["--repair-interval=1", "--idle-release=3"])
        .args(extra.iter().cloned())
        .start();
    Bed { redis, weed, kelp, root: scratch(name) }
}

/// Every metric the shipped Grafana dashboard queries is one kelp serves: a sample
/// in `scrape`, or a declared family not yet observed.
fn assert_dashboard_matches(scrape: &str) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/kelp-dashboard.json");
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let words = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
            names.extend(
                words.filter(|w| w.starts_with("kelp_") || w.starts_with("juicefs_")).map(String::from),
            );
        }
    }
    assert!(names.len() >= 15, "{names:?}");
    // Counters nothing has incremented yet are not in a scrape: those must at least be
    // kelp families the operations page documents (its metrics table).
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md")).unwrap();
    for name in names {
        let sampled =
            scrape.lines().any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")));
        let base = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        let declared = scrape.contains(&format!("# TYPE {base} "));
        let documented = name.starts_with("kelp_") && readme.contains(&format!("`{name}`"));
        assert!(sampled || declared || documented, "the dashboard queries {name}, which kelp does not serve");
    }
}

/// The value of the sample of `family` whose labels include every one of `labels`.
fn sample(text: &str, family: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) || l.starts_with(&format!("{family} ")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Retries a write/read until it works or `within` passes (recovery is asynchronous).
async fn eventually_io(path: &Path, within: Duration) {
    let probe = path.join(format!("probe-{}", std::process::id()));
    let back = poll_until_async(within, Duration::from_millis(300), || {
        let probe = probe.clone();
        async move {
            // Until the target is a JuiceFS mount again, a write would land in the bare directory.
            if !fs_type_at(path).is_some_and(|t| t.starts_with("fuse.juicefs")) {
                return None;
            }
            let io = tokio::task::spawn_blocking(move || {
                std::fs::write(&probe, b"alive").is_ok()
                    && std::fs::read(&probe).map(|d| d == b"alive").unwrap_or(false)
            });
            let ok = tokio::time::timeout(Duration::from_secs(5), io).await.ok().and_then(|r| r.ok());
            ok.unwrap_or(false).then_some(())
        }
    })
    .await;
    assert!(back.is_some(), "I/O at {} did not come back", path.display());
}

/// Waits until nothing is mounted at or below `root`; returns whether that happened.
async fn all_released(root: &Path, within: Duration) -> bool {
    poll_until_async(within, Duration::from_millis(300), || async move {
        mounts_under(root).is_empty().then_some(())
    })
    .await
    .is_some()
}

/// The juicefs daemons of the volumes of file system `fs_name` (their logs are
/// `logs/<fs name>[.<member>].log`).
fn juicefs_pids(fs_name: &str) -> Vec<i32> {
    juicefs_pids_with(&format!("logs/{fs_name}."))
}

/// Removes a test's mounts and ends its juicefs daemons and FUSE holders when dropped,
/// also when the test fails half-way.
struct Leftovers {
    root: PathBuf,
    state_dir: PathBuf,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        force_cleanup(&self.root, &self.state_dir);
    }
}

/// The FUSE holders of a kelp with `state_dir` (their socket lies below it).
fn holder_pids(state_dir: &Path) -> Vec<i32> {
    pids_with_cmdline(&format!("hold-fuse --socket {}/fuse/", state_dir.display()))
}

async fn cleanup(c: &mut Clients, id: &str, staging: &Path, targets: &[&Path]) {
    for t in targets {
        c.unpublish(id, &s(t)).await.unwrap();
    }
    c.unstage(id, &s(staging)).await.unwrap();
    // A juicefs killed by a test leaves its session until two heartbeats have passed;
    // until then DeleteVolume refuses, and a CO retries, as this does.
    let deleted = poll_until_async(Duration::from_secs(60), Duration::from_secs(1), || {
        let (mut c, id) = (c.clone(), id.to_string());
        async move {
            match c.delete(&id).await {
                Err(e) if e.code() == Code::FailedPrecondition => None,
                done => Some(done),
            }
        }
    })
    .await;
    match deleted {
        Some(done) => done.unwrap(),
        None => c.delete(id).await.unwrap(), // still refused: fails with kelp's reason
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stage_publish_twice_read_only_and_clean_unmount() {
    let b = bed("node-basic");
    let mut c = csi::connect(&b.kelp.endpoint).await;
    let vol = c.create("node-basic", GIB).await.unwrap();
    let id = vol.volume_id.as_str();
    // Swarm does not create the staging parent; kelp must.
    let staging = b.root.join("staged/missing-parent/vol");
    let (t1, t2, ro) = (b.root.join("pub/t1"), b.root.join("pub/t2"), b.root.join("pub/ro"));

    c.stage(id, &s(&staging), Mode::MultiNodeMultiWriter).await.unwrap();
    c.stage(id, &s(&staging), Mode::MultiNodeMultiWriter).await.unwrap(); // idempotent

    // The count a master's stop hook waits on (deploy/swarm/kelp-keydb.sh).
    let local_mounts = || b.redis.cli(0, &["GET", &kelp::meta::local_mounts_key("test-node")]);
    assert_eq!(local_mounts(), "1");
    c.publish(id, &s(&staging), &s(&t1), Mode::MultiNodeMultiWriter, false).await.unwrap();
    c.publish(id, &s(&staging), &s(&t1), Mode::MultiNodeMultiWriter, false).await.unwrap(); // idempotent
    c.publish(id, &s(&staging), &s(&t2), Mode::MultiNodeMultiWriter, false).await.unwrap();
    c.publish(id, &s(&staging), &s(&ro), Mode::MultiNodeMultiWriter, true).await.unwrap();

    std::fs::write(t1.join("shared.txt"), b"from t1").unwrap();
    assert_eq!(std::fs::read(t2.join("shared.txt")).unwrap(), b"from t1");
    assert_eq!(std::fs::read(ro.join("shared.txt")).unwrap(), b"from t1");
    let err = std::fs::write(ro.join("nope.txt"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "read-only bind refuses writes");

    // Stats of a target: capacity from the file system, condition normal.
    let st = c
        .node
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: id.into(),
            volume_path: s(&t1),
            staging_target_path: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.usage[0].total, GIB);
    assert!(!st.volume_condition.unwrap().abnormal);
    let e = c
        .node
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: id.into(),
            volume_path: s(&b.root),
            staging_target_path: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // An id naming a directory the file system does not have is no volume: juicefs
    // would make the directory and mount an empty one.
    let other = format!("{}:00000000", id.rsplit_once(':').unwrap().0);
    let e = c.stage(&other, &s(&b.root.join("st-other")), Mode::SingleNodeWriter).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("/.kelp/v/00000000"), "{}", e.message());
    assert!(mounts_under(&b.root.join("st-other")).is_empty());

    cleanup(&mut c, id, &staging, &[&t1, &t2, &ro]).await;
    assert!(mounts_under(&b.root).is_empty(), "mounts left: {:?}", mounts_under(&b.root));
    assert_eq!(local_mounts(), "0", "the released volume is no longer counted");
    // Unknown targets and volumes unpublish/unstage fine.
    c.unpublish(id, &s(&t1)).await.unwrap();
    c.unstage(id, &s(&staging)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn single_node_single_writer_refuses_a_second_target() {
    let b = bed("node-sw");
    let mut c = csi::connect(&b.kelp.endpoint).await;
    let vol = c.create("node-single-writer", GIB).await.unwrap();
    let id = vol.volume_id.as_str();
    let staging = b.root.join("st");
    let (t1, t2) = (b.root.join("t1"), b.root.join("t2"));
    c.stage(id, &s(&staging), Mode::SingleNodeSingleWriter).await.unwrap();
    c.publish(id, &s(&staging), &s(&t1), Mode::SingleNodeSingleWriter, false).await.unwrap();
    let e = c.publish(id, &s(&staging), &s(&t2), Mode::SingleNodeSingleWriter, false).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    cleanup(&mut c, id, &staging, &[&t1]).await;
    assert!(mounts_under(&b.root).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_juicefs_is_remounted_and_targets_rebound() {
    let b = bed("node-killfs");
    let mut c = csi::connect(&b.kelp.endpoint).await;
    let vol = c.create("node-kill-juicefs", GIB).await.unwrap();
    let id = vol.volume_id.as_str();
    let staging = b.root.join("st");
    let t = b.root.join("t");
    c.stage(id, &s(&staging), Mode::SingleNodeWriter).await.unwrap();
    c.publish(id, &s(&staging), &s(&t), Mode::SingleNodeWriter, false).await.unwrap();
    std::fs::write(t.join("before.txt"), b"kept").unwrap();

    // The holder of the FUSE connection dies too (the fallback: a fresh mount, targets re-bound).
    let pids = juicefs_pids(&vol.volume_context["fsName"]);
    assert!(!pids.is_empty(), "juicefs runs");
    let holders = holder_pids(&b.kelp.state_dir);
    assert_eq!(holders.len(), 1, "one FUSE holder per staged volume");
    kill_pids(&[pids, holders].concat());
    eventually_io(&t, Duration::from_secs(30)).await;
    assert_eq!(std::fs::read(t.join("before.txt")).unwrap(), b"kept");
    assert!(b.kelp.log_text().contains("remounting"));
    cleanup(&mut c, id, &staging, &[&t]).await;
    assert!(mounts_under(&b.root).is_empty());
}

/// A juicefs that stops answering even its own `.config` (stopped here with SIGSTOP,
/// as a deadlocked daemon would look) is ended after `--stuck-daemon-after`, and a new
/// one resumes the held FUSE connection: same mount, same targets, nothing lost.
/// (A slow metadata server is not this: `.config` answers without it.)
#[tokio::test(flavor = "multi_thread")]
async fn a_stuck_juicefs_is_ended_and_a_new_one_resumes_the_mount() {
    let b = bed_with("node-stuck", &["--stuck-daemon-after=3".to_string()]);
    let mut c = csi::connect(&b.kelp.endpoint).await;
    let vol = c.create("node-stuck-juicefs", GIB).await.unwrap();
    let id = vol.volume_id.as_str();
    let (staging, t) = (b.root.join("st"), b.root.join("t"));
    c.stage(id, &s(&staging), Mode::SingleNodeWriter).await.unwrap();
    c.publish(id, &s(&staging), &s(&t), Mode::SingleNodeWriter, false).await.unwrap();
    let kept = t.join("before.txt");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&kept).unwrap();
        f.write_all(b"kept").unwrap();
        f.sync_all().unwrap();
    }
    let dev = |p: &Path| std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(p).unwrap());
    let dev_before = dev(&t);
    let stopped = juicefs_pids(&vol.volume_context["fsName"]);
    assert_eq!(stopped.len(), 1, "one juicefs process per volume");
    for p in &stopped {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), nix::sys::signal::Signal::SIGSTOP).unwrap();
    }
    let started = Instant::now();
    eventually_io(&t, Duration::from_secs(60)).await;
    let took = started.elapsed();
    eprintln!("stuck juicefs: I/O worked again {:.1} s after it stopped answering", took.as_secs_f64());
    assert!(took >= Duration::from_secs(3), "ended before --stuck-daemon-after: {took:?}");
    assert_eq!(std::fs::read(&kept).unwrap(), b"kept");
    assert_eq!(dev(&t), dev_before, "the same kernel mount was resumed, not a new one");
    assert!(stopped.iter().all(|p| !Path::new(&format!("/proc/{p}")).exists()), "the stuck daemon was ended");
    assert!(b.kelp.log_text().contains("has not answered even its own files"));
    cleanup(&mut c, id, &staging, &[&t]).await;
    assert!(mounts_under(&b.root).is_empty());
}

/// A volume unstaged while its juicefs is stuck (SIGSTOP) comes off the node, and the
/// same volume staged again gets a healthy mount that the stuck-daemon watch leaves
/// alone: the watch of the old daemon does not follow the volume to the new one.
#[tokio::test(flavor = "multi_thread")]
async fn a_volume_unstaged_while_stuck_stages_again_cleanly() {
    let b = bed_with("node-stuck-unstage", &["--stuck-daemon-after=3".to_string()]);
    let mut c = csi::connect(&b.kelp.endpoint).await;
    let vol = c.create("node-stuck-unstage", GIB).await.unwrap();
    let id = vol.volume_id.as_str();
    let fs = vol.volume_context["fsName"].clone();
    let (staging, t) = (b.root.join("st"), b.root.join("t"));
    c.stage(id, &s(&staging), Mode::SingleNodeWriter).await.unwrap();
    c.publish(id, &s(&staging), &s(&t), Mode::SingleNodeWriter, false).await.unwrap();
    std::fs::write(t.join("before.txt"), b"kept").unwrap();
    let stopped = juicefs_pids(&fs);
    for p in &stopped {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), nix::sys::signal::Signal::SIGSTOP).unwrap();
    }
    let released = tokio::time::timeout(Duration::from_secs(30), async {
        c.unpublish(id, &s(&t)).await.unwrap();
        c.unstage(id, &s(&staging)).await.unwrap();
    })
    .await;
    assert!(released.is_ok(), "unpublish and unstage of a stuck mount did not return within 30 s");
    assert!(mounts_under(&b.root).is_empty(), "mounts left: {:?}", mounts_under(&b.root));
    for p in &stopped {
        // Ended by the unstage, or still stopped: continue it so it can go.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), nix::sys::signal::Signal::SIGCONT);
    }

    c.stage(id, &s(&staging), Mode::SingleNodeWriter).await.unwrap();
    c.publish(id, &s(&staging), &s(&t), Mode::SingleNodeWriter, false).await.unwrap();
    assert_eq!(std::fs::read(t.join("before.txt")).unwrap(), b"kept");
    let fresh = juicefs_pids(&fs);
    // Longer than --stuck-daemon-after: a watch left over from the stuck daemon
    // would end the healthy one now.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(juicefs_pids(&fs), fresh, "the healthy juicefs was left alone");
    std::fs::write(t.join("after.txt"), b"new").unwrap();
    assert_eq!(std::fs::read(t.join("after.txt")).unwrap(), b"new");
    cleanup(&mut c, id, &staging, &[&t]).await;
    assert!(mounts_under(&b.root).is_empty());
}

/// The metrics endpoint follows what happens: a publish counts, the volume shows
/// healthy with its capacity and its juicefs's own metrics under its name; a killed
/// juicefs shows unhealthy, then a remount and healthy again. No secret ever appears.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_follow_publishes_crashes_and_remounts() {
    let addr = format!("127.0.0.1:{}", free_port());
    let b = bed_with("node-metrics", &[format!("--metrics-addr={addr}")]);
    let mut c = csi::connect(&b.kelp.endpoint).await;
    let first = scrape(&addr);
    assert_eq!(sample(&first, "kelp_build_info", &[]), Some(1.0), "{first}");
    assert_eq!(sample(&first, "kelp_backend_up", &["backend=\"metadata\""]), Some(1.0), "{first}");
    assert_eq!(sample(&first, "kelp_controller_backend_up", &["backend=\"filer\""]), Some(1.0), "{first}");
    let vol = c.create("node-metrics", GIB).await.unwrap();
    let id = vol.volume_id.as_str();
    let fs = vol.volume_context["fsName"].clone();
    let (staging, t) = (b.root.join("st"), b.root.join("t"));
    let published = |text: &str| {
        sample(text, "kelp_rpc_requests_total", &["method=\"NodePublishVolume\"", "code=\"Ok\""])
            .unwrap_or(0.0)
    };
    let before = published(&scrape(&addr));
    c.stage(id, &s(&staging), Mode::SingleNodeWriter).await.unwrap();
    c.publish(id, &s(&staging), &s(&t), Mode::SingleNodeWriter, false).await.unwrap();
    std::fs::write(t.join("x"), vec![7u8; 1 << 20]).unwrap();
    assert_eq!(std::fs::read(t.join("x")).unwrap().len(), 1 << 20);
    let text = scrape(&addr);
    assert_dashboard_matches(&text);
    assert_eq!(published(&text), before + 1.0, "a publish is counted");
    let vol_label = format!("volume=\"{fs}\"");
    let labels = [vol_label.as_str(), "master=\"local\""];
    assert_eq!(sample(&text, "kelp_volume_mount_healthy", &labels), Some(1.0), "{text}");
    assert_eq!(sample(&text, "kelp_volume_capacity_bytes", &labels), Some(GIB as f64), "{text}");
    assert_eq!(sample(&text, "kelp_volume_targets", &labels), Some(1.0), "{text}");
    assert!(
        sample(&text, "kelp_rpc_duration_seconds_count", &["method=\"NodeStageVolume\""]).is_some(),
        "{text}"
    );
    let kelp_volume = format!("kelp_volume=\"{fs}\"");
    assert!(
        text.lines().any(|l| l.starts_with("juicefs_") && l.contains(&kelp_volume)),
        "juicefs's metrics under the volume:\n{text}"
    );
    assert_eq!(text.matches("# TYPE juicefs_uptime ").count(), 1, "one family, once");

    // `kelp admin volumes --wide` and `--json` show usage and where it is mounted.
    let admin = |extra: &str| {
        run(std::process::Command::new(kelp_bin())
            .args(["admin", "--meta-url", &b.redis.url(), "volumes", extra])
            .env("KELP_META_PASSWORD", META_PASSWORD))
    };
    let wide = admin("--wide");
    assert!(wide.lines().next().unwrap().contains("MOUNTED ON"), "{wide}");
    assert!(wide.contains(&format!("at \"{}\"", staging.display())), "where it is mounted:\n{wide}");
    // JuiceFS flushes its usage counters about once a second.
    let counted = poll_until(Duration::from_secs(15), Duration::from_millis(500), || {
        let json = admin("--json");
        let row: serde_json::Value = serde_json::from_str(json.lines().find(|l| l.contains(&fs))?).ok()?;
        (row["used_bytes"].as_u64()? >= 1 << 20).then_some((json, row))
    });
    let (json, row) = counted.expect("admin volumes --json shows the MiB written");
    assert_eq!(row["capacity_bytes"], GIB);
    assert_eq!(row["mounted_on"].as_array().unwrap().len(), 1, "{row}");
    assert!(!json.contains(META_PASSWORD) && !wide.contains(META_PASSWORD));

    // juicefs dies (its holder too, so the mount must be made again).
    kill_pids(&[juicefs_pids(&fs), holder_pids(&b.kelp.state_dir)].concat());
    let down = poll_until(Duration::from_secs(20), Duration::from_millis(200), || {
        (sample(&scrape(&addr), "kelp_volume_mount_healthy", &labels) == Some(0.0)).then_some(())
    });
    let remounted = poll_until(Duration::from_secs(60), Duration::from_millis(500), || {
        let text = scrape(&addr);
        (sample(&text, "kelp_volume_remounts_total", &labels).unwrap_or(0.0) >= 1.0
            && sample(&text, "kelp_volume_mount_healthy", &labels) == Some(1.0))
        .then_some(text)
    });
    assert!(remounted.is_some(), "never remounted and healthy again:\n{}", scrape(&addr));
    eprintln!("metrics: unhealthy seen: {}", down.is_some());
    let text = remounted.unwrap();
    for secret in [S3_SECRET_KEY, S3_ACCESS_KEY, META_PASSWORD] {
        assert!(!text.contains(secret), "a secret in the metrics");
    }
    eventually_io(&t, Duration::from_secs(30)).await;
    cleanup(&mut c, id, &staging, &[&t]).await;
    assert!(mounts_under(&b.root).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_kelp_readopts_its_mounts() {
    let mut b = bed("node-killkelp");
    let mut c = csi::connect(&b.kelp.endpoint).await;
    let vol = c.create("node-kill-kelp", GIB).await.unwrap();
    let id = vol.volume_id.clone();
    let staging = b.root.join("st");
    let t = b.root.join("t");
    c.stage(&id, &s(&staging), Mode::SingleNodeWriter).await.unwrap();
    c.publish(&id, &s(&staging), &s(&t), Mode::SingleNodeWriter, false).await.unwrap();
    std::fs::write(t.join("a.txt"), b"1").unwrap();

    // kill -9 of the driver: the mount lives on, and the restarted driver adopts it.
    unsafe { libc::kill(b.kelp.pid() as i32, libc::SIGKILL) };
    b.kelp.wait_exit(Duration::from_secs(5));
    std::fs::write(t.join("b.txt"), b"2").unwrap();
    b.kelp.restart();
    let mut c = csi::connect(&b.kelp.endpoint).await;
    eventually_io(&t, Duration::from_secs(20)).await;
    // Idempotent calls after the restart see the adopted state.
    c.stage(&id, &s(&staging), Mode::SingleNodeWriter).await.unwrap();
    c.publish(&id, &s(&staging), &s(&t), Mode::SingleNodeWriter, false).await.unwrap();
    cleanup(&mut c, &id, &staging, &[&t]).await;
    assert!(mounts_under(&b.root).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn restarted_metadata_server_loses_nothing() {
    let mut b = bed("node-redis");
    let mut c = csi::connect(&b.kelp.endpoint).await;
    let vol = c.create("node-redis-restart", GIB).await.unwrap();
    let id = vol.volume_id.clone();
    let staging = b.root.join("st");
    let t = b.root.join("t");
    c.stage(&id, &s(&staging), Mode::SingleNodeWriter).await.unwrap();
    c.publish(&id, &s(&staging), &s(&t), Mode::SingleNodeWriter, false).await.unwrap();
    std::fs::write(t.join("before.txt"), b"durable").unwrap();
    b.redis.stop();
    std::thread::sleep(Duration::from_secs(3));
    b.redis.restart();
    let back = Instant::now();
    eventually_io(&t, Duration::from_secs(30)).await;
    eprintln!(
        "metadata server away 3 s: I/O worked again {:.2} s after it was back",
        back.elapsed().as_secs_f64()
    );
    assert_eq!(std::fs::read(t.join("before.txt")).unwrap(), b"durable");
    cleanup(&mut c, &id, &staging, &[&t]).await;
    assert!(mounts_under(&b.root).is_empty());
}

/// A metadata server that is gone for a minute is a stall, as on an NFS hard mount:
/// the writer sees no error and loses nothing (`--meta-outage-wait`, default 300 s).
#[tokio::test(flavor = "multi_thread")]
async fn a_minute_without_the_metadata_server_is_only_a_stall() {
    let mut b = bed("node-outage");
    let mut c = csi::connect(&b.kelp.endpoint).await;
    let vol = c.create("node-outage", GIB).await.unwrap();
    let id = vol.volume_id.clone();
    let (staging, t) = (b.root.join("st"), b.root.join("t"));
    c.stage(&id, &s(&staging), Mode::SingleNodeWriter).await.unwrap();
    c.publish(&id, &s(&staging), &s(&t), Mode::SingleNodeWriter, false).await.unwrap();
    let writer = JournalWriter::start(&t, &b.root, false);
    let acks = || writer.acks();
    assert!(poll_until(Duration::from_secs(30), Duration::from_millis(100), || (acks() > 10).then_some(()))
        .is_some());
    b.redis.stop();
    let down = Instant::now();
    std::thread::sleep(Duration::from_secs(60));
    let before = acks();
    b.redis.restart();
    let back = Instant::now();
    let resumed =
        poll_until(Duration::from_secs(120), Duration::from_millis(50), || (acks() > before).then_some(()));
    if resumed.is_some() {
        eprintln!(
            "outage: server down {:.1} s; the writer acknowledged again {:.2} s after it was back",
            back.duration_since(down).as_secs_f64(),
            back.elapsed().as_secs_f64()
        );
        let (report, summary) = writer.finish();
        assert!(report["errors"].as_object().unwrap().is_empty(), "the writer saw errors: {summary}");
    } else {
        // Seen in three CI runs of about ten (docs/notes.md): juicefs 1.4.2 never
        // answered the call that was in flight when the server went away, and at
        // times the mount stayed stuck. What kelp owes then: the operator's remedy,
        // ending that juicefs, brings the volume back (kelp remounts it and re-binds
        // the target), and nothing that was acknowledged is lost.
        eprintln!("outage: WEDGED: the writer's call in flight never returned; ending that juicefs, then checking the remount and the acknowledged steps");
        let acked: Vec<u64> = writer.acked().into_iter().map(|(n, _)| n).collect();
        writer.stop(Duration::from_secs(5));
        let fs = vol.volume_context["fsName"].clone();
        kill_pids(&[juicefs_pids(&fs), holder_pids(&b.kelp.state_dir)].concat());
        eventually_io(&t, Duration::from_secs(60)).await;
        let missing = common::journal::check_steps(&t, acked, true);
        assert!(missing.is_empty(), "acknowledged steps lost across the outage: {missing:?}");
    }
    cleanup(&mut c, &id, &staging, &[&t]).await;
    assert!(mounts_under(&b.root).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_staged_volume_is_released_and_restaged_on_publish() {
    let b = bed("node-idle");
    let mut c = csi::connect(&b.kelp.endpoint).await;
    let vol = c.create("node-idle", GIB).await.unwrap();
    let id = vol.volume_id.as_str();
    let staging = b.root.join("st");
    let t = b.root.join("t");
    c.stage(id, &s(&staging), Mode::SingleNodeWriter).await.unwrap();
    c.publish(id, &s(&staging), &s(&t), Mode::SingleNodeWriter, false).await.unwrap();
    std::fs::write(t.join("x"), b"x").unwrap();
    c.unpublish(id, &s(&t)).await.unwrap();
    // No NodeUnstageVolume (as Swarm may do): the node releases it after the idle period.
    assert!(all_released(&b.root, Duration::from_secs(20)).await, "staged mount was never released");
    assert!(b.kelp.log_text().contains("releasing staged volume"));
    // A later publish without a new stage call stages again by itself.
    c.publish(id, &s(&staging), &s(&t), Mode::SingleNodeWriter, false).await.unwrap();
    assert_eq!(std::fs::read(t.join("x")).unwrap(), b"x");
    cleanup(&mut c, id, &staging, &[&t]).await;
    assert!(mounts_under(&b.root).is_empty());
    let _ = &b.weed;
    let _ = &b.redis;
}

#[tokio::test(flavor = "multi_thread")]
async fn mounts_of_deleted_volumes_are_removed() {
    let b = bed("node-vanished");
    let mut c = csi::connect(&b.kelp.endpoint).await;
    let vol = c.create("node-vanished", GIB).await.unwrap();
    let id = vol.volume_id.as_str();
    let staging = b.root.join("st");
    let t = b.root.join("t");
    c.stage(id, &s(&staging), Mode::SingleNodeWriter).await.unwrap();
    c.publish(id, &s(&staging), &s(&t), Mode::SingleNodeWriter, false).await.unwrap();
    // DeleteVolume refuses a mounted volume, so delete it behind the node's back, as an
    // operator wiping the registry and the database by hand would.
    assert_eq!(c.delete(id).await.unwrap_err().code(), Code::FailedPrecondition);
    let fs = &vol.volume_context["fsName"];
    b.redis.cli(db_of(id), &["flushdb"]);
    b.redis.cli(0, &["del", &format!("kelp:vol:{fs}")]);
    assert!(
        all_released(&b.root, Duration::from_secs(20)).await,
        "mounts of a deleted volume stayed: {:?}",
        mounts_under(&b.root)
    );
    assert!(b.kelp.log_text().contains("volume no longer exists"));
}

#[tokio::test(flavor = "multi_thread")]
async fn per_volume_cache_settings_reach_the_mount() {
    let b = bed("node-cache");
    let mut c = csi::connect(&b.kelp.endpoint).await;
    // A volume's cache directory must lie below the node's own --cache-dir.
    let cache_dir = b.kelp.state_dir.join("cache/volume-cache");
    let mut req = csi::create_req("node-cache", GIB);
    req.parameters =
        [("cache-size".to_string(), "64".to_string()), ("cache-dir".to_string(), s(&cache_dir))].into();
    let vol = c.ctl.create_volume(req).await.unwrap().into_inner().volume.unwrap();
    assert_eq!(vol.volume_context["cache-size"], "64");
    let id = vol.volume_id.as_str();
    let staging = b.root.join("st");
    let t = b.root.join("t");
    let mut stage = csi::NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: s(&staging),
        volume_capability: Some(csi::mount_cap(Mode::SingleNodeWriter)),
        ..Default::default()
    };
    stage.volume_context = vol.volume_context.clone();
    c.node.node_stage_volume(stage).await.unwrap();
    c.publish(id, &s(&staging), &s(&t), Mode::SingleNodeWriter, false).await.unwrap();
    std::fs::write(t.join("f"), vec![1u8; 1 << 20]).unwrap();
    let _ = std::fs::read(t.join("f")).unwrap();
    // juicefs keeps its cache for the file system in <cache dir>/<uuid>.
    let entries: Vec<_> = std::fs::read_dir(&cache_dir).expect("per-volume cache dir in use").collect();
    assert!(!entries.is_empty());
    let args: Vec<String> = juicefs_pids("node-cache").into_iter().filter_map(cmdline).collect();
    let args = args.join("\n");
    assert!(args.contains("--cache-size=64"), "{args}");
    cleanup(&mut c, id, &staging, &[&t]).await;
    assert!(mounts_under(&b.root).is_empty());
}

/// A node whose own master cannot hold a volume refuses to stage it with
/// FailedPrecondition naming the setting, and mounts nothing. At start it reports
/// every problem with its master's configuration, in its log and in `kelp admin
/// nodes`.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_refuses_what_its_master_cannot_hold_and_says_why() {
    let b = bed("node-guard");
    let mut c = csi::connect(&b.kelp.endpoint).await;
    let vol = c.create("node-guard", GIB).await.unwrap();
    let bad = Redis::start_with(
        Some(META_PASSWORD),
        &["--databases", "1", "--maxmemory-policy", "allkeys-lru", "--appendfsync", "everysec"],
    );
    let node = KelpBuilder::new()
        .redis(&bad)
        .weed(b.weed)
        .services("node")
        .args(["--node-id=guard-node", "--repair-interval=1"])
        .arg(format!("--registry-url={}", b.redis.url()))
        .start();
    let mut n = csi::connect(&node.endpoint).await;
    let staging = b.root.join("st");
    let e = n.stage(&vol.volume_id, &s(&staging), Mode::SingleNodeWriter).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains("`databases`") && e.message().contains("no database"), "{}", e.message());
    assert!(mounts_under(&b.root).is_empty(), "nothing was mounted");
    assert!(juicefs_pids("node-guard").is_empty(), "no juicefs was started");

    let warned =
        |what: &str| node.log_text().lines().any(|l| l.contains("metadata master") && l.contains(what));
    let all = ["maxmemory-policy", "appendfsync", "databases"];
    assert!(
        poll_until(Duration::from_secs(20), Duration::from_millis(200), || all
            .iter()
            .all(|w| warned(w))
            .then_some(()))
        .is_some(),
        "start-up warnings: {}",
        node.log_text()
    );
    // Each problem is logged once, not at every heartbeat.
    std::thread::sleep(Duration::from_secs(3));
    let log = node.log_text();
    assert_eq!(log.lines().filter(|l| l.contains("metadata master") && l.contains("appendfsync")).count(), 1);
    let admin = std::process::Command::new(kelp_bin())
        .args(["admin", "--meta-url", &b.redis.url(), "nodes"])
        .env("KELP_META_PASSWORD", META_PASSWORD)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&admin.stdout);
    assert!(admin.status.success(), "{table}{}", String::from_utf8_lossy(&admin.stderr));
    for w in all {
        assert!(table.contains(w), "kelp admin nodes shows {w}: {table}");
    }
    assert!(table.contains("guard-node"), "{table}");
    c.delete(&vol.volume_id).await.unwrap();
}

/// With the default `trash-days=0`, deleting files on a full volume gives the space
/// back at once; with juicefs's default trash the writer stayed refused for a day.
/// (A tree-layout volume, the default, is full at its directory quota: EDQUOT.)
#[tokio::test(flavor = "multi_thread")]
async fn a_full_volume_frees_space_when_files_are_deleted() {
    const MIB: usize = 1 << 20;
    let b = bed("node-full");
    let mut c = csi::connect(&b.kelp.endpoint).await;
    let mut req = csi::create_req("node-full", 64 * MIB as i64);
    req.capacity_range = Some(csi::CapacityRange { required_bytes: 64 * MIB as i64, limit_bytes: 0 });
    let vol = c.ctl.create_volume(req).await.unwrap().into_inner().volume.unwrap();
    let id = vol.volume_id.as_str();
    let (staging, t) = (b.root.join("st"), b.root.join("t"));
    c.stage(id, &s(&staging), Mode::SingleNodeWriter).await.unwrap();
    c.publish(id, &s(&staging), &s(&t), Mode::SingleNodeWriter, false).await.unwrap();
    let write = |name: &str| -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(t.join(name))?;
        f.write_all(&vec![7u8; 8 * MIB])?;
        f.sync_all()
    };
    let mut full = None;
    for i in 0..16 {
        if let Err(e) = write(&format!("f{i}")) {
            full = Some((i, e));
            break;
        }
    }
    let (written, e) = full.expect("a 64 MiB volume refuses a 128th MiB");
    assert_eq!(e.raw_os_error(), Some(libc::EDQUOT), "{e}");
    assert!(written >= 6, "only {written} files of 8 MiB fitted");
    let _ = std::fs::remove_file(t.join(format!("f{written}")));
    for i in 0..written {
        std::fs::remove_file(t.join(format!("f{i}"))).unwrap();
    }
    assert!(!t.join(".trash").exists() || std::fs::read_dir(t.join(".trash")).unwrap().count() == 0);
    let at = Instant::now();
    let again = poll_until(Duration::from_secs(30), Duration::from_millis(100), || write("after").ok());
    assert!(again.is_some(), "space came back after the delete");
    eprintln!(
        "full volume: {written} x 8 MiB fitted; writes resumed {:.2} s after the delete",
        at.elapsed().as_secs_f64()
    );
    cleanup(&mut c, id, &staging, &[&t]).await;
    assert!(mounts_under(&b.root).is_empty());
}

/// The issue-15 bar: a task never sees a crash on its node, only a stall. A writer in
/// its own mount namespace (as every container is) journals each fsync'd append and
/// each rename + directory fsync outside the volume, while all juicefs processes of
/// the volume are killed three times, and `kelp serve` (under `kelp init`, as in the
/// plugin) is killed three times and panics three times. Afterwards every
/// acknowledged step is on the volume, nothing landed under the target on the node's
/// disk, and unpublish and unstage succeed. It prints, per crash, how long until the
/// writer's I/O resumed and until Probe answered again (BENCHMARKS.md quotes them).
#[tokio::test(flavor = "multi_thread")]
async fn crashes_on_the_node_lose_nothing_a_writer_acknowledged() {
    let redis = Redis::start(Some(META_PASSWORD));
    let root = scratch("node-crash");
    let marker = root.join("panicked-once");
    let kelp = KelpBuilder::new()
        .redis(&redis)
        .weed(shared_weed())
        .under_init()
        .args(["--repair-interval=1", "--idle-release=600"])
        .env("KELP_FAILPOINT", "repair:tick")
        .env("KELP_FAILPOINT_ONCE", &s(&marker))
        .start();
    // Whatever happens below, no mount, juicefs or holder of this test outlives it.
    let _leftovers = Leftovers { root: root.clone(), state_dir: kelp.state_dir.clone() };
    // The failpoint fires once, at kelp serve's first repair pass; init restarts it.
    // The marker is written just before the panic, whose backtrace takes a moment to
    // print: wait until init has seen the process end, or an RPC may still reach it.
    let restarted = poll_until(Duration::from_secs(30), Duration::from_millis(50), || {
        (marker.exists() && kelp.log_text().contains("ended; restarting")).then_some(())
    });
    assert!(restarted.is_some(), "the failpoint fired and kelp init restarted kelp serve");
    let (mut c, vol) = poll_until_async(Duration::from_secs(30), Duration::from_millis(200), || async {
        let mut c = csi::try_connect(&kelp.endpoint).await?;
        c.create("node-crash", GIB).await.ok().map(|v| (c, v))
    })
    .await
    .expect("kelp serve came back after its panic");
    let (id, fs) = (vol.volume_id.as_str(), vol.volume_context["fsName"].clone());
    let (staging, t) = (root.join("st"), root.join("t"));
    c.stage(id, &s(&staging), Mode::SingleNodeWriter).await.unwrap();
    c.publish(id, &s(&staging), &s(&t), Mode::SingleNodeWriter, false).await.unwrap();

    let writer = JournalWriter::start(&t, &root, true);
    let acks = || writer.acks();
    let progressed = |from: usize| {
        poll_until(Duration::from_secs(60), Duration::from_millis(100), || (acks() > from + 5).then_some(()))
            .is_some()
    };
    // Seconds from a crash until the writer acknowledged again, and until a restarted
    // kelp serve answered Probe.
    let io_back = |from: usize, at: Instant| {
        poll_until(Duration::from_secs(60), Duration::from_millis(20), || (acks() > from).then_some(()))
            .map(|()| at.elapsed().as_secs_f64())
    };
    let restarted = |old: &[i32]| {
        // init's restart backoff grows while crashes come less than a minute apart.
        poll_until(Duration::from_secs(60), Duration::from_millis(50), || {
            let now = serve_pids(&kelp);
            (now.len() == 1 && now != old).then_some(())
        })
        .is_some()
    };
    assert!(progressed(0), "the writer runs");
    for round in 0..3 {
        let pids = juicefs_pids(&fs);
        assert!(!pids.is_empty(), "juicefs runs (round {round})");
        let at = Instant::now();
        kill_pids(&pids);
        let before = acks();
        let io = io_back(before, at).expect("writes resumed after juicefs was killed");
        eprintln!("recovery: kill -9 juicefs (round {round}): I/O resumed after {io:.2} s");
        assert!(progressed(before), "writes resumed after juicefs was killed (round {round})");
    }
    for round in 0..3 {
        let serve = serve_pids(&kelp);
        assert_eq!(serve.len(), 1, "one kelp serve under init (round {round})");
        let at = Instant::now();
        kill_pids(&serve);
        let before = acks();
        let io = io_back(before, at).expect("writes go on while kelp serve restarts");
        assert!(restarted(&serve), "kelp init restarted kelp serve (round {round})");
        let probe =
            probe_answers(&kelp.endpoint, at).await.expect("Probe answers after kelp serve was killed");
        eprintln!("recovery: kill -9 kelp serve (round {round}): I/O {io:.2} s, Probe {probe:.2} s");
    }
    for round in 0..3 {
        // Re-arm the failpoint: the next repair pass panics.
        let serve = serve_pids(&kelp);
        let (before, at) = (acks(), Instant::now());
        std::fs::remove_file(&marker).unwrap();
        let io = io_back(before, at).expect("writes go on through a panic");
        assert!(restarted(&serve), "kelp serve panicked and init restarted it (round {round})");
        let probe = probe_answers(&kelp.endpoint, at).await.expect("Probe answers after a panic");
        eprintln!("recovery: panic in kelp serve (round {round}): I/O {io:.2} s, Probe {probe:.2} s (from re-arming)");
        assert!(progressed(before), "writes go on after the panic (round {round})");
    }
    let panics = kelp.log_text().matches("failpoint repair:tick reached").count();
    assert_eq!(panics, 4, "one panic at start and three while writing");
    // Every acknowledged step is on the volume (checked by `finish`).
    let (report, summary) = writer.finish();
    assert!(report["acked"].as_u64().unwrap() > 30, "{summary}");
    // What juicefs 1.4.2 cannot hide: EINTR for a request the killed daemon had already
    // read (the new daemon answers it so), and EBADF for a file that was open for
    // writing across the kill (juicefs revives only read handles). Never ENOTCONN or
    // EIO: the mount itself never went away.
    for (errno, _) in report["errors"].as_object().unwrap() {
        assert!(["EINTR", "EBADF"].contains(&errno.as_str()), "the writer saw {errno}: {summary}");
    }
    // The mount never went away, so nothing can have landed on the node's disk.
    assert!(!kelp.log_text().contains("remounting"), "no remount was needed");
    // The first connection went down with the kelp serve it was made to.
    drop(c);
    let mut c = csi::connect(&kelp.endpoint).await;
    cleanup(&mut c, id, &staging, &[&t]).await;
    assert!(!t.exists(), "the target was released cleanly (nothing was moved aside)");
    let lost: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("kelp-lost"))
        .collect();
    assert!(lost.is_empty(), "files under a target on the node's disk: {lost:?}");
    assert!(mounts_under(&root).is_empty());
    let serve = serve_pids(&kelp);
    drop(kelp); // kills init by pid; its kelp serve is ours to end too
    kill_pids(&serve);
    kill_pids(&juicefs_pids(&fs));
}

/// Seconds from `at` until the kelp at `endpoint` answers Probe (within a minute).
async fn probe_answers(endpoint: &str, at: Instant) -> Option<f64> {
    poll_until_async(Duration::from_secs(60), Duration::from_millis(50), || async {
        let mut c = csi::try_connect(endpoint).await?;
        c.identity.probe(ProbeRequest {}).await.ok().map(|_| at.elapsed().as_secs_f64())
    })
    .await
}

/// The `kelp serve` that `kelp init` runs for `kelp` (not init itself, whose command
/// line holds the same arguments).
fn serve_pids(kelp: &Kelp) -> Vec<i32> {
    pids_with_cmdline(&format!("serve --endpoint={}", kelp.endpoint))
        .into_iter()
        .filter(|&p| cmdline(p).is_some_and(|c| !c.contains(" init ")))
        .collect()
}

/// The members of a family (a volume and its clone) share one file system, so one
/// fence: a node that still has a task writing one member leaves no fence when the
/// other's task goes (the next node would mount while this one still writes), and
/// the last member's release leaves the highest epoch the node was given.
#[tokio::test(flavor = "multi_thread")]
async fn family_members_on_one_node_leave_one_fence_when_both_are_done() {
    use csi::volume_content_source::{Type, VolumeSource};
    let b = bed("node-family");
    let _leftovers = Leftovers { root: b.root.clone(), state_dir: b.kelp.state_dir.clone() };
    let mut c = csi::connect(&b.kelp.endpoint).await;
    let vol = c.create("node-family", GIB).await.unwrap();
    let mut req = csi::create_req("node-family-clone", GIB);
    req.volume_capabilities = vec![csi::mount_cap(Mode::SingleNodeWriter)];
    req.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(Type::Volume(VolumeSource { volume_id: vol.volume_id.clone() })),
    });
    let clone = c.ctl.create_volume(req).await.unwrap().into_inner().volume.unwrap();
    let db = db_of(&vol.volume_id);
    let fence = || b.redis.cli(db, &["get", "kelp:fence"]).trim().parse::<u64>().unwrap_or(0);

    let mut epochs = Vec::new();
    for (i, id) in [&vol.volume_id, &clone.volume_id].iter().enumerate() {
        let ctx = c
            .ctl
            .controller_publish_volume(csi::ControllerPublishVolumeRequest {
                volume_id: id.to_string(),
                node_id: "test-node".into(),
                volume_capability: Some(csi::mount_cap(Mode::SingleNodeWriter)),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .publish_context;
        epochs.push(ctx["kelp/epoch"].parse::<u64>().unwrap());
        let (staging, target) = (b.root.join(format!("st{i}")), b.root.join(format!("t{i}")));
        c.node
            .node_stage_volume(csi::NodeStageVolumeRequest {
                volume_id: id.to_string(),
                staging_target_path: s(&staging),
                volume_capability: Some(csi::mount_cap(Mode::SingleNodeWriter)),
                publish_context: ctx.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        c.node
            .node_publish_volume(csi::NodePublishVolumeRequest {
                volume_id: id.to_string(),
                staging_target_path: s(&staging),
                target_path: s(&target),
                volume_capability: Some(csi::mount_cap(Mode::SingleNodeWriter)),
                publish_context: ctx,
                ..Default::default()
            })
            .await
            .unwrap();
        std::fs::write(target.join("f"), format!("member {i}")).unwrap();
    }
    assert!(epochs[1] > epochs[0], "{epochs:?}");
    // Both members are mounted side by side, each its own tree and its own daemon.
    assert_eq!(std::fs::read_to_string(b.root.join("t0/f")).unwrap(), "member 0");
    assert_eq!(std::fs::read_to_string(b.root.join("t1/f")).unwrap(), "member 1");

    c.unpublish(&clone.volume_id, &s(&b.root.join("t1"))).await.unwrap();
    assert_eq!(fence(), 0, "the volume's task still writes here: no fence yet");
    c.unpublish(&vol.volume_id, &s(&b.root.join("t0"))).await.unwrap();
    assert_eq!(fence(), epochs[1], "the last release leaves the highest epoch");

    for (i, id) in [&vol.volume_id, &clone.volume_id].iter().enumerate() {
        c.unstage(id, &s(&b.root.join(format!("st{i}")))).await.unwrap();
        c.ctl
            .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
                volume_id: id.to_string(),
                node_id: "test-node".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    assert!(mounts_under(&b.root).is_empty(), "mounts left: {:?}", mounts_under(&b.root));
    for id in [&clone.volume_id, &vol.volume_id] {
        c.delete(id).await.unwrap();
    }
}

/// Unstage ends the volume's FUSE holder with its connection, at once: no holder
/// outlives its volume, and unstage does not wait for one. Repair runs every second
/// meanwhile, as it does on a node, and must not disturb the holder either. Prints
/// each unstage's duration and their p50/max.
#[tokio::test(flavor = "multi_thread")]
async fn unstage_ends_the_holder_at_once() {
    let b = bed("node-unstage-holder");
    let _leftovers = Leftovers { root: b.root.clone(), state_dir: b.kelp.state_dir.clone() };
    let mut c = csi::connect(&b.kelp.endpoint).await;
    let vol = c.create("node-unstage-holder", GIB).await.unwrap();
    let id = vol.volume_id.as_str();
    let trials: usize = std::env::var("KELP_UNSTAGE_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(15);
    let (mut took, mut lingered) = (Vec::new(), 0);
    for i in 0..trials {
        let staging = b.root.join(format!("st{i}"));
        c.stage(id, &s(&staging), Mode::MultiNodeMultiWriter).await.unwrap();
        std::fs::write(staging.join(format!("f{i}")), b"x").unwrap();
        assert_eq!(holder_pids(&b.kelp.state_dir).len(), 1);
        // A repair pass or two sees the staged volume (and its holder).
        tokio::time::sleep(Duration::from_millis(300 + 300 * (i as u64 % 5))).await;
        // Something connects to the holder's socket while the volume goes (as a
        // juicefs starting, or a probe, may): the holder must still end with its
        // connection.
        let sockets: Vec<PathBuf> = std::fs::read_dir(b.kelp.state_dir.join("fuse"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sock"))
            .collect();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let knocker = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for s in &sockets {
                        drop(std::os::unix::net::UnixStream::connect(s));
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        let at = Instant::now();
        c.unstage(id, &s(&staging)).await.unwrap();
        took.push(at.elapsed().as_secs_f64());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        knocker.join().unwrap();
        if !holder_pids(&b.kelp.state_dir).is_empty() {
            lingered += 1;
        }
        // Nothing is left to linger into the next trial.
        kill_pids(&holder_pids(&b.kelp.state_dir));
    }
    let mut sorted = took.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "NodeUnstage over {trials} trials: p50 {:.3} s, max {:.3} s; holders alive after unstage: {lingered}; all: {took:.3?}",
        sorted[trials / 2],
        sorted[trials - 1]
    );
    assert_eq!(lingered, 0, "holders outlived their unstage");
    assert!(sorted[trials - 1] < 1.5, "an unstage waited for its holder: {took:.3?}");
    // Nothing probed the holders by talking to them.
    for e in std::fs::read_dir(b.kelp.state_dir.join("logs")).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        if e.file_name().to_string_lossy().ends_with(".holder.log") {
            assert!(!text.contains("exchange failed"), "{}:\n{text}", e.path().display());
        }
    }
    c.delete(id).await.unwrap();
}

/// A volume the node state no longer has (its entry lost while `kelp serve` was
/// down) leaves a holder, a juicefs and mounts no staged volume owns: the restarted
/// node reaps each of them, logs and counts it, and leaves the volume it still has
/// staged alone.
#[tokio::test(flavor = "multi_thread")]
async fn what_no_staged_volume_owns_is_reaped_and_counted() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut b = bed_with("node-reap", &[format!("--metrics-addr={addr}")]);
    let _leftovers = Leftovers { root: b.root.clone(), state_dir: b.kelp.state_dir.clone() };
    let mut c = csi::connect(&b.kelp.endpoint).await;
    let (lost, kept) =
        (c.create("node-reap-lost", GIB).await.unwrap(), c.create("node-reap-kept", GIB).await.unwrap());
    let lost_fs = lost.volume_context["fsName"].clone();
    let kept_fs = kept.volume_context["fsName"].clone();
    let mode = Mode::MultiNodeMultiWriter;
    for (v, name) in [(&lost, "lost"), (&kept, "kept")] {
        let (st, t) = (b.root.join(format!("st-{name}")), b.root.join(format!("t-{name}")));
        c.stage(&v.volume_id, &s(&st), mode).await.unwrap();
        c.publish(&v.volume_id, &s(&st), &s(&t), mode, false).await.unwrap();
        std::fs::write(t.join("f"), name).unwrap();
    }
    let reaped = |kind: &str| {
        sample(&scrape(&addr), "kelp_node_reaped_total", &[&format!("kind=\"{kind}\"")]).unwrap_or(-1.0)
    };
    assert_eq!(reaped("holder"), 0.0, "shown from the start, and nothing of a staged volume is reaped");
    assert_eq!(holder_pids(&b.kelp.state_dir).len(), 2);

    b.kelp.kill();
    let state_file = b.kelp.state_dir.join("node-state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    assert!(state["volumes"].as_object_mut().unwrap().remove(&lost.volume_id).is_some());
    std::fs::write(&state_file, serde_json::to_string_pretty(&state).unwrap()).unwrap();
    b.kelp.restart();

    let (lost_st, lost_t) = (b.root.join("st-lost"), b.root.join("t-lost"));
    let gone = poll_until_async(Duration::from_secs(30), Duration::from_millis(200), || {
        let (st, t, fs, state_dir) =
            (lost_st.clone(), lost_t.clone(), lost_fs.clone(), b.kelp.state_dir.clone());
        async move {
            (mount_at(&st).is_none()
                && mount_at(&t).is_none()
                && juicefs_pids(&fs).is_empty()
                && holder_pids(&state_dir).len() == 1)
                .then_some(())
        }
    })
    .await;
    assert!(
        gone.is_some(),
        "orphans left: mounts {:?}, juicefs {:?}, holders {:?}",
        mounts_under(&b.root),
        juicefs_pids(&lost_fs),
        holder_pids(&b.kelp.state_dir)
    );
    assert_eq!((reaped("holder"), reaped("juicefs"), reaped("mount")), (1.0, 1.0, 2.0));
    let log = b.kelp.log_text();
    assert_eq!(log.matches("reaped a JuiceFS mount no staged volume owns").count(), 2, "{log}");
    assert_eq!(log.matches("reaped a process no staged volume owns").count(), 2, "{log}");
    // The volume still staged kept everything: its daemon, its holder, its data.
    assert_eq!(juicefs_pids(&kept_fs).len(), 1);
    eventually_io(&b.root.join("t-kept"), Duration::from_secs(10)).await;
    assert_eq!(std::fs::read_to_string(b.root.join("t-kept/f")).unwrap(), "kept");

    let mut c = csi::connect(&b.kelp.endpoint).await;
    cleanup(&mut c, &kept.volume_id, &b.root.join("st-kept"), &[&b.root.join("t-kept")]).await;
    cleanup(&mut c, &lost.volume_id, &lost_st, &[&lost_t]).await;
    assert!(mounts_under(&b.root).is_empty(), "mounts left: {:?}", mounts_under(&b.root));
    assert!(holder_pids(&b.kelp.state_dir).is_empty());
    assert_eq!(reaped("holder"), 1.0, "an unstaged volume's holder ends by itself");
}

/// Every log the node's helpers write stays bounded: one over `--log-max-mib` is
/// kept as `.1` and started afresh by the next repair pass, its writer unaware.
#[tokio::test(flavor = "multi_thread")]
async fn logs_over_the_cap_are_rotated() {
    let b = bed_with("node-logs", &["--log-max-mib=1".into()]);
    let _leftovers = Leftovers { root: b.root.clone(), state_dir: b.kelp.state_dir.clone() };
    let mut c = csi::connect(&b.kelp.endpoint).await;
    let vol = c.create("node-logs", GIB).await.unwrap();
    let id = vol.volume_id.as_str();
    let (staging, t) = (b.root.join("st"), b.root.join("t"));
    c.stage(id, &s(&staging), Mode::MultiNodeMultiWriter).await.unwrap();
    c.publish(id, &s(&staging), &s(&t), Mode::MultiNodeMultiWriter, false).await.unwrap();
    let logs = b.kelp.state_dir.join("logs");
    // `<mount name>.log` and `<mount name>.holder.log`, the volume's only ones.
    let holder_log = std::fs::read_dir(&logs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".holder.log"))
        .unwrap();
    let jfs_log = PathBuf::from(holder_log.to_string_lossy().replace(".holder.log", ".log"));
    assert!(jfs_log.exists(), "{jfs_log:?}");
    // As if months of logging had passed: 3 MiB more in each.
    for log in [&jfs_log, &holder_log] {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(log).unwrap();
        f.write_all(&vec![b'.'; 3 << 20]).unwrap();
    }
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let under = poll_until_async(Duration::from_secs(15), Duration::from_millis(200), || async {
        (size(&jfs_log) < 1 << 20 && size(&holder_log) < 1 << 20).then_some(())
    })
    .await;
    assert!(under.is_some(), "logs still {} and {} bytes", size(&jfs_log), size(&holder_log));
    for log in [&jfs_log, &holder_log] {
        let prev = PathBuf::from(format!("{}.1", log.display()));
        println!("{}: {} bytes, {}: {} bytes", log.display(), size(log), prev.display(), size(&prev));
        assert!(size(&prev) > 3 << 20, "the previous file is kept");
    }
    assert!(b.kelp.log_text().contains("log over its cap"));
    // The writers go on: the mount works, and juicefs still logs to its file.
    std::fs::write(t.join("f"), b"x").unwrap();
    cleanup(&mut c, id, &staging, &[&t]).await;
    let tail = std::fs::read_to_string(&jfs_log).unwrap_or_default();
    println!("juicefs log after rotation and unmount: {} bytes", tail.len());
}
