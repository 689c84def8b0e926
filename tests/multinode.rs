//! Three simulated nodes in network namespaces, each with its own metadata master and
//! kelp node service, one SeaweedFS and the controller in the root namespace.
//!
//! The masters are what a real kelp cluster runs: KeyDB active-replica multi-master
//! peers, each replicating from both others through a delay proxy, so every
//! replication link has a controllable lag and can be paused on its own.
//! scripts/test.sh always has one (scripts/deps.sh builds it from third_party/keydb);
//! only a `cargo test` by hand on a machine without `keydb-server` on its PATH falls
//! back to Redis: node 0 the primary, the others writable replicas, whose own writes
//! never propagate; the tests that need a real multi-master say they were skipped.
//! Each test prints which servers it ran on.

mod common;

use common::csi::{self, volume_capability::access_mode::Mode, Clients};
use common::journal::{check_steps, unix_secs, JournalWriter};
use common::testbed::{Bed as Net, DelayProxy};
use common::*;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::Code;

const GIB: i64 = 1 << 30;
const META_PORT: u16 = 6379;

/// The metadata servers of the bed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Masters {
    /// KeyDB active-replica multi-master: every node's master takes writes and
    /// replicates them to the others.
    KeyDb,
    /// Redis: node 0 the primary, the others writable replicas of it.
    RedisReplicas,
}

fn masters() -> Masters {
    let keydb = std::process::Command::new("keydb-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if keydb {
        Masters::KeyDb
    } else {
        Masters::RedisReplicas
    }
}

struct Cluster {
    weed: Weed,
    /// Node `i`'s metadata master (KeyDB: deploy/swarm/kelp-keydb.sh, which runs it).
    redis: Vec<Proc>,
    /// Node `i`'s master's data directory and its peers (the delay proxies), to
    /// start it again after a crash.
    master_setup: Vec<(PathBuf, Vec<String>)>,
    masters: Masters,
    /// The replication link into node `i` from node `j`, by `(i, j)`.
    links: HashMap<(usize, usize), DelayProxy>,
    /// Node `i`'s link to the registry (node 0's master, the controller's): its
    /// heartbeat and lease renewals go through it.
    registry_links: Vec<DelayProxy>,
    _controller: Kelp,
    nodes: Vec<Option<Kelp>>,
    controller_endpoint: String,
    root: PathBuf,
    /// State dirs of killed node drivers, whose juicefs daemons still run.
    dead: Vec<PathBuf>,
    /// Dropped after every process running in its namespaces.
    net: Net,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for dir in self.nodes.iter().flatten().map(|n| n.state_dir.clone()).chain(self.dead.clone()) {
            force_cleanup(&self.root, &dir);
        }
        // The supervising scripts' servers: killing a script alone would orphan them.
        for m in &self.redis {
            kill_pids(&children(m.pid() as i32));
        }
    }
}

/// Every test bed uses the same bridge address, so the tests take turns.
static ONE_BED: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Cluster {
    /// `delay`: one-way delay on the replication links; `fence_wait`: the nodes' bound.
    fn start(delay: Duration, fence_wait: u64) -> Cluster {
        let turn = ONE_BED.lock().unwrap_or_else(|e| e.into_inner());
        let net = Net::new(3);
        let bridge = net.bridge_ip().to_string();
        let weed = Weed::start_at(&bridge);
        let ips: Vec<String> = net.nodes().iter().map(|n| n.ip.to_string()).collect();
        let masters = masters();
        eprintln!("multinode: metadata masters are {masters:?}");
        let mut redis = Vec::new();
        let mut master_setup = Vec::new();
        let mut links = HashMap::new();
        for (i, ip) in ips.iter().enumerate() {
            // Replicate from every other node (KeyDB) or from node 0 (Redis replicas).
            let sources: Vec<usize> = match masters {
                Masters::KeyDb => (0..ips.len()).filter(|&j| j != i).collect(),
                Masters::RedisReplicas if i > 0 => vec![0],
                Masters::RedisReplicas => vec![],
            };
            let mut peers = Vec::new();
            for j in sources {
                let source: SocketAddr = format!("{}:{META_PORT}", ips[j]).parse().unwrap();
                let link = DelayProxy::start(format!("{bridge}:0").parse().unwrap(), source, delay);
                peers.push(format!("{bridge}:{}", link.addr.port()));
                links.insert((i, j), link);
            }
            let dir = scratch("mn-meta");
            let proc = match masters {
                Masters::KeyDb => serve_master(&net, i, &dir, &peers),
                Masters::RedisReplicas => {
                    let mut cmd = net.command(i, "redis-server");
                    cmd.args([
                        "--bind",
                        "0.0.0.0",
                        "--port",
                        &META_PORT.to_string(),
                        "--protected-mode",
                        "no",
                    ])
                    .args(["--save", "", "--appendonly", "no", "--databases", &DATABASES.to_string()])
                    .arg("--dir")
                    .arg(&dir)
                    .args(["--repl-diskless-sync-delay", "0"])
                    .stdout(std::process::Stdio::null());
                    for p in &peers {
                        let (host, port) = p.split_once(':').unwrap();
                        cmd.args(["--replicaof", host, port, "--replica-read-only", "no"]);
                    }
                    Proc { child: cmd.spawn().unwrap(), name: "redis-server" }
                }
            };
            redis.push(proc);
            master_setup.push((dir, peers));
            assert!(wait_addr(ip, META_PORT, Duration::from_secs(60)), "metadata master in node {i}");
        }
        if masters == Masters::KeyDb {
            wait_unquiesced(&net, "the masters started");
        }
        let primary_url = format!("redis://{}:{META_PORT}", ips[0]);
        let registry: SocketAddr = format!("{}:{META_PORT}", ips[0]).parse().unwrap();
        let registry_links: Vec<DelayProxy> = (0..3)
            .map(|_| DelayProxy::start(format!("{bridge}:0").parse().unwrap(), registry, delay))
            .collect();
        // Backups only when a test asks (`kelp admin backup now`): a scheduled one
        // between a test's backup and its later writes would hold those writes.
        let controller = KelpBuilder::new()
            .services("controller")
            .arg(format!("--meta-url={primary_url}"))
            .arg("--backup-interval=0")
            .weed(&weed)
            .start();
        let nodes = (0..3)
            .map(|i| {
                let node = KelpBuilder::new().services("node").netns(&net, i).args([
                    format!("--node-id=n{i}"),
                    format!("--meta-url=redis://127.0.0.1:{META_PORT}"),
                    format!("--meta-advertise=redis://{}:{META_PORT}", ips[i]),
                    format!("--registry-url=redis://{bridge}:{}", registry_links[i].addr.port()),
                    "--repair-interval=1".into(),
                    "--idle-release=600".into(),
                    format!("--fence-wait={fence_wait}"),
                ]);
                Some(node.start())
            })
            .collect();
        let controller_endpoint = controller.endpoint.clone();
        let c = Cluster {
            weed,
            redis,
            master_setup,
            masters,
            links,
            registry_links,
            _controller: controller,
            nodes,
            controller_endpoint,
            root: scratch("multinode"),
            dead: Vec::new(),
            net,
            _turn: turn,
        };
        c.wait_nodes_known();
        c.wait_replicas_up();
        c
    }

    /// Waits until every replication link reports up.
    fn wait_replicas_up(&self) {
        let lagging = || -> Vec<String> {
            self.net
                .nodes()
                .iter()
                .enumerate()
                .filter(|(i, _)| self.links.keys().any(|(to, _)| to == i))
                .map(|(_, n)| n.ip.to_string())
                .filter(|ip| {
                    let info = redis_cli(ip, &["info", "replication"]);
                    !info.contains("link_status:up") || info.contains("link_status:down")
                })
                .collect()
        };
        let synced = poll_until(Duration::from_secs(30), Duration::from_millis(100), || {
            lagging().is_empty().then_some(())
        });
        assert!(synced.is_some(), "replication into {:?} never came up", lagging());
    }

    /// Kills node `i`'s keydb-server with SIGKILL (a crash, an OOM kill); its
    /// supervising script exits with it, as a Swarm task would.
    fn crash_master(&mut self, i: usize) {
        let sh = &mut self.redis[i];
        let server: Vec<i32> = children(sh.pid() as i32)
            .into_iter()
            .filter(|p| cmdline(*p).is_some_and(|c| c.starts_with("keydb-server")))
            .collect();
        assert!(!server.is_empty(), "node {i}'s master is not running");
        kill_pids(&server);
        let _ = sh.child.wait();
    }

    /// Starts node `i`'s master again from its data directory, as Swarm starts a new
    /// task, and returns once it serves on its port (after its rejoin).
    fn restart_master(&mut self, i: usize) -> Duration {
        let started = Instant::now();
        let (dir, peers) = self.master_setup[i].clone();
        self.redis[i] = serve_master(&self.net, i, &dir, &peers);
        let served = started.elapsed();
        wait_unquiesced(&self.net, &format!("node {i}'s master joined"));
        served
    }

    /// Starts every master again at once from its data directory, as Swarm starts a
    /// global service's tasks after all of them stopped, and returns once each serves.
    fn restart_all_masters(&mut self) -> Duration {
        let started = Instant::now();
        for i in 0..self.redis.len() {
            let (dir, peers) = self.master_setup[i].clone();
            self.redis[i] = keydb_master(&self.net, i, &dir, &peers);
        }
        for (i, n) in self.net.nodes().iter().enumerate() {
            let ip = n.ip.to_string();
            assert!(
                wait_addr(&ip, META_PORT, Duration::from_secs(60)),
                "node {i}'s master never served again"
            );
        }
        let served = started.elapsed();
        wait_unquiesced(&self.net, "the masters started again");
        served
    }

    /// Pauses or resumes the replication link into node `to` from node `from`.
    fn pause_link(&self, to: usize, from: usize, paused: bool) {
        self.links[&(to, from)].pause(paused);
    }

    /// Whether the masters are KeyDB multi-master; if not, says that `test` is skipped:
    /// writers on several nodes need writable masters that replicate.
    fn multi_master(&self, test: &str) -> bool {
        if self.masters != Masters::KeyDb {
            eprintln!("SKIPPED {test}: needs writable masters that replicate, i.e. KeyDB multi-master (no keydb-server found)");
        }
        self.masters == Masters::KeyDb
    }

    /// Cuts node `i` off from every other node and from the registry, or heals it.
    /// `drop`: connections are closed; otherwise they are held open, delivering nothing.
    fn partition(&self, i: usize, on: bool, drop: bool) {
        let mut links: Vec<&DelayProxy> =
            self.links.iter().filter(|((to, from), _)| *to == i || *from == i).map(|(_, l)| l).collect();
        links.push(&self.registry_links[i]);
        for l in links {
            if drop {
                l.cut(on);
            } else {
                l.pause(on);
            }
        }
    }

    /// Kills every process in node `i`'s network namespace at once (kelp, juicefs,
    /// the FUSE holders, the metadata master), as a node that loses power.
    fn kill_namespace(&mut self, i: usize) -> usize {
        use std::os::unix::fs::MetadataExt;
        let ns = std::fs::metadata(format!("/run/netns/{}", self.net.nodes()[i].name)).unwrap().ino();
        let want = format!("net:[{ns}]");
        let pids: Vec<i32> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|p| {
                std::fs::read_link(format!("/proc/{p}/ns/net")).is_ok_and(|l| l.to_str() == Some(&want))
            })
            .collect();
        kill_pids(&pids);
        self.kill_node(i);
        pids.len()
    }

    fn wait_nodes_known(&self) {
        let primary = self.net.nodes()[0].ip.to_string();
        let known = poll_until(Duration::from_secs(60), Duration::from_millis(200), || {
            (redis_cli(&primary, &["hlen", "kelp:nodes"]).trim() == "3").then_some(())
        });
        assert!(known.is_some(), "nodes never announced themselves");
    }

    async fn controller(&self) -> Clients {
        csi::connect(&self.controller_endpoint).await
    }

    async fn node(&self, i: usize) -> Clients {
        csi::connect(&self.nodes[i].as_ref().expect("node runs").endpoint).await
    }

    fn paths(&self, i: usize, vol: &str) -> (String, PathBuf) {
        let staging = self.root.join(format!("n{i}/staged/{}", vol.replace(':', "_")));
        let target = self.root.join(format!("n{i}/published/{}", vol.replace(':', "_")));
        (staging.display().to_string(), target)
    }

    async fn create(&self, name: &str, mode: Mode, params: &[(&str, &str)]) -> String {
        let mut req = kelp::volume::create_request(name, GIB, mode);
        req.parameters = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut c = self.controller().await;
        c.ctl.create_volume(req).await.unwrap().into_inner().volume.unwrap().volume_id
    }

    async fn controller_publish(
        &self,
        vol: &str,
        i: usize,
        mode: Mode,
    ) -> Result<HashMap<String, String>, tonic::Status> {
        let mut c = self.controller().await;
        let r = c
            .ctl
            .controller_publish_volume(csi::ControllerPublishVolumeRequest {
                volume_id: vol.into(),
                node_id: format!("n{i}"),
                volume_capability: Some(csi::mount_cap(mode)),
                ..Default::default()
            })
            .await?;
        Ok(r.into_inner().publish_context)
    }

    async fn controller_unpublish(&self, vol: &str, i: usize) {
        let mut c = self.controller().await;
        c.ctl
            .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
                volume_id: vol.into(),
                node_id: format!("n{i}"),
                secrets: Default::default(),
            })
            .await
            .unwrap();
    }

    /// NodeStage + NodePublish on node `i` with the controller's publish context.
    async fn mount(
        &self,
        vol: &str,
        i: usize,
        mode: Mode,
        ctx: &HashMap<String, String>,
    ) -> Result<PathBuf, tonic::Status> {
        let (staging, target) = self.paths(i, vol);
        let mut n = self.node(i).await;
        n.node
            .node_stage_volume(csi::NodeStageVolumeRequest {
                volume_id: vol.into(),
                staging_target_path: staging.clone(),
                volume_capability: Some(csi::mount_cap(mode)),
                publish_context: ctx.clone(),
                ..Default::default()
            })
            .await?;
        n.node
            .node_publish_volume(csi::NodePublishVolumeRequest {
                volume_id: vol.into(),
                staging_target_path: staging,
                target_path: target.display().to_string(),
                volume_capability: Some(csi::mount_cap(mode)),
                publish_context: ctx.clone(),
                ..Default::default()
            })
            .await?;
        Ok(target)
    }

    /// What Swarm does when a task stops: NodeUnpublish, NodeUnstage, ControllerUnpublish.
    async fn release(&self, vol: &str, i: usize) {
        let (staging, target) = self.paths(i, vol);
        let mut n = self.node(i).await;
        n.unpublish(vol, &target.display().to_string()).await.unwrap();
        n.unstage(vol, &staging).await.unwrap();
        self.controller_unpublish(vol, i).await;
    }

    fn kill_node(&mut self, i: usize) {
        let mut n = self.nodes[i].take().unwrap();
        n.kill();
        // Its mounts stay, as after a crash of the driver or a partition; they are
        // cleaned when the cluster drops.
        self.dead.push(n.state_dir.clone());
    }
}

/// Node `i`'s KeyDB master as a real node runs it: through deploy/swarm/kelp-keydb.sh
/// (the rejoin after a crash), persisting every commit before it is acknowledged.
fn keydb_master(net: &Net, i: usize, dir: &Path, peers: &[String]) -> Proc {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/swarm/kelp-keydb.sh");
    let log = dir.with_extension("log");
    let mut cmd = net.command(i, "sh");
    cmd.arg(script)
        .args(["--bind", "0.0.0.0", "--protected-mode", "no", "--databases", &DATABASES.to_string()])
        .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
        // Full syncs start at once instead of after a 5 s batching delay.
        .args(["--repl-diskless-sync-delay", "0"])
        .arg("--logfile")
        .arg(&log)
        .env("KEYDB_DIR", dir)
        .env("KEYDB_PORT", META_PORT.to_string())
        .env("KEYDB_PEERS", peers.join(" "))
        .env("NODE", format!("n{i}"))
        .env("KEYDB_RELEASE_WAIT", "5");
    Proc { child: cmd.spawn().unwrap(), name: "kelp-keydb.sh" }
}

/// Node `i`'s KeyDB master, started as Swarm runs its task: a script that ends before
/// its master serves (a join that gave up after `KEYDB_JOIN_MAX`, to start over) is
/// started again, at most twice. Returns once the master serves on its port. A
/// master after the first joins (quiesce, copies, digests) before it opens its port:
/// seconds, more when KeyDB leaves a handshake unserved (docs/notes.md).
fn serve_master(net: &Net, i: usize, dir: &Path, peers: &[String]) -> Proc {
    let ip = net.nodes()[i].ip.to_string();
    for start in 1..=3 {
        let mut proc = keydb_master(net, i, dir, peers);
        let served = poll_until(Duration::from_secs(90), Duration::from_millis(50), || {
            if TcpStream::connect((ip.as_str(), META_PORT)).is_ok() {
                Some(true)
            } else {
                (!proc.is_running()).then_some(false)
            }
        });
        match served {
            Some(true) => return proc,
            Some(false) => eprintln!(
                "node {i}'s kelp-keydb.sh ended before its master served (start {start}); starting it again"
            ),
            None => panic!("node {i}'s master did not serve within 90 s of its start"),
        }
    }
    panic!("node {i}'s master did not serve in three starts");
}

/// `juicefs fsck` of the volume's database through every node's master: after a
/// crash and a join each must hold a whole, consistent file system.
fn fsck_on_every_master(c: &Cluster, db: u32) {
    for n in c.net.nodes() {
        assert_fsck_clean(&format!("redis://{}:{META_PORT}", n.ip), None, db);
    }
}

/// Waits until no master refuses writes: a join keeps every master quiesced
/// (replica-read-only) until its peers have linked back and the digests are
/// compared. A master that leaves the question unanswered (KeyDB's unserved
/// connections, docs/notes.md) is asked again, not counted as quiesced.
fn wait_unquiesced(net: &Net, after: &str) {
    let quiesced = || {
        net.nodes().iter().any(|n| {
            redis_cli(&n.ip.to_string(), &["config", "get", "replica-read-only"]).lines().nth(1)
                == Some("yes")
        })
    };
    let lifted =
        poll_until(Duration::from_secs(120), Duration::from_millis(200), || (!quiesced()).then_some(()));
    if lifted.is_none() {
        for n in net.nodes() {
            let ip = n.ip.to_string();
            eprintln!(
                "master {ip}: replica-read-only {:?}; clients:\n{}",
                redis_cli(&ip, &["config", "get", "replica-read-only"]).lines().nth(1),
                redis_cli(&ip, &["client", "list"])
            );
        }
    }
    assert!(lifted.is_some(), "a master stayed quiesced after {after}");
}

/// redis-cli against the server of a node; its standard output. Bounded: KeyDB
/// 6.3.4 sometimes never serves a new connection ("epoll_ctl failed" on its standard
/// error; its issues #76 and #82), and a poll must not hang on it.
fn redis_cli(ip: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("timeout")
        .args(["10", "redis-cli", "-h", ip, "-p", &META_PORT.to_string()])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write_files(dir: &Path, n: usize) {
    write_set(dir, "data", n);
}

/// `n` files in `dir/set`, each fsync'd, and the directory fsync'd.
fn write_set(dir: &Path, set: &str, n: usize) {
    use std::io::Write;
    std::fs::create_dir_all(dir.join(set)).unwrap();
    for i in 0..n {
        let mut f = std::fs::File::create(dir.join(format!("{set}/f{i}"))).unwrap();
        f.write_all(format!("content {i}").as_bytes()).unwrap();
        f.sync_all().unwrap();
    }
    std::fs::File::open(dir.join(set)).unwrap().sync_all().unwrap();
}

fn check_set(dir: &Path, set: &str, n: usize) {
    for i in 0..n {
        let got = std::fs::read_to_string(dir.join(format!("{set}/f{i}")))
            .unwrap_or_else(|e| panic!("{set}/f{i}: {e}"));
        assert_eq!(got, format!("content {i}"), "{set}/f{i}");
    }
}

fn check_files(dir: &Path, n: usize) {
    for i in 0..n {
        let got =
            std::fs::read_to_string(dir.join(format!("data/f{i}"))).unwrap_or_else(|e| panic!("f{i}: {e}"));
        assert_eq!(got, format!("content {i}"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn clean_handover_after_heavy_writes_loses_nothing() {
    let c = Cluster::start(Duration::from_millis(10), 10);
    let vol = c.create("handover", Mode::SingleNodeWriter, &[]).await;
    let ctx = c.controller_publish(&vol, 0, Mode::SingleNodeWriter).await.unwrap();
    assert!(!ctx.contains_key("kelp/meta"), "a single-node writer uses its local master: {ctx:?}");
    let t0 = c.mount(&vol, 0, Mode::SingleNodeWriter, &ctx).await.unwrap();
    write_files(&t0, 300);
    c.release(&vol, 0).await;

    let ctx = c.controller_publish(&vol, 1, Mode::SingleNodeWriter).await.unwrap();
    assert_eq!(ctx["kelp/fence"], "1", "node 1 waits for node 0's epoch: {ctx:?}");
    let t1 = c.mount(&vol, 1, Mode::SingleNodeWriter, &ctx).await.unwrap();
    check_files(&t1, 300);

    // `kelp admin volumes` shows the home master, the writer, its epoch and the fence.
    let out = run(std::process::Command::new(kelp_bin()).args([
        "admin",
        "--meta-url",
        &format!("redis://{}:{META_PORT}", c.net.nodes()[0].ip),
        "volumes",
    ]));
    let line = out.lines().find(|l| l.starts_with("handover ")).unwrap_or_else(|| panic!("{out}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    // The columns up to DB (BACKUP follows: no backup was taken in this bed).
    assert_eq!(
        &cols[2..9],
        &[
            "ready",
            &format!("redis://{}:{META_PORT}", c.net.nodes()[0].ip),
            "n1",
            "2",
            "no",
            "1",
            &db_of(&vol).to_string()
        ],
        "{out}"
    );

    c.release(&vol, 1).await;
    assert!(mounts_under(&c.root).is_empty());
    assert_fsck_clean(&format!("redis://{}:{META_PORT}", c.net.nodes()[1].ip), None, db_of(&vol));
}

/// The single writer moves 0 -> 1 -> 2 -> 0, each writing its own set of files
/// before it lets go, and each new writer finds every earlier set whole. The link
/// from node 0 into node 2 is paused from before node 0 writes until node 2 has
/// mounted: node 2 must get node 0's writes through node 1, or wait.
#[tokio::test(flavor = "multi_thread")]
async fn handovers_in_every_direction_lose_nothing() {
    let c = Cluster::start(Duration::from_millis(5), 20);
    if !c.multi_master("handovers_in_every_direction_lose_nothing") {
        return;
    }
    let vol = c.create("every-way", Mode::SingleNodeWriter, &[]).await;
    c.pause_link(2, 0, true);
    let mut done: Vec<String> = Vec::new();
    for (step, node) in [0usize, 1, 2, 0].into_iter().enumerate() {
        let ctx = c.controller_publish(&vol, node, Mode::SingleNodeWriter).await.unwrap();
        let started = Instant::now();
        let t = c.mount(&vol, node, Mode::SingleNodeWriter, &ctx).await.unwrap();
        eprintln!(
            "handover step {step}: node {node} mounted in {:.2} s (fence {:?})",
            started.elapsed().as_secs_f64(),
            ctx.get("kelp/fence")
        );
        for set in &done {
            check_set(&t, set, 200);
        }
        if step == 2 {
            c.pause_link(2, 0, false);
        }
        let set = format!("step{step}-n{node}");
        write_set(&t, &set, 200);
        done.push(set);
        c.release(&vol, node).await;
    }
    assert!(mounts_under(&c.root).is_empty());
    assert_fsck_clean(&format!("redis://{}:{META_PORT}", c.net.nodes()[0].ip), None, db_of(&vol));
}

#[tokio::test(flavor = "multi_thread")]
async fn handover_before_replication_caught_up_waits_then_succeeds() {
    let c = Cluster::start(Duration::from_millis(10), 4);
    let vol = c.create("lagging", Mode::SingleNodeWriter, &[]).await;
    let ctx = c.controller_publish(&vol, 0, Mode::SingleNodeWriter).await.unwrap();
    let t0 = c.mount(&vol, 0, Mode::SingleNodeWriter, &ctx).await.unwrap();
    write_files(&t0, 50);

    // Replication into node 1 stalls (from every peer: KeyDB peers pass on what
    // they received, so node 0's writes could also come through node 2); node 0 lets go.
    let into_1: Vec<usize> = c.links.keys().filter(|(to, _)| *to == 1).map(|(_, from)| *from).collect();
    for &from in &into_1 {
        c.pause_link(1, from, true);
    }
    c.release(&vol, 0).await;
    let ctx = c.controller_publish(&vol, 1, Mode::SingleNodeWriter).await.unwrap();

    // Past the bound: a clear refusal, nothing mounted.
    let err = c.mount(&vol, 1, Mode::SingleNodeWriter, &ctx).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("check replication"), "{}", err.message());
    assert!(mounts_under(&c.root.join("n1")).is_empty());

    // Within the bound: the stage waits and then mounts everything node 0 wrote.
    let stage = tokio::spawn({
        let (vol, ctx, ep) = (vol.clone(), ctx.clone(), c.nodes[1].as_ref().unwrap().endpoint.clone());
        let (staging, _) = c.paths(1, &vol);
        async move {
            let mut n = csi::connect(&ep).await;
            let started = Instant::now();
            let r = n
                .node
                .node_stage_volume(csi::NodeStageVolumeRequest {
                    volume_id: vol,
                    staging_target_path: staging,
                    volume_capability: Some(csi::mount_cap(Mode::SingleNodeWriter)),
                    publish_context: ctx,
                    ..Default::default()
                })
                .await;
            (r, started.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!stage.is_finished(), "the stage must wait for the fence");
    for &from in &into_1 {
        c.pause_link(1, from, false);
    }
    let (r, waited) = stage.await.unwrap();
    r.expect("stage succeeds once the fence arrives");
    assert!(waited >= Duration::from_millis(1500));
    let t1 = c.mount(&vol, 1, Mode::SingleNodeWriter, &ctx).await.unwrap();
    check_files(&t1, 50);
    c.release(&vol, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crashed_writer_is_refused_or_taken_over_as_configured() {
    let mut c = Cluster::start(Duration::from_millis(10), 10);
    let never = c.create("never-taken", Mode::SingleNodeWriter, &[]).await;
    let after = c.create("taken-after", Mode::SingleNodeWriter, &[("takeover-after", "8")]).await;
    let mut targets = Vec::new();
    for vol in [&never, &after] {
        let ctx = c.controller_publish(vol, 0, Mode::SingleNodeWriter).await.unwrap();
        targets.push(c.mount(vol, 0, Mode::SingleNodeWriter, &ctx).await.unwrap());
    }
    let w0 = writer_running(&targets[1].join("w0"), &c.root.join("journal-n0"), 10);
    // Node 0's driver dies without releasing anything; its juicefs and FUSE holders
    // live on. Nothing renews the lease, so the holder of the leased volume stops its
    // juicefs when the lease ends.
    let killed = unix_secs();
    c.kill_node(0);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let err = c.controller_publish(&never, 1, Mode::SingleNodeWriter).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("held by node \"n0\""), "{}", err.message());

    // Not before its lease has lapsed for takeover-after.
    let err = c.controller_publish(&after, 1, Mode::SingleNodeWriter).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    tokio::time::sleep(Duration::from_secs(7)).await;
    let ctx = c
        .controller_publish(&after, 1, Mode::SingleNodeWriter)
        .await
        .expect("taken over after 8 s of silence");
    assert_eq!(ctx["kelp/fence"], "0", "a takeover has no fence to wait for");
    assert!(
        ctx.contains_key("kelp/db") && ctx.contains_key("kelp/seed"),
        "a takeover starts a new generation: {ctx:?}"
    );
    let late: Vec<_> = w0.acked().into_iter().filter(|(_, at)| *at > killed + LEASE_S + 0.2).collect();
    assert!(late.is_empty(), "node 0 acknowledged writes after its lease ended, its driver dead: {late:?}");
    eprintln!(
        "driver crash: node 0 acknowledged its last step {:.2} s after its driver died",
        w0.acked().last().map(|(_, at)| at - killed).unwrap_or(0.0)
    );
    w0.stop(Duration::from_secs(2));
    let t1 = c.mount(&after, 1, Mode::SingleNodeWriter, &ctx).await.unwrap();
    std::fs::write(t1.join("after-takeover"), b"ok").unwrap();
    c.release(&after, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_writers_commit_through_one_master() {
    let c = Cluster::start(Duration::from_millis(10), 10);
    let vol = c.create("shared", Mode::MultiNodeMultiWriter, &[]).await;
    let home = format!("redis://{}:{META_PORT}", c.net.nodes()[0].ip);
    let mut targets = Vec::new();
    for i in [1, 2] {
        let ctx = c.controller_publish(&vol, i, Mode::MultiNodeMultiWriter).await.unwrap();
        assert_eq!(ctx.get("kelp/meta"), Some(&home), "node {i} is sent to the home master");
        targets.push(c.mount(&vol, i, Mode::MultiNodeMultiWriter, &ctx).await.unwrap());
    }
    // Through one master, a write on node 1 is at once visible on node 2 (through the
    // local replicas it never would be: writes to a replica do not propagate).
    std::fs::write(targets[0].join("from-n1"), b"hello").unwrap();
    assert_eq!(std::fs::read(targets[1].join("from-n1")).unwrap(), b"hello");
    std::fs::write(targets[1].join("from-n2"), b"hi").unwrap();
    assert_eq!(std::fs::read(targets[0].join("from-n2")).unwrap(), b"hi");
    // The volume condition names the master in use.
    let (_, t) = c.paths(1, &vol);
    let mut n = c.node(1).await;
    let st = n
        .node
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: vol.clone(),
            volume_path: t.display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(st.volume_condition.unwrap().message.contains("home master"));
    for i in [1, 2] {
        c.release(&vol, i).await;
    }
}

/// `takeover-after` of the failover tests, and the lease it gives (pinning::lease_ms).
const TAKEOVER_AFTER: u64 = 8;
const LEASE_S: f64 = 3.0;

/// Publishes `vol` to node `i` until the controller grants it (a takeover waits for
/// the holder's lease to lapse); returns the context and how many refusals came first.
async fn publish_until_granted(c: &Cluster, vol: &str, i: usize) -> (HashMap<String, String>, usize) {
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match c.controller_publish(vol, i, Mode::SingleNodeWriter).await {
            Ok(ctx) => return (ctx, refused),
            Err(e) if e.code() == Code::FailedPrecondition && Instant::now() < deadline => {
                assert!(e.message().contains("held by node"), "{}", e.message());
                refused += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("publish to node {i}: {e}"),
        }
    }
}

/// The live generation's database of a volume, from the registry's holder record.
fn live_db(c: &Cluster, vol: &str) -> u32 {
    let id = kelp::volume::VolumeId::parse(vol).unwrap();
    let primary = c.net.nodes()[0].ip.to_string();
    // A volume never taken over has no generation in its holder record: its own.
    let db = redis_cli(&primary, &["hget", &format!("kelp:holder:{}", id.fs_name), "db"]);
    db.trim().parse().ok().filter(|db| *db > 0).unwrap_or(id.db)
}

/// A digest of database `db` on node `i`'s master by content, not encoding (keys,
/// and each value in a canonical order), so two masters can be compared.
fn content_digest(c: &Cluster, i: usize, db: u32) -> String {
    redis_cli(&c.net.nodes()[i].ip.to_string(), &["eval", CONTENT_DIGEST_LUA, "0", &db.to_string()])
        .trim()
        .to_string()
}

/// Every key of a file (i, d, c, x, p, s followed by its inode) in database `db` of
/// node `i`'s master, with a digest of its content (see [`CONTENT_DIGEST_LUA`]).
fn file_key_digests(c: &Cluster, i: usize, db: u32) -> HashMap<String, String> {
    const DIGESTS: &str = r#"
redis.call('SELECT', ARGV[1])
local out = {}
for _, k in ipairs(redis.call('KEYS', '*')) do
  if string.match(k, '^[idxps]%d+$') or string.match(k, '^c%d+_%d+$') then
    local t = redis.call('TYPE', k)['ok']
    local v = {}
    if t == 'string' then v = { redis.call('GET', k) }
    elseif t == 'hash' then
      local h = redis.call('HGETALL', k)
      for j = 1, #h, 2 do v[#v + 1] = h[j] .. '=' .. h[j + 1] end
      table.sort(v)
    elseif t == 'list' then v = redis.call('LRANGE', k, 0, -1)
    end
    out[#out + 1] = k
    out[#out + 1] = redis.sha1hex(t .. table.concat(v, '\0'))
  end
end
return out
"#;
    let text = redis_cli(&c.net.nodes()[i].ip.to_string(), &["eval", DIGESTS, "0", &db.to_string()]);
    let lines: Vec<&str> = text.lines().collect();
    lines.chunks(2).filter(|p| p.len() == 2).map(|p| (p[0].to_string(), p[1].to_string())).collect()
}

/// Checks what a new holder sees in `dir` of the old holder's acknowledged steps
/// `acked`, `at` being when the old holder was cut off or lost: every step
/// acknowledged a second before must be there, whole; of the rest, what is there
/// must be whole. Returns how many steps came in that last second, and how many of
/// them are absent.
fn check_survivors(dir: &Path, acked: &[(u64, f64)], at: f64) -> (usize, usize) {
    let (settled, rest): (Vec<_>, Vec<_>) = acked.iter().partition(|(_, t)| *t < at - 1.0);
    let missing = check_steps(dir, settled.iter().map(|(n, _)| *n), true);
    assert!(
        missing.is_empty(),
        "steps acknowledged a second before the cut or loss are missing: {missing:?}"
    );
    let absent = check_steps(dir, rest.iter().map(|(n, _)| *n), false);
    (rest.len(), absent.len())
}

/// A volume with `takeover-after` held by node 1, whose writer has acknowledged `n`
/// steps in `w1/`: its id and the writer.
async fn leased_writer_on_node_1(c: &Cluster, name: &str, n: usize) -> (String, JournalWriter) {
    let vol =
        c.create(name, Mode::SingleNodeWriter, &[("takeover-after", &TAKEOVER_AFTER.to_string())]).await;
    let ctx = c.controller_publish(&vol, 1, Mode::SingleNodeWriter).await.unwrap();
    assert_eq!(
        ctx.get("kelp/lease-ms").map(String::as_str),
        Some("3000"),
        "the lease for takeover-after=8: {ctx:?}"
    );
    let t1 = c.mount(&vol, 1, Mode::SingleNodeWriter, &ctx).await.unwrap();
    let w = writer_running(&t1.join("w1"), &c.root.join(format!("journal-n1-{name}")), n);
    (vol, w)
}

/// A journalling writer in `dir` that has acknowledged `n` steps.
fn writer_running(dir: &Path, journal: &Path, n: usize) -> JournalWriter {
    let w = JournalWriter::start(dir, journal, false);
    let running =
        poll_until(Duration::from_secs(30), Duration::from_millis(50), || (w.acks() >= n).then_some(()));
    assert!(running.is_some(), "the writer in {dir:?} never acknowledged {n} steps");
    w
}

/// Every regular file under `dir` has its own inode: two names sharing one is what
/// merged masters produced (docs/pinning.md).
fn assert_no_shared_inodes(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let mut seen: HashMap<u64, PathBuf> = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            }
            files += 1;
            if let Some(other) = seen.insert(m.ino(), e.path()) {
                panic!("inode {} is shared by {other:?} and {:?}", m.ino(), e.path());
            }
        }
    }
    eprintln!("inodes: {files} entries, each with its own inode");
}

/// Waits until nodes `nodes`' masters hold the same content in database `db`.
fn assert_converged(c: &Cluster, nodes: &[usize], db: u32) {
    let digests = || nodes.iter().map(|&i| content_digest(c, i, db)).collect::<Vec<_>>();
    let same = poll_until(Duration::from_secs(60), Duration::from_millis(500), || {
        let d = digests();
        d.windows(2).all(|w| w[0] == w[1]).then_some(d)
    });
    if same.is_none() {
        // Which keys differ, and how: what a failure needs to be understood.
        let keys = |i: usize| -> std::collections::BTreeSet<String> {
            let ip = c.net.nodes()[i].ip.to_string();
            redis_cli(&ip, &["-n", &db.to_string(), "keys", "*"]).lines().map(String::from).collect()
        };
        let all: Vec<_> = nodes.iter().map(|&i| (i, keys(i))).collect();
        for (i, k) in &all {
            for (j, other) in &all {
                let only: Vec<_> = k.difference(other).collect();
                if i != j && !only.is_empty() {
                    eprintln!("db {db}: on master {i}, not on master {j}: {only:?}");
                }
            }
        }
    }
    assert!(same.is_some(), "masters {nodes:?} never converged on database {db}: {:?}", digests());
    eprintln!("masters {nodes:?} converged on the live generation (db {db}): {:?}", same.unwrap()[0]);
}

/// The holder is cut off from every other node and from the registry, its writer
/// going on. It must fence itself before its lease ends (no acknowledgement after
/// that), the volume is taken over by another node only after takeover-after, in a
/// new generation holding every write the new holder's master had; after the heal
/// the old holder's mount fails instead of writing, its tail stays in the retired
/// generation, counted and readable, and the masters converge on the live one.
#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_holder_fences_itself_and_its_tail_never_merges() {
    let c = Cluster::start(Duration::from_millis(10), 10);
    if !c.multi_master("a_partitioned_holder_fences_itself_and_its_tail_never_merges") {
        return;
    }
    let (vol, w1) = leased_writer_on_node_1(&c, "partition", 30).await;
    // A second volume held by node 1, whose writer stops before the cut: it has no
    // tail, and kelp must say so.
    let (idle, w_idle) = leased_writer_on_node_1(&c, "partition-idle", 20).await;
    let idle_fs = kelp::volume::VolumeId::parse(&idle).unwrap().fs_name;
    w_idle.finish();
    std::thread::sleep(Duration::from_secs(2));

    // The partition: node 1 keeps running, its writer too, but reaches no one.
    let cut = unix_secs();
    let cut_at = Instant::now();
    c.partition(1, true, false);
    let (ctx2, refused) = publish_until_granted(&c, &vol, 2).await;
    let granted = cut_at.elapsed().as_secs_f64();
    // The last renewal that worked was up to a renewal period (1 s) before the cut.
    assert!(granted >= TAKEOVER_AFTER as f64 - 1.2, "taken over after {granted:.1} s, before takeover-after");
    assert_eq!(
        ctx2["kelp/seed"],
        db_of(&vol).to_string(),
        "seeded from the generation node 1 wrote: {ctx2:?}"
    );
    let t2 = c.mount(&vol, 2, Mode::SingleNodeWriter, &ctx2).await.unwrap();
    let mounted = cut_at.elapsed().as_secs_f64();
    eprintln!("partition: {refused} publishes refused; taken over {granted:.1} s after the cut, usable on node 2 after {mounted:.1} s");
    let (ctx_idle, _) = publish_until_granted(&c, &idle, 2).await;
    c.mount(&idle, 2, Mode::SingleNodeWriter, &ctx_idle).await.unwrap();
    // What node 2's master held of each retired generation when it took over: the
    // baseline the test counts the tail against, by its own digests.
    let at_takeover = [file_key_digests(&c, 2, db_of(&vol)), file_key_digests(&c, 2, db_of(&idle))];

    // Node 1 fenced itself before its lease ended: nothing acknowledged after it.
    let acked1 = w1.acked();
    let late: Vec<_> = acked1.iter().filter(|(_, at)| *at > cut + LEASE_S + 0.2).collect();
    assert!(late.is_empty(), "node 1 acknowledged writes after its lease ended: {late:?}");
    let in_partition = acked1.iter().filter(|(_, at)| *at > cut).count();
    eprintln!(
        "partition: node 1 acknowledged {in_partition} steps after the cut, the last {:.2} s after it",
        acked1.last().map(|(_, at)| at - cut).unwrap_or(0.0)
    );

    // Node 2 continues from what its master had: every step node 1 acknowledged well
    // before the cut, and whatever is there of the rest, whole.
    let (tail, absent) = check_survivors(&t2.join("w1"), &acked1, cut);
    eprintln!("partition: of {tail} steps acknowledged from 1 s before the cut, {absent} are not in the live generation");
    let w2 = writer_running(&t2.join("w2"), &c.root.join("journal-n2"), 50);

    // Heal. Node 1 renews, learns it was taken over, and cuts its mount off: its
    // writer gets errors from then on, never a success.
    let healed = unix_secs();
    c.partition(1, false, false);
    let errored = poll_until(Duration::from_secs(30), Duration::from_millis(100), || {
        w1.errors().iter().any(|(_, at)| *at > healed).then_some(())
    });
    assert!(errored.is_some(), "node 1's writer never saw an error after the heal");
    std::thread::sleep(Duration::from_secs(1));
    let after_heal = w1.acked().into_iter().filter(|(_, at)| *at > cut + LEASE_S + 0.2).count();
    assert_eq!(after_heal, 0, "node 1 acknowledged writes after it was taken over");
    let errors1 = w1.errors();
    eprintln!(
        "partition: node 1's writer got {} errors after the heal ({:?})",
        errors1.len(),
        errors1.first().map(|e| &e.0)
    );
    w1.stop(Duration::from_secs(10));
    let n2 = w2.finish().0["acked"].as_u64().unwrap();
    eprintln!("partition: node 2 acknowledged {n2} steps, all present");
    assert_no_shared_inodes(&t2);

    // The tail: counted by kelp on node 1's master once it can be read again, and
    // exactly the keys of files that differ there from what node 2's master held at
    // the takeover (counted here by the test's own digests); none for the volume
    // whose writer had stopped.
    let admin = || {
        run(std::process::Command::new(kelp_bin()).args([
            "admin",
            "--meta-url",
            &format!("redis://{}:{META_PORT}", c.net.nodes()[0].ip),
            "generations",
        ]))
    };
    let vol_fs = kelp::volume::VolumeId::parse(&vol).unwrap().fs_name;
    let settled_tail = |fs: &str| {
        let out = admin();
        let line = out.lines().find(|l| l.split_whitespace().next() == Some(fs))?.to_string();
        let keys: u64 = line.split_whitespace().nth(8)?.parse().ok()?;
        (!line.contains("(counting)") && line.contains(&c.net.nodes()[1].ip.to_string()))
            .then_some((keys, out))
    };
    let mut reported = Vec::new();
    for (fs, db, before) in
        [(&vol_fs, db_of(&vol), &at_takeover[0]), (&idle_fs, db_of(&idle), &at_takeover[1])]
    {
        let got = poll_until(Duration::from_secs(60), Duration::from_secs(1), || settled_tail(fs));
        let (keys, out) = got.unwrap_or_else(|| panic!("kelp never settled the tail of {fs}:\n{}", admin()));
        let after = file_key_digests(&c, 1, db);
        let differ = before.iter().filter(|(k, d)| after.get(*k) != Some(*d)).count()
            + after.keys().filter(|k| !before.contains_key(*k)).count();
        eprintln!("partition: {fs}: kelp counts {keys} keys of files in the tail, the test {differ}:\n{out}");
        assert_eq!(keys as usize, differ, "the tail kelp reports for {fs} is not what differs");
        reported.push(keys);
    }
    assert_eq!(reported[1], 0, "a holder that acknowledged nothing after the cut has no tail");
    if reported[0] > 0 {
        // The documented recovery: the retired generation, read-only, from node 1's master.
        let retired = db_of(&vol);
        let look = c.root.join("retired");
        std::fs::create_dir_all(&look).unwrap();
        let subdir = kelp::volume::VolumeId::parse(&vol).unwrap().subdir().expect("a tree-layout volume");
        run(std::process::Command::new("juicefs").args([
            "mount",
            "--background",
            "--read-only",
            "--no-usage-report",
            "--no-bgjob",
            &format!("--subdir={subdir}"),
            &format!("redis://{}:{META_PORT}/{retired}", c.net.nodes()[1].ip),
            &look.display().to_string(),
        ]));
        let last = acked1.iter().map(|(n, _)| *n).max().unwrap();
        let recovered = check_steps(&look.join("w1"), [last], true);
        let _ = std::process::Command::new("umount").arg(&look).status();
        assert!(recovered.is_empty(), "node 1's last acknowledged step is not in the retired generation");
    }

    // Release everything; the masters converge on the live generation, which
    // JuiceFS's own check calls clean.
    let mut n1 = c.node(1).await;
    for v in [&vol, &idle] {
        c.release(v, 2).await;
        let (staging1, target1) = c.paths(1, v);
        n1.unpublish(v, &target1.display().to_string()).await.unwrap();
        n1.unstage(v, &staging1).await.unwrap();
    }
    assert_converged(&c, &[0, 1, 2], live_db(&c, &vol));
    assert_fsck_clean(&format!("redis://{}:{META_PORT}", c.net.nodes()[2].ip), None, live_db(&c, &vol));
    assert!(mounts_under(&c.root).is_empty(), "{:?}", mounts_under(&c.root));
}

/// One replication link of the holder is cut (its connections dropped): the holder
/// still renews its lease, so the volume is not taken over and the holder is not
/// fenced. Then the holder's node dies whole (every process in its namespace): the
/// volume is taken over after takeover-after, and the new holder, whose master got the
/// old holder's writes only through the third master, has every one of them.
#[tokio::test(flavor = "multi_thread")]
async fn a_cut_link_keeps_the_holder_and_a_lost_node_is_taken_over_whole() {
    let mut c = Cluster::start(Duration::from_millis(10), 10);
    if !c.multi_master("a_cut_link_keeps_the_holder_and_a_lost_node_is_taken_over_whole") {
        return;
    }
    let (vol, w1) = leased_writer_on_node_1(&c, "node-loss", 20).await;

    // Node 2 stops hearing from node 1 directly.
    c.links[&(2, 1)].cut(true);
    let before = w1.acks();
    tokio::time::sleep(Duration::from_secs(TAKEOVER_AFTER + 2)).await;
    let err = c.controller_publish(&vol, 2, Mode::SingleNodeWriter).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains("held by node \"n1\""), "{}", err.message());
    assert!(w1.acks() > before + 20, "the holder kept writing while only a replication link was down");
    assert!(w1.errors().is_empty(), "the holder's writer saw errors: {:?}", w1.errors());

    // The node dies.
    let killed = unix_secs();
    let lost_at = Instant::now();
    let n = c.kill_namespace(1);
    let (ctx2, refused) = publish_until_granted(&c, &vol, 2).await;
    let granted = lost_at.elapsed().as_secs_f64();
    let t2 = c.mount(&vol, 2, Mode::SingleNodeWriter, &ctx2).await.unwrap();
    eprintln!(
        "node loss: {n} processes killed; {refused} publishes refused; taken over {granted:.1} s after, usable on node 2 after {:.1} s",
        lost_at.elapsed().as_secs_f64()
    );
    let acked1 = w1.acked();
    w1.stop(Duration::from_secs(5));
    let (rest, absent) = check_survivors(&t2.join("w1"), &acked1, killed);
    eprintln!(
        "node loss: {} steps acknowledged, all present but {absent} of the last second's {rest}",
        acked1.len()
    );
    let w2 = writer_running(&t2.join("w2"), &c.root.join("journal-n2"), 30);
    w2.finish();
    assert_no_shared_inodes(&t2);
    c.release(&vol, 2).await;
    c.links[&(2, 1)].cut(false);
    assert_converged(&c, &[0, 2], live_db(&c, &vol));
}

/// Swarm may never unstage: node 0 lets its task go (unpublish only) and keeps the
/// volume staged; node 1 writes and lets go; then node 0 is published again while
/// replication into it is held. Its old staged mount must not be handed to the task
/// before node 1's fence has replicated: the publish is refused past the fence wait,
/// and once replication resumes the task sees everything node 1 wrote.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_still_staged_waits_for_the_next_writers_fence() {
    let c = Cluster::start(Duration::from_millis(10), 3);
    if !c.multi_master("a_node_still_staged_waits_for_the_next_writers_fence") {
        return;
    }
    let vol = c.create("restaged", Mode::SingleNodeWriter, &[]).await;
    let ctx = c.controller_publish(&vol, 0, Mode::SingleNodeWriter).await.unwrap();
    let t0 = c.mount(&vol, 0, Mode::SingleNodeWriter, &ctx).await.unwrap();
    write_set(&t0, "n0", 20);
    let mut n0 = c.node(0).await;
    n0.unpublish(&vol, &t0.display().to_string()).await.unwrap();
    c.controller_unpublish(&vol, 0).await;

    let ctx = c.controller_publish(&vol, 1, Mode::SingleNodeWriter).await.unwrap();
    let t1 = c.mount(&vol, 1, Mode::SingleNodeWriter, &ctx).await.unwrap();
    for from in [1, 2] {
        c.pause_link(0, from, true);
    }
    write_set(&t1, "n1", 50);
    c.release(&vol, 1).await;

    let ctx = c.controller_publish(&vol, 0, Mode::SingleNodeWriter).await.unwrap();
    let (staging, target) = c.paths(0, &vol);
    let publish = || csi::NodePublishVolumeRequest {
        volume_id: vol.clone(),
        staging_target_path: staging.clone(),
        target_path: target.display().to_string(),
        volume_capability: Some(csi::mount_cap(Mode::SingleNodeWriter)),
        publish_context: ctx.clone(),
        ..Default::default()
    };
    let err = n0.node.node_publish_volume(publish()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(mounts_under(&c.root.join("n0/published")).is_empty(), "nothing published before the fence");
    for from in [1, 2] {
        c.pause_link(0, from, false);
    }
    n0.node.node_publish_volume(publish()).await.expect("published once the fence replicated");
    check_set(&target, "n1", 50);
    check_set(&target, "n0", 20);
    c.release(&vol, 0).await;
    assert!(mounts_under(&c.root).is_empty());
}

/// A snapshot of a volume whose single writer is on node 1 is taken on node 1's
/// master, where its writes are committed, even while the controller's own master
/// has none of them yet (its link from node 1 paused); restored on node 2 once the
/// writer let go, every acknowledged file is there. The copy's effects replicate
/// between KeyDB masters as effects, never as a script re-run on older data.
#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_is_taken_where_the_writer_commits() {
    use csi::volume_content_source::{SnapshotSource, Type};
    let c = Cluster::start(Duration::from_millis(5), 20);
    if !c.multi_master("a_snapshot_is_taken_where_the_writer_commits") {
        return;
    }
    let vol = c.create("snap-remote", Mode::SingleNodeWriter, &[]).await;
    let ctx = c.controller_publish(&vol, 1, Mode::SingleNodeWriter).await.unwrap();
    let t1 = c.mount(&vol, 1, Mode::SingleNodeWriter, &ctx).await.unwrap();
    c.pause_link(0, 1, true);
    write_files(&t1, 100);
    let mut ctl = c.controller().await;
    let snap = ctl
        .ctl
        .create_snapshot(csi::CreateSnapshotRequest {
            source_volume_id: vol.clone(),
            name: "remote-snap".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    write_set(&t1, "after", 10);
    c.pause_link(0, 1, false);
    c.release(&vol, 1).await;

    let mut req = kelp::volume::create_request("snap-remote-restored", GIB, Mode::SingleNodeWriter);
    req.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(Type::Snapshot(SnapshotSource { snapshot_id: snap.snapshot_id.clone() })),
    });
    let restored = ctl.ctl.create_volume(req).await.unwrap().into_inner().volume.unwrap().volume_id;
    let ctx = c.controller_publish(&restored, 2, Mode::SingleNodeWriter).await.unwrap();
    let t2 = c.mount(&restored, 2, Mode::SingleNodeWriter, &ctx).await.unwrap();
    check_files(&t2, 100);
    assert!(!t2.join("after").exists(), "written after the snapshot");
    c.release(&restored, 2).await;
    for id in [&restored, &vol] {
        ctl.delete(id).await.unwrap();
    }
    ctl.ctl
        .delete_snapshot(csi::DeleteSnapshotRequest { snapshot_id: snap.snapshot_id, ..Default::default() })
        .await
        .unwrap();
    assert!(mounts_under(&c.root).is_empty());
}

/// The first mount of a volume just made, on node `i`, retried while its master
/// has not yet replicated the volume's format from the controller's (`NotFound`), as
/// the CO retries; says how long that took.
async fn first_mount(c: &Cluster, vol: &str, i: usize) -> PathBuf {
    let started = Instant::now();
    loop {
        let ctx = c.controller_publish(vol, i, Mode::SingleNodeWriter).await.unwrap();
        match c.mount(vol, i, Mode::SingleNodeWriter, &ctx).await {
            Ok(t) => {
                if started.elapsed() > Duration::from_millis(500) {
                    eprintln!(
                        "first mount on node {i} waited {:.1} s for the volume to replicate",
                        started.elapsed().as_secs_f64()
                    );
                }
                return t;
            }
            Err(e) if e.code() == Code::NotFound && started.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Err(e) => panic!("first mount on node {i}: {e}"),
        }
    }
}

/// Mounts `vol` as its single writer on each of `nodes` in turn (a handover each,
/// waiting for the previous writer's fence on that node's master), runs `check` on
/// what that node sees, and releases it.
async fn check_on_every_node(c: &Cluster, vol: &str, nodes: &[usize], check: impl Fn(usize, &Path)) {
    for &i in nodes {
        let ctx = c.controller_publish(vol, i, Mode::SingleNodeWriter).await.unwrap();
        let t = c
            .mount(vol, i, Mode::SingleNodeWriter, &ctx)
            .await
            .unwrap_or_else(|e| panic!("mount on node {i}: {e}"));
        eprintln!("checking through node {i}'s mount");
        check(i, &t);
        c.release(vol, i).await;
    }
}

/// Node 1 (B) writes, hands over to node 2 (A; not the registry's master), A writes, and A's master is killed
/// with SIGKILL mid-write and started again. Restarted from its own files, KeyDB
/// dropped every write it had from its peers and its stale keys won the merge: all
/// of B's files were gone on every master. With the rejoin (deploy/swarm/kelp-keydb.sh)
/// A's master comes back empty, takes its peers' copy and only then serves: every
/// file B wrote is there through every node, and so is every step A's writer
/// acknowledged, but for those its master had not yet passed on when it died (the
/// last few milliseconds: counted and printed).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a master-crash test: scripts/test.sh runs these in a step of their own, one at a time (cargo test --test multinode -- --ignored --test-threads=1), because a join quiesces every master and the suite's second test thread stretched it past the bounds"]
async fn a_crashed_writers_master_rejoins_without_losing_the_previous_writers_files() {
    let mut c = Cluster::start(Duration::from_millis(10), 20);
    if !c.multi_master("a_crashed_writers_master_rejoins_without_losing_the_previous_writers_files") {
        return;
    }
    for run in 0..2 {
        let vol = c.create(&format!("crash-a{run}"), Mode::SingleNodeWriter, &[]).await;
        let t1 = first_mount(&c, &vol, 1).await;
        write_set(&t1, "b", 100);
        let wb = writer_running(&t1.join("wb"), &c.root.join(format!("journal-a{run}-b")), 100);
        let b_acked: Vec<u64> = wb.acked().iter().map(|(n, _)| *n).collect();
        let _ = wb.stop(Duration::from_secs(30));
        let b_acked: Vec<u64> = {
            // What it acknowledged up to its stop (the list read before may be short).
            let all = std::fs::read_to_string(c.root.join(format!("journal-a{run}-b/journal"))).unwrap();
            let n = all.lines().filter(|l| l.starts_with("ack ")).count() as u64;
            assert!(n as usize >= b_acked.len());
            (0..n).collect()
        };
        c.release(&vol, 1).await;

        let ctx = c.controller_publish(&vol, 2, Mode::SingleNodeWriter).await.unwrap();
        let t0 = c.mount(&vol, 2, Mode::SingleNodeWriter, &ctx).await.unwrap();
        let wa = writer_running(&t0.join("wa"), &c.root.join(format!("journal-a{run}-a")), 80);
        let crash = unix_secs();
        c.crash_master(2);
        let back = c.restart_master(2);
        let back_at = unix_secs();
        // The writer resumes (or reports errors); it must not hang.
        let before = wa.acks();
        let resumed = poll_until(Duration::from_secs(60), Duration::from_millis(100), || {
            (wa.acks() >= before + 30).then_some(())
        });
        let a_acked = wa.acked();
        let errors = wa.errors();
        if resumed.is_none() {
            // Where it stopped: the writer's kernel wait and what node 2 did about it.
            let log = c.nodes[2].as_ref().map(|n| n.log_text()).unwrap_or_default();
            let wedge: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("wedged") || l.contains("silent") || l.contains("juicefs"))
                .collect();
            eprintln!(
                "run {run}: A's writer did not resume; it waits in {}\nnode 2's log on its mount:\n{}",
                wa.kernel_wait(),
                life::tail(&wedge.join("\n"), 40)
            );
        }
        let summary = wa.stop(Duration::from_secs(60));
        eprintln!(
            "run {run}: A's master served again {:.2} s after the kill; A's writer {} ({} errors: {:?}); summary {summary:?}",
            back.as_secs_f64(),
            if resumed.is_some() { "resumed" } else { "did NOT resume within 60 s" },
            errors.len(),
            errors.iter().take(3).collect::<Vec<_>>(),
        );
        assert!(summary.is_some(), "A's writer hung after its master's crash");
        let a_acked = {
            let all = std::fs::read_to_string(c.root.join(format!("journal-a{run}-a/journal"))).unwrap();
            let mut v = a_acked;
            for l in all.lines().filter(|l| l.starts_with("ack ")) {
                let f: Vec<&str> = l.split(' ').collect();
                let (n, at) = (f[1].parse::<u64>().unwrap(), f[2].parse::<f64>().unwrap());
                if !v.iter().any(|(m, _)| *m == n) {
                    v.push((n, at));
                }
            }
            v
        };
        // Steps acknowledged before the crash minus a second, or after the master
        // was back, must all be there; of the last second before the crash, count.
        let sure: Vec<u64> =
            a_acked.iter().filter(|(_, at)| *at < crash - 1.0 || *at > back_at).map(|(n, _)| *n).collect();
        let window: Vec<u64> =
            a_acked.iter().filter(|(_, at)| *at >= crash - 1.0 && *at <= back_at).map(|(n, _)| *n).collect();
        c.release(&vol, 2).await;
        let db = live_db(&c, &vol);
        assert_converged(&c, &[0, 1, 2], db);
        let lost = std::sync::Mutex::new(Vec::new());
        check_on_every_node(&c, &vol, &[0, 1, 2], |i, t| {
            check_set(t, "b", 100);
            let missing = check_steps(&t.join("wb"), b_acked.iter().copied(), true);
            assert!(missing.is_empty(), "node {i}: B's acknowledged steps missing: {missing:?}");
            let missing = check_steps(&t.join("wa"), sure.iter().copied(), true);
            assert!(missing.is_empty(), "node {i}: A's acknowledged steps missing: {missing:?}");
            let absent = check_steps(&t.join("wa"), window.iter().copied(), false);
            *lost.lock().unwrap() = absent;
            assert_no_shared_inodes(t);
        })
        .await;
        eprintln!(
            "run {run}: B {} steps + 100 files intact on every node; A {} steps intact, of {} acknowledged in the last second before the crash {} absent",
            b_acked.len(),
            sure.len(),
            window.len(),
            lost.lock().unwrap().len()
        );
        assert_converged(&c, &[0, 1, 2], db);
        fsck_on_every_master(&c, db);
    }
}

/// Node 2 (A) writes and hands over to node 1 (B); B deletes half of A's files and
/// writes its own while A's master (not the writer's) crashes and restarts. Merged
/// from its own files, A's master once handed out inodes twice and kept the masters
/// diverged; with the rejoin nothing B did is lost or undone, nothing deleted comes
/// back, and a handover back to A sees it all.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a master-crash test: scripts/test.sh runs these in a step of their own, one at a time (cargo test --test multinode -- --ignored --test-threads=1), because a join quiesces every master and the suite's second test thread stretched it past the bounds"]
async fn a_crashed_idle_master_rejoins_without_undoing_the_writers_deletes() {
    let mut c = Cluster::start(Duration::from_millis(10), 20);
    if !c.multi_master("a_crashed_idle_master_rejoins_without_undoing_the_writers_deletes") {
        return;
    }
    for run in 0..2 {
        let vol = c.create(&format!("crash-b{run}"), Mode::SingleNodeWriter, &[]).await;
        let t0 = first_mount(&c, &vol, 2).await;
        write_set(&t0, "a", 200);
        c.release(&vol, 2).await;

        let ctx = c.controller_publish(&vol, 1, Mode::SingleNodeWriter).await.unwrap();
        let t1 = c.mount(&vol, 1, Mode::SingleNodeWriter, &ctx).await.unwrap();
        check_set(&t1, "a", 200);
        for i in (0..200).step_by(2) {
            std::fs::remove_file(t1.join(format!("a/f{i}"))).unwrap();
        }
        std::fs::File::open(t1.join("a")).unwrap().sync_all().unwrap();
        let wb = writer_running(&t1.join("wb"), &c.root.join(format!("journal-b{run}")), 50);
        c.crash_master(2);
        let back = c.restart_master(2);
        let before = wb.acks();
        let more = poll_until(Duration::from_secs(30), Duration::from_millis(100), || {
            (wb.acks() >= before + 50).then_some(())
        });
        assert!(more.is_some(), "B's writer stalled while A's master rejoined");
        eprintln!("checking B's steps through B's own mount (node 1)");
        let (summary, _) = wb.finish();
        eprintln!(
            "run {run}: A's master served again {:.2} s after the kill; B's writer: {summary}",
            back.as_secs_f64()
        );
        let b_acked = summary["acked"].as_u64().unwrap();
        c.release(&vol, 1).await;
        let db = live_db(&c, &vol);
        assert_converged(&c, &[0, 1, 2], db);
        check_on_every_node(&c, &vol, &[2, 0, 1], |i, t| {
            for f in 0..200 {
                let p = t.join(format!("a/f{f}"));
                if f % 2 == 0 {
                    assert!(!p.exists(), "node {i}: a/f{f}, deleted on node 1, is back");
                } else {
                    assert_eq!(
                        std::fs::read_to_string(&p).unwrap(),
                        format!("content {f}"),
                        "node {i}: a/f{f}"
                    );
                }
            }
            let missing = check_steps(&t.join("wb"), 0..b_acked, true);
            assert!(missing.is_empty(), "node {i}: B's acknowledged steps missing: {missing:?}");
            assert_no_shared_inodes(t);
        })
        .await;
        eprintln!(
            "run {run}: 100 of A's files kept, 100 deletes held, {b_acked} of B's steps intact on every node"
        );
        assert_converged(&c, &[0, 1, 2], db);
        fsck_on_every_master(&c, db);
    }
}

/// Two masters crash one after the other (node 2's, then node 0's, the registry's)
/// while node 1 writes: each rejoins empty from the others, the writer never stops,
/// and every step it acknowledged is there through every node.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a master-crash test: scripts/test.sh runs these in a step of their own, one at a time (cargo test --test multinode -- --ignored --test-threads=1), because a join quiesces every master and the suite's second test thread stretched it past the bounds"]
async fn two_masters_crashing_one_after_the_other_lose_nothing() {
    let mut c = Cluster::start(Duration::from_millis(10), 20);
    if !c.multi_master("two_masters_crashing_one_after_the_other_lose_nothing") {
        return;
    }
    for run in 0..2 {
        let vol = c.create(&format!("crash-two{run}"), Mode::SingleNodeWriter, &[]).await;
        let t1 = first_mount(&c, &vol, 1).await;
        write_set(&t1, "b", 50);
        let w = writer_running(&t1.join("w"), &c.root.join(format!("journal-two{run}")), 30);
        for crashed in [2, 0] {
            c.crash_master(crashed);
            let back = c.restart_master(crashed);
            let before = w.acks();
            let more = poll_until(Duration::from_secs(30), Duration::from_millis(100), || {
                (w.acks() >= before + 30).then_some(())
            });
            assert!(more.is_some(), "the writer stalled after node {crashed}'s master crashed");
            eprintln!(
                "run {run}: node {crashed}'s master served again {:.2} s after the kill",
                back.as_secs_f64()
            );
        }
        let (summary, _) = w.finish();
        let acked = summary["acked"].as_u64().unwrap();
        c.release(&vol, 1).await;
        let db = live_db(&c, &vol);
        assert_converged(&c, &[0, 1, 2], db);
        check_on_every_node(&c, &vol, &[0, 2, 1], |i, t| {
            check_set(t, "b", 50);
            let missing = check_steps(&t.join("w"), 0..acked, true);
            assert!(missing.is_empty(), "node {i}: acknowledged steps missing: {missing:?}");
            assert_no_shared_inodes(t);
        })
        .await;
        eprintln!("run {run}: {acked} steps and 50 files intact on every node; writer {summary}");
        assert_converged(&c, &[0, 1, 2], db);
        fsck_on_every_master(&c, db);
    }
}

/// A volume of [`a_lost_metadata_cluster_is_restored_from_its_backups`]: the files
/// that must survive a restore (name, SHA-256) and those written after the last
/// backup, which must not.
struct Tracked {
    id: String,
    /// The family's fs name: its bucket, and how backups and restores name it.
    family: String,
    kept: Vec<(String, String)>,
    lost: Vec<String>,
}

impl Tracked {
    fn new(id: String) -> Tracked {
        let family = kelp::volume::VolumeId::parse(&id).unwrap().fs_name;
        Tracked { id, family, kept: Vec::new(), lost: Vec::new() }
    }

    /// Every kept file reads back whole through `dir` (node `i`'s mount), and no
    /// file written after the backup is there.
    fn check(&self, i: usize, dir: &Path) {
        for (name, sum) in &self.kept {
            assert_eq!(
                checksum(&dir.join(name)).as_deref(),
                Some(sum.as_str()),
                "node {i}: {name} of {}",
                self.id
            );
        }
        for name in &self.lost {
            assert!(!dir.join(name).exists(), "node {i}: {name} of {} was written after the backup", self.id);
        }
    }
}

/// How the metadata cluster is lost.
#[derive(Debug, Clone, Copy)]
enum Loss {
    /// `FLUSHALL` on every master.
    Flushall,
    /// Every master stopped, its data directory emptied (its AOF, RDB and the files
    /// a rejoin moved aside: a lost disk), and started again.
    FilesDeleted,
}

/// `kelp admin backup ARGS` as docs/operations.md has an operator run it on a
/// manager: the registry's master and the filer from the environment.
fn admin_backup(c: &Cluster, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(kelp_bin())
        .args(["admin", "backup"])
        .args(args)
        .env("KELP_META_URL", format!("redis://{}:{META_PORT}", c.net.nodes()[0].ip))
        .env("KELP_FILER", c.weed.filer_addr())
        .output()
        .expect("kelp admin backup");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Issue 36 on the multi-master bed. Two volumes (one written by a single writer on
/// node 1, with a clone; one shared by writers on nodes 0 and 2) get files, a backup
/// (`kelp admin backup now`), and more files; the whole metadata cluster is lost,
/// first by `FLUSHALL` on every master, then (after the first recovery, and more
/// files and another backup) by every master losing its data files. Each time the
/// documented recovery (`kelp admin backup restore --all`) brings back every file
/// from before the backup, whole, on each node that mounts it, reports the later
/// ones lost, leaves file systems `juicefs fsck` calls clean on every master, and the
/// same volume ids list, stage and take writes again.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_metadata_cluster_is_restored_from_its_backups() {
    use csi::volume_content_source::{Type, VolumeSource};
    let mut c = Cluster::start(Duration::from_millis(5), 20);
    if !c.multi_master("a_lost_metadata_cluster_is_restored_from_its_backups") {
        return;
    }
    let mut a = Tracked::new(c.create("mn-bk-a", Mode::SingleNodeWriter, &[]).await);
    let mut b = Tracked::new(c.create("mn-bk-b", Mode::MultiNodeMultiWriter, &[]).await);
    let mut clone: Option<Tracked> = None;
    for (phase, loss) in [(1, Loss::Flushall), (2, Loss::FilesDeleted)] {
        // Files before the backup: A's on node 1, B's on nodes 0 and 2.
        let ta = first_mount(&c, &a.id, 1).await;
        a.kept.extend(write_summed(&ta, &format!("p{phase}-a"), 6));
        if clone.is_none() {
            let mut req = kelp::volume::create_request("mn-bk-a-clone", GIB, Mode::SingleNodeWriter);
            req.volume_content_source = Some(csi::VolumeContentSource {
                r#type: Some(Type::Volume(VolumeSource { volume_id: a.id.clone() })),
            });
            let mut ctl = c.controller().await;
            let id = ctl.ctl.create_volume(req).await.unwrap().into_inner().volume.unwrap().volume_id;
            let mut t = Tracked::new(id);
            t.kept = a.kept.clone();
            clone = Some(t);
        }
        let mut tb = Vec::new();
        for i in [0, 2] {
            let ctx = c.controller_publish(&b.id, i, Mode::MultiNodeMultiWriter).await.unwrap();
            let t = c.mount(&b.id, i, Mode::MultiNodeMultiWriter, &ctx).await.unwrap();
            b.kept.extend(write_summed(&t, &format!("p{phase}-n{i}"), 4));
            tb.push(t);
        }

        let (ok, out) = admin_backup(&c, &["now"]);
        assert!(ok, "{out}");
        for v in [&a, &b] {
            assert!(out.contains(&format!("{}: kelp-backups/", v.family)), "{out}");
        }
        eprintln!("phase {phase}: backed up:\n{out}");

        // Files after it; then the tasks stop (step 1 of the recovery).
        a.lost.extend(write_summed(&ta, &format!("p{phase}-after-a"), 3).into_iter().map(|(n, _)| n));
        b.lost.extend(write_summed(&tb[1], &format!("p{phase}-after-b"), 3).into_iter().map(|(n, _)| n));
        c.release(&a.id, 1).await;
        for i in [0, 2] {
            c.release(&b.id, i).await;
        }
        assert!(mounts_under(&c.root).is_empty(), "{:?}", mounts_under(&c.root));

        // The loss.
        let mut dbs: Vec<u32> = [&a, &b, clone.as_ref().unwrap()].iter().map(|v| db_of(&v.id)).collect();
        dbs.sort_unstable();
        dbs.dedup();
        match loss {
            Loss::Flushall => {
                for n in c.net.nodes() {
                    assert_eq!(redis_cli(&n.ip.to_string(), &["FLUSHALL"]).trim(), "OK");
                }
            }
            Loss::FilesDeleted => {
                for i in 0..3 {
                    c.crash_master(i);
                }
                for (dir, _) in &c.master_setup {
                    std::fs::remove_dir_all(dir).unwrap();
                    std::fs::create_dir_all(dir).unwrap();
                }
                // Step 2: the masters come back empty, all at once as Swarm starts
                // them: each that finds no peer up serves as a new cluster, and they
                // replicate to one another.
                let back = c.restart_all_masters();
                eprintln!("phase {phase}: the masters, empty, all served after {:.2} s", back.as_secs_f64());
                c.wait_replicas_up();
            }
        }
        for n in c.net.nodes() {
            for &db in &dbs {
                let size = redis_cli(&n.ip.to_string(), &["-n", &db.to_string(), "dbsize"]);
                assert_eq!(size.trim(), "0", "database {db} on {} after {loss:?}", n.ip);
            }
        }

        // Step 3: the restore, exactly as documented.
        let started = Instant::now();
        let (ok, summary) = admin_backup(&c, &["restore", "--all"]);
        eprintln!(
            "phase {phase} ({loss:?}): restore --all took {:.2} s:\n{summary}",
            started.elapsed().as_secs_f64()
        );
        assert!(ok, "{summary}");
        for v in [&a, &b] {
            assert!(summary.contains(&format!("{}: restored from kelp-backups/", v.family)), "{summary}");
            // Each later file is one object (under one block, written at once); the
            // count also holds the earlier phase's, which stay in the bucket.
            let lost: Option<usize> = summary
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{}: LOST: ", v.family)))
                .and_then(|l| l.split_whitespace().next()?.parse().ok());
            assert!(
                lost.is_some_and(|n| n >= v.lost.len()),
                "the {} files written after the backup must be reported lost: {summary}",
                v.lost.len()
            );
        }
        // Step 4: every master holds the same file systems, which JuiceFS calls clean.
        for &db in &dbs {
            assert_converged(&c, &[0, 1, 2], db);
            fsck_on_every_master(&c, db);
        }
        c.wait_nodes_known();

        // The same ids list, stage and take writes again (step 5).
        let clone_v = clone.as_mut().unwrap();
        let mut ctl = c.controller().await;
        let listed = ctl.ctl.list_volumes(csi::ListVolumesRequest::default()).await.unwrap().into_inner();
        for v in [&a, &b, &*clone_v] {
            assert!(
                listed.entries.iter().any(|e| e.volume.as_ref().unwrap().volume_id == v.id),
                "{} not listed: {listed:?}",
                v.id
            );
        }
        let again = std::sync::Mutex::new(Vec::new());
        check_on_every_node(&c, &a.id, &[1, 2], |i, t| {
            a.check(i, t);
            again.lock().unwrap().extend(write_summed(t, &format!("p{phase}-again-a-n{i}"), 1));
        })
        .await;
        a.kept.extend(again.into_inner().unwrap());
        let mut tb = Vec::new();
        for i in [0, 2] {
            let ctx = c.controller_publish(&b.id, i, Mode::MultiNodeMultiWriter).await.unwrap();
            let t = c.mount(&b.id, i, Mode::MultiNodeMultiWriter, &ctx).await.unwrap();
            b.check(i, &t);
            tb.push(t);
        }
        // The volume's health names its last backup: the one restored from.
        let mut n0 = c.node(0).await;
        let st = n0
            .node
            .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: b.id.clone(),
                volume_path: tb[0].display().to_string(),
                staging_target_path: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let condition = st.volume_condition.unwrap();
        assert!(!condition.abnormal && condition.message.contains("last metadata backup "), "{condition:?}");
        let again = write_summed(&tb[1], &format!("p{phase}-again-b"), 2);
        for (name, sum) in &again {
            assert_eq!(checksum(&tb[0].join(name)).as_deref(), Some(sum.as_str()), "{name}, seen on node 0");
        }
        b.kept.extend(again);
        for i in [0, 2] {
            c.release(&b.id, i).await;
        }
        let again = std::sync::Mutex::new(Vec::new());
        check_on_every_node(&c, &clone_v.id, &[0], |i, t| {
            clone_v.check(i, t);
            again.lock().unwrap().extend(write_summed(t, &format!("p{phase}-again-clone"), 1));
        })
        .await;
        clone_v.kept.extend(again.into_inner().unwrap());
        eprintln!(
            "phase {phase} ({loss:?}): {} + {} + {} files whole on every node that mounts them, {} + {} later ones absent",
            a.kept.len(),
            b.kept.len(),
            clone_v.kept.len(),
            a.lost.len(),
            b.lost.len()
        );
    }
    for db in [db_of(&a.id), db_of(&b.id)] {
        assert_converged(&c, &[0, 1, 2], db);
        fsck_on_every_master(&c, db);
    }
    assert!(mounts_under(&c.root).is_empty());
}
