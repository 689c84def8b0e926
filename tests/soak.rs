//! Repetition on the real programs: a metadata outage under the journaling writer,
//! twenty times in one run (`KELP_OUTAGES`), and the soak: cycles of a volume's whole
//! life with a random fault in each (`KELP_SOAK_CYCLES`, 50 by default), checked
//! after every cycle for acknowledged writes lost and for processes, mounts, FUSE
//! connections, databases and buckets that no volume owns. Faults and outages are
//! drawn from a seeded generator; the seed is printed and `KELP_SEED` repeats a run.

mod common;

use common::csi::{self, volume_capability::access_mode::Mode};
use common::journal::{unix_secs, JournalWriter};
use common::life::*;
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const GIB: i64 = 1 << 30;

/// The outage loop's `--wedged-after`: above juicefs's longest pause between two
/// retries (10 s), so a heal there is a wedge, not an impatient node.
const OUTAGE_WEDGED_AFTER: u64 = 12;
/// The soak's: short, so its cycles stay short.
const SOAK_WEDGED_AFTER: u64 = 5;

/// xorshift64*: enough randomness for drawing faults, and repeatable from its seed.
struct Rng(u64);

impl Rng {
    fn new(what: &str) -> Rng {
        let seed = std::env::var("KELP_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
        eprintln!("{what}: KELP_SEED={seed}");
        Rng(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The `q` quantile (0..=1) of `v`, nearest rank.
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s[((s.len() - 1) as f64 * q).round() as usize]
}

/// Ends the test's mounts, daemons and holders when dropped, also half-way.
struct Leftovers(PathBuf, PathBuf);

impl Drop for Leftovers {
    fn drop(&mut self) {
        force_cleanup(&self.0, &self.1);
    }
}

/// The time from `back` (Unix seconds) to the writer's first acknowledgement after
/// it, waiting at most `within`.
fn resumed_after(writer: &JournalWriter, back: f64, within: Duration) -> Option<f64> {
    poll_until(within, Duration::from_millis(50), || {
        writer.acked().into_iter().map(|(_, at)| at).find(|&at| at > back).map(|at| at - back)
    })
}

/// Twenty outages of the metadata server, 5 to 60 s, each starting at a random point
/// of the writer's cycle: after every one the writer acknowledges again within
/// `--wedged-after` and a heal (a wedged call is answered `EINTR` once kelp ends that
/// juicefs), and no acknowledged step is lost.
#[tokio::test(flavor = "multi_thread")]
async fn metadata_outages_under_a_writer_are_bounded_stalls() {
    let outages = env_count("KELP_OUTAGES", 20);
    let mut rng = Rng::new("outages");
    let mut redis = Redis::start(Some(META_PASSWORD));
    let addr = format!("127.0.0.1:{}", free_port());
    let kelp = KelpBuilder::new()
        .redis(&redis)
        .weed(shared_weed())
        .args(["--repair-interval=1", "--idle-release=600", &format!("--metrics-addr={addr}")])
        .arg(format!("--wedged-after={OUTAGE_WEDGED_AFTER}"))
        .start();
    let root = scratch("soak-outages");
    let _left = Leftovers(root.clone(), kelp.state_dir.clone());
    let mut c = csi::connect(&kelp.endpoint).await;
    let id = c.create("soak-outages", GIB).await.unwrap().volume_id;
    let (staging, t) = (root.join("st"), root.join("t"));
    c.stage(&id, &s(&staging), Mode::SingleNodeWriter).await.unwrap();
    c.publish(&id, &s(&staging), &s(&t), Mode::SingleNodeWriter, false).await.unwrap();
    let writer = JournalWriter::start(&t, &root.join("journal"), false);
    assert!(poll_until(Duration::from_secs(30), Duration::from_millis(100), || (writer.acks() > 10)
        .then_some(()))
    .is_some());
    // The wedge bound, a repair pass, a new juicefs, go-fuse's 3 s before it answers
    // the request it lost, and juicefs's own retry pause (up to 10 s).
    let within = Duration::from_secs(OUTAGE_WEDGED_AFTER + 30);
    let mut resumes = Vec::new();
    for i in 0..outages {
        let secs = match i {
            0 => 60,
            1 => 30,
            _ if rng.below(20) < 17 => rng.range(5, 7),
            _ => rng.range(8, 20),
        };
        std::thread::sleep(Duration::from_millis(rng.below(1000)));
        redis.stop();
        std::thread::sleep(Duration::from_secs(secs));
        redis.restart();
        let back = unix_secs();
        let Some(d) = resumed_after(&writer, back, within) else {
            panic!(
                "outage {i} ({secs} s): the writer did not acknowledge within {within:?} of the server's return; kelp log tail:\n{}",
                tail(&kelp.log_text(), 40)
            );
        };
        eprintln!("outage {i}: {secs} s; the writer acknowledged again {d:.2} s after the server was back");
        resumes.push(d);
    }
    let text = scrape(&addr);
    let healed = sample(&text, "kelp_volume_wedges_healed_total", &[]).unwrap_or(0.0) as u64;
    let (report, summary) = writer.finish();
    let errors = report["errors"].as_object().unwrap();
    assert!(
        errors.is_empty() || (healed > 0 && errors.keys().all(|e| e == "EINTR" || e == "EBADF")),
        "errors other than a healed call's: {summary}"
    );
    eprintln!(
        "outages: {outages}, wedges healed by kelp: {healed}; from the server's return to the next acknowledged step: p50 {:.2} s, max {:.2} s; writer: {}",
        quantile(&resumes, 0.5),
        quantile(&resumes, 1.0),
        summary.trim()
    );
    cleanup(&mut c, &id, &staging, &[&t]).await;
    assert!(mounts_under(&root).is_empty());
}

/// The faults a soak cycle draws from.
#[derive(Debug, Clone, Copy)]
enum Fault {
    KillJuicefs,
    KillHolder,
    KillKelp,
    KillMeta,
    RestartMeta,
}

const FAULTS: [Fault; 5] =
    [Fault::KillJuicefs, Fault::KillHolder, Fault::KillKelp, Fault::KillMeta, Fault::RestartMeta];

/// The FUSE connection of the mount at `path`: its device minor, which names it in
/// `/sys/fs/fuse/connections`.
fn fuse_connection(path: &Path) -> String {
    let m = mount_at(path).expect("a mount");
    m.device.split(':').nth(1).unwrap().to_string()
}

/// Volumes unstaged but not yet deleted. DeleteVolume refuses (after 8 s) while a
/// killed juicefs's session still looks live, about 24 s after its last beat; a CO
/// retries, and so does the soak, at the end of a later cycle once that time has
/// passed. Until then their databases and buckets are still owned.
#[derive(Default, Clone)]
struct Deleting(Vec<(String, String, Instant)>);

/// How long after a juicefs died its session stops counting as live.
const SESSION_GONE: Duration = Duration::from_secs(26);

impl Deleting {
    /// Tries each pending delete that is due once; keeps the ones not due or refused.
    async fn retry(&mut self, c: &mut csi::Clients) {
        let mut still = Vec::new();
        for (id, fs, due) in self.0.drain(..) {
            if Instant::now() < due {
                still.push((id, fs, due));
                continue;
            }
            match c.delete(&id).await {
                Ok(()) => {}
                Err(e) if e.code() == tonic::Code::FailedPrecondition => still.push((id, fs, due)),
                Err(e) => panic!("DeleteVolume {id}: {e}"),
            }
        }
        self.0 = still;
    }

    fn owns_db(&self, db: &str) -> bool {
        self.0.iter().any(|(id, _, _)| format!("db{}", db_of(id)) == db)
    }

    fn owns_bucket(&self, bucket: &str) -> bool {
        self.0.iter().any(|(_, fs, _)| format!("kelp-{fs}") == bucket)
    }
}

/// What a finished cycle left that no volume owns; empty when nothing.
fn leftovers(
    root: &Path,
    kelp: &Kelp,
    redis: &Redis,
    weed: &Weed,
    deleting: &Deleting,
    fs: &str,
    conn: &str,
) -> Vec<String> {
    let mut left = Vec::new();
    let daemons = juicefs_pids(fs);
    if !daemons.is_empty() {
        left.push(format!("juicefs {daemons:?}"));
    }
    let holders = holder_pids(&kelp.state_dir);
    if !holders.is_empty() {
        left.push(format!("FUSE holders {holders:?}"));
    }
    let mounts = mounts_under(root);
    if !mounts.is_empty() {
        left.push(format!("mounts {:?}", mounts.iter().map(|m| &m.mount_point).collect::<Vec<_>>()));
    }
    if Path::new("/sys/fs/fuse/connections").join(conn).exists() {
        left.push(format!("FUSE connection {conn}"));
    }
    let keyspace = redis.cli(0, &["info", "keyspace"]);
    let dbs: Vec<&str> = keyspace
        .lines()
        .filter_map(|l| l.split(':').next())
        .filter(|db| db.starts_with("db") && *db != "db0" && !deleting.owns_db(db))
        .collect();
    if !dbs.is_empty() {
        left.push(format!("databases {dbs:?}"));
    }
    let buckets: Vec<String> = weed.buckets().into_iter().filter(|b| !deleting.owns_bucket(b)).collect();
    if !buckets.is_empty() {
        left.push(format!("buckets {buckets:?}"));
    }
    left
}

/// Cycles of create, stage, publish, write with the journaling writer, one random
/// fault (kill -9 of juicefs, of the FUSE holder, of `kelp serve` or of the metadata
/// server, or a clean stop and start of the metadata server), unpublish, unstage and
/// delete. After each: the writer acknowledged again after the fault, no step it
/// acknowledged is lost, and nothing is left that no volume owns.
#[tokio::test(flavor = "multi_thread")]
async fn soak_volume_lives_with_random_faults() {
    let cycles = env_count("KELP_SOAK_CYCLES", 50);
    let mut rng = Rng::new("soak");
    let mut redis = Redis::start(Some(META_PASSWORD));
    // Its own SeaweedFS: every bucket in it is this test's.
    let weed = Weed::start();
    let mut kelp = KelpBuilder::new()
        .redis(&redis)
        .weed(&weed)
        .args(["--repair-interval=1", "--idle-release=600"])
        .arg(format!("--wedged-after={SOAK_WEDGED_AFTER}"))
        .start();
    let root = scratch("soak");
    let _left = Leftovers(root.clone(), kelp.state_dir.clone());
    let fusectl = poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
        mount_at(Path::new("/sys/fs/fuse/connections")).map(drop)
    });
    assert!(fusectl.is_some(), "kelp mounts fusectl at start; without it FUSE connections cannot be counted");
    let started = Instant::now();
    let (mut faults, mut errors) = (BTreeMap::<String, u64>::new(), BTreeMap::<String, u64>::new());
    let (mut acked, mut stalls) = (0u64, Vec::new());
    let mut deleting = Deleting::default();
    for i in 0..cycles {
        let cycle = Instant::now();
        let mut phases = Vec::new();
        let mut c = csi::connect(&kelp.endpoint).await;
        let vol = c.create(&format!("soak-{i}"), GIB).await.unwrap();
        let (id, fs) = (vol.volume_id.clone(), vol.volume_context["fsName"].clone());
        let (staging, t) = (root.join(format!("st{i}")), root.join(format!("t{i}")));
        c.stage(&id, &s(&staging), Mode::SingleNodeWriter).await.unwrap();
        c.publish(&id, &s(&staging), &s(&t), Mode::SingleNodeWriter, false).await.unwrap();
        let conn = fuse_connection(&staging);
        let daemon = juicefs_pids(&fs);
        phases.push(("up", cycle.elapsed()));
        let writer = JournalWriter::start(&t, &root.join(format!("j{i}")), false);
        assert!(
            poll_until(Duration::from_secs(30), Duration::from_millis(50), || (writer.acks() >= 3)
                .then_some(()))
            .is_some(),
            "cycle {i}: the writer never started"
        );
        phases.push(("writing", cycle.elapsed()));
        let fault = FAULTS[rng.below(FAULTS.len() as u64) as usize];
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        let at = unix_secs();
        match fault {
            Fault::KillJuicefs => kill_pids(&juicefs_pids(&fs)),
            Fault::KillHolder => kill_pids(&holder_pids(&kelp.state_dir)),
            Fault::KillKelp => {
                kelp.kill();
                std::thread::sleep(Duration::from_millis(rng.below(1000)));
                kelp.restart();
                c = csi::connect(&kelp.endpoint).await;
            }
            Fault::KillMeta | Fault::RestartMeta => {
                if matches!(fault, Fault::KillMeta) {
                    redis.stop();
                } else {
                    redis.terminate();
                }
                std::thread::sleep(Duration::from_millis(rng.range(500, 3000)));
                redis.restart();
            }
        }
        *faults.entry(format!("{fault:?}")).or_default() += 1;
        let within = Duration::from_secs(SOAK_WEDGED_AFTER + 40);
        let Some(stall) = resumed_after(&writer, at, within) else {
            panic!(
                "cycle {i} ({fault:?}): the writer did not acknowledge within {within:?}; kelp log tail:\n{}",
                tail(&kelp.log_text(), 40)
            );
        };
        stalls.push(stall);
        phases.push(("resumed", cycle.elapsed()));
        let (report, _) = writer.finish();
        acked += report["acked"].as_u64().unwrap();
        for (e, n) in report["errors"].as_object().unwrap() {
            *errors.entry(format!("{fault:?}:{e}")).or_default() += n.as_u64().unwrap();
        }
        // A juicefs that died (killed, or ended by a heal) leaves a session that
        // looks live for a while: that volume's delete waits until it does not. So
        // does one that served without a holder: the unmount ends it, not a clean exit.
        let died = juicefs_pids(&fs) != daemon || matches!(fault, Fault::KillHolder);
        c.unpublish(&id, &s(&t)).await.unwrap();
        c.unstage(&id, &s(&staging)).await.unwrap();
        let due = Instant::now() + if died { SESSION_GONE } else { Duration::ZERO };
        deleting.0.push((id.clone(), fs.clone(), due));
        deleting.retry(&mut c).await;
        phases.push(("released", cycle.elapsed()));
        let left = poll_until(Duration::from_secs(20), Duration::from_millis(200), || {
            leftovers(&root, &kelp, &redis, &weed, &deleting, &fs, &conn).is_empty().then_some(())
        });
        assert!(
            left.is_some(),
            "cycle {i} ({fault:?}) left: {:?}",
            leftovers(&root, &kelp, &redis, &weed, &deleting, &fs, &conn)
        );
        let phases: Vec<String> = phases.iter().map(|(p, t)| format!("{p} {:.1}", t.as_secs_f64())).collect();
        eprintln!("cycle {i}: {fault:?}, {:.1} s ({})", cycle.elapsed().as_secs_f64(), phases.join(", "));
    }
    let mut c = csi::connect(&kelp.endpoint).await;
    let deleted = poll_until_async(SESSION_GONE + Duration::from_secs(60), Duration::from_secs(1), || {
        let (mut c, mut d) = (c.clone(), deleting.clone());
        async move {
            d.retry(&mut c).await;
            d.0.is_empty().then_some(())
        }
    })
    .await;
    assert!(deleted.is_some(), "volumes never deletable: {:?}", deleting.0);
    deleting.0.clear();
    let left = leftovers(&root, &kelp, &redis, &weed, &deleting, "", "none");
    assert!(left.is_empty(), "after the last delete: {left:?}");
    c.identity.probe(csi::ProbeRequest {}).await.unwrap();
    // Counted from the log: the counter starts afresh with every kelp the soak kills.
    let healed = kelp.log_text().matches("mount wedged").count();
    eprintln!(
        "soak: {cycles} cycles in {:.0} s ({:.1} s each); faults {faults:?}; {acked} steps acknowledged, 0 lost; \
         errors by fault {errors:?}; wedges healed {healed}; from the fault to the next acknowledged step: p50 {:.2} s, max {:.2} s; 0 leftovers",
        started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64() / cycles.max(1) as f64,
        quantile(&stalls, 0.5),
        quantile(&stalls, 1.0),
    );
}
