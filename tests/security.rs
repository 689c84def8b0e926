//! The node trusts nothing it is handed (issue 19): hostile or confused paths, ids and
//! contexts, driven through the real gRPC API against real servers. kelp runs in a
//! private mount namespace (`unshare --mount --propagation private`), so even a
//! regression can mount or unmount nothing on the host; the checks read that
//! namespace's mount table through /proc/<pid>/mountinfo. Decoy directories stand in
//! for `/etc`.

mod common;

use common::csi::{self, volume_capability::access_mode::Mode, Clients};
use common::*;
use std::collections::HashMap;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

const GIB: i64 = 1 << 30;

/// kelp in its own mount namespace, with the orchestrator's paths allowed only below
/// `<root>/co`.
struct Isolated {
    kelp: Kelp,
    endpoint: String,
    root: PathBuf,
    redis: Redis,
}

impl Isolated {
    fn start(name: &str) -> Isolated {
        let redis = Redis::start(Some(META_PASSWORD));
        let root = scratch(name);
        std::fs::create_dir_all(root.join("co")).unwrap();
        std::fs::create_dir_all(root.join("decoy")).unwrap();
        std::fs::write(root.join("decoy/marker"), b"untouched").unwrap();
        let kelp = KelpBuilder::new()
            .redis(&redis)
            .weed(shared_weed())
            .wrapped_in("unshare", &["--mount", "--propagation", "private", "--"])
            .arg(format!("--allowed-roots={}", root.join("co").display()))
            .args(["--node-id=security-node", "--repair-interval=1"])
            .start();
        Isolated { endpoint: kelp.endpoint.clone(), kelp, root, redis }
    }

    fn co(&self, rel: &str) -> String {
        self.root.join("co").join(rel).display().to_string()
    }

    /// Mount points in kelp's namespace at or below `path`.
    fn mounts_under(&self, path: &Path) -> Vec<String> {
        let text = std::fs::read_to_string(format!("/proc/{}/mountinfo", self.kelp.pid())).unwrap();
        kelp::node::mount::parse_mountinfo(&text)
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|m| m.starts_with(path))
            .map(|m| m.display().to_string())
            .collect()
    }

    /// Runs a shell command inside kelp's mount namespace.
    fn in_ns(&self, script: &str) {
        run(Command::new("nsenter")
            .arg("-t")
            .arg(self.kelp.pid().to_string())
            .args(["-m", "sh", "-c", script]));
    }

    fn log_text(&self) -> String {
        self.kelp.log_text()
    }

    fn decoy_untouched(&self) {
        assert_eq!(std::fs::read(self.root.join("decoy/marker")).unwrap(), b"untouched");
        assert!(self.mounts_under(&self.root.join("decoy")).is_empty(), "nothing mounted on the decoy");
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        // Its mounts go with the namespace; its juicefs daemons are ended by pid.
        self.kelp.kill();
        kill_pids(&juicefs_pids_with(&format!("{}/logs/", self.kelp.state_dir.display())));
    }
}

fn stage_req(
    id: &str,
    staging: &str,
    ctx: HashMap<String, String>,
    publish: HashMap<String, String>,
) -> csi::NodeStageVolumeRequest {
    csi::NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.into(),
        volume_capability: Some(csi::mount_cap(Mode::SingleNodeWriter)),
        volume_context: ctx,
        publish_context: publish,
        ..Default::default()
    }
}

async fn publish(c: &mut Clients, id: &str, staging: &str, target: &str) -> Result<(), tonic::Status> {
    c.publish(id, staging, target, Mode::SingleNodeWriter, false).await
}

/// ControllerUnpublishVolume of `id` from this test's node (its release).
async fn controller_unpublish_here(c: &Clients, id: &str) {
    let req = csi::ControllerUnpublishVolumeRequest {
        volume_id: id.into(),
        node_id: "security-node".into(),
        ..Default::default()
    };
    c.ctl.clone().controller_unpublish_volume(req).await.unwrap();
}

/// ControllerPublishVolume of `id` to this test's node as a single-node writer, once
/// the node has announced itself: the publish context a CO would hand the node.
async fn controller_publish_here(c: &Clients, id: &str) -> HashMap<String, String> {
    poll_until_async(Duration::from_secs(20), Duration::from_millis(200), || {
        let mut c = c.clone();
        let id = id.to_string();
        async move {
            c.ctl
                .controller_publish_volume(csi::ControllerPublishVolumeRequest {
                    volume_id: id,
                    node_id: "security-node".into(),
                    volume_capability: Some(csi::mount_cap(Mode::SingleNodeWriter)),
                    ..Default::default()
                })
                .await
                .ok()
                .map(|r| r.into_inner().publish_context)
        }
    })
    .await
    .expect("node announced")
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_paths_ids_and_contexts_change_nothing() {
    let k = Isolated::start("security");
    let mut c = csi::connect(&k.endpoint).await;
    let vol = c.create("security-vol", GIB).await.unwrap();
    let id = vol.volume_id.clone();
    let staging = k.co("staged/vol");

    // Paths outside the allowed roots, with `..`, through a symlink, or with a newline.
    std::os::unix::fs::symlink(k.root.join("decoy"), k.root.join("co/evil")).unwrap();
    let decoy = k.root.join("decoy").display().to_string();
    let hostile_targets = [
        (decoy.clone(), "outside the roots"),
        (k.co("../decoy"), "dot-dot"),
        (k.co("pods/../../decoy"), "dot-dot below a root"),
        (k.co("evil"), "symlink as the target"),
        (k.co("evil/inner"), "symlink on the way"),
        (k.co("pub/line\nkelp: forged log line"), "newline"),
    ];
    for (staging, why) in [(k.co("evil"), "symlink staging"), (k.co("../decoy/st"), "dot-dot staging")] {
        let e = c
            .node
            .node_stage_volume(stage_req(&id, &staging, HashMap::new(), HashMap::new()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{why}: {e:?}");
    }
    for (target, why) in &hostile_targets {
        let e = publish(&mut c, &id, &staging, target).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{why}: {e:?}");
    }
    k.decoy_untouched();
    assert!(!k.root.join("decoy/inner").exists(), "nothing created through the link");
    assert!(
        !k.log_text().lines().any(|l| l.starts_with("kelp: forged log line")),
        "a path cannot forge a log line"
    );

    // A context naming a master kelp was not configured for: refused before any connection.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    listener.set_nonblocking(true).unwrap();
    let seen = connections.clone();
    let spy = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(4);
        while std::time::Instant::now() < deadline {
            if let Ok((mut s, _)) = listener.accept() {
                seen.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let evil_meta = HashMap::from([("kelp/meta".to_string(), format!("redis://127.0.0.1:{port}"))]);
    let e = c.node.node_stage_volume(stage_req(&id, &staging, HashMap::new(), evil_meta)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    spy.join().unwrap();
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "kelp connected to an address it was not configured for"
    );

    // A cache directory outside the node's own cache root.
    let ctx = HashMap::from([("cache-dir".to_string(), decoy.clone())]);
    let e = c.node.node_stage_volume(stage_req(&id, &staging, ctx, HashMap::new())).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // A database the server does not have: NotFound, not a retry forever.
    let e = c
        .node
        .node_stage_volume(stage_req(
            "kelp1:4000:0a1b2c3d:no-such-db",
            &k.co("staged/nosuch"),
            HashMap::new(),
            HashMap::new(),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // Unpublish and unstage touch only what kelp mounted: a tmpfs with a file in it,
    // at a path kelp never published, stays, for a real and for a made-up volume id.
    let foreign = k.root.join("co/foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    k.in_ns(&format!("mount -t tmpfs kelp-test-tmpfs {0} && echo keep > {0}/file", foreign.display()));
    let f = foreign.display().to_string();
    for vid in [id.as_str(), "kelp1:9:0a1b2c3d:made-up"] {
        c.unpublish(vid, &f).await.unwrap();
        c.unstage(vid, &f).await.unwrap();
    }
    assert_eq!(k.mounts_under(&foreign), vec![f.clone()], "the foreign tmpfs is still mounted");
    k.in_ns(&format!("test \"$(cat {f}/file)\" = keep"));

    // The real thing still works, and DeleteVolume refuses while it is mounted.
    let target = k.co("pub/t1");
    c.stage(&id, &staging, Mode::SingleNodeWriter).await.unwrap();
    publish(&mut c, &id, &staging, &target).await.unwrap();
    // Publishing onto a path that already holds a mount never stacks another one.
    let e = publish(&mut c, &id, &staging, &f).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(k.mounts_under(&foreign).len(), 1);
    let e = c.delete(&id).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "delete of a mounted volume: {e:?}");
    assert!(e.message().contains(&format!("{staging:?}")), "the refusal names where it is mounted: {e:?}");

    // With nothing mounted on it, a target refuses writes: kelp sealed the directory
    // (immutable) before mounting on it, so nothing can land on the node's disk.
    k.in_ns(&format!("umount {target} && ! sh -c 'echo stray > {target}/stray.txt' 2>/dev/null"));
    assert!(!Path::new(&target).join("stray.txt").exists());
    // On a file system without that flag (unsealed here by hand), files that land
    // there are moved aside on release, never deleted, and the target is still freed.
    run(Command::new("chattr").arg("-i").arg(&target));
    k.in_ns(&format!("echo stray > {target}/stray.txt"));
    c.unpublish(&id, &target).await.unwrap();
    assert!(!Path::new(&target).exists(), "the target path is free again");
    let aside: Vec<_> = std::fs::read_dir(k.root.join("co/pub"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("t1.kelp-lost-"))
        .collect();
    assert_eq!(aside.len(), 1, "moved aside once");
    assert_eq!(std::fs::read(aside[0].path().join("stray.txt")).unwrap(), b"stray\n");

    c.unstage(&id, &staging).await.unwrap();
    assert!(!Path::new(&staging).exists(), "kelp removes the staging directory it created");
    c.delete(&id).await.unwrap();
    let mut left = k.mounts_under(&k.root);
    left.retain(|m| m != &f);
    assert!(left.is_empty(), "mounts left in kelp's namespace: {left:?}");
    k.decoy_untouched();
    k.in_ns(&format!("umount {f}"));
}

/// A freed database is reused only when empty: one a client of a deleted volume
/// still writes to is quarantined, stale leftovers are flushed, and a quarantined
/// database returns once its client is gone.
#[tokio::test(flavor = "multi_thread")]
async fn freed_databases_are_reused_only_when_empty() {
    let k = Isolated::start("security-reuse");
    let mut c = csi::connect(&k.endpoint).await;
    let a = c.create("reuse-a", GIB).await.unwrap();
    let db = db_of(&a.volume_id);
    c.delete(&a.volume_id).await.unwrap();
    assert_eq!(k.redis.cli(db, &["dbsize"]), "0");

    // A straggling client with a live session writes into the freed database.
    let live = (kelp::unix_now() + 60).to_string();
    k.redis.cli(db, &["zadd", "allSessions", &live, "7"]);
    let b = c.create("reuse-b", GIB).await.unwrap();
    assert_ne!(db_of(&b.volume_id), db, "a database with a live client is not reused");
    assert_eq!(k.redis.cli(0, &["smembers", "kelp:quarantine"]), db.to_string());

    // Once the client's session has expired, the next creation frees and reuses it.
    let gone = (kelp::unix_now() - 1).to_string();
    k.redis.cli(db, &["zadd", "allSessions", &gone, "7"]);
    let d = c.create("reuse-d", GIB).await.unwrap();
    assert_eq!(db_of(&d.volume_id), db, "the quarantined database came back");
    assert_eq!(k.redis.cli(0, &["scard", "kelp:quarantine"]), "0");
    assert_eq!(k.redis.cli(db, &["exists", "allSessions"]), "0", "flushed before reuse");
    assert_eq!(k.redis.cli(db, &["exists", "setting"]), "1", "and formatted for the new volume");
    for v in [&b, &d] {
        c.delete(&v.volume_id).await.unwrap();
    }
}

/// After DeleteVolume the freed database stays empty for two minutes while another
/// volume is mounted and written on the same node, and the deleted volume's node
/// left its release fence before the delete, not after.
#[tokio::test(flavor = "multi_thread")]
async fn a_freed_database_stays_empty() {
    let k = Isolated::start("security-freed");
    let mut c = csi::connect(&k.endpoint).await;
    let a = c.create("freed-a", GIB).await.unwrap();
    let b = c.create("freed-b", GIB).await.unwrap();
    // Wait for the node to announce itself, then publish A as a fenced single writer.
    let ctx = controller_publish_here(&c, &a.volume_id).await;
    let (sa, ta) = (k.co("staged/a"), k.co("pub/a"));
    c.node.node_stage_volume(stage_req(&a.volume_id, &sa, HashMap::new(), ctx.clone())).await.unwrap();
    c.node
        .node_publish_volume(csi::NodePublishVolumeRequest {
            volume_id: a.volume_id.clone(),
            staging_target_path: sa.clone(),
            target_path: ta.clone(),
            volume_capability: Some(csi::mount_cap(Mode::SingleNodeWriter)),
            publish_context: ctx,
            ..Default::default()
        })
        .await
        .unwrap();
    k.in_ns(&format!("echo a > {ta}/a.txt && sync"));
    c.unpublish(&a.volume_id, &ta).await.unwrap();
    c.unstage(&a.volume_id, &sa).await.unwrap();
    controller_unpublish_here(&c, &a.volume_id).await;
    c.delete(&a.volume_id).await.unwrap();
    let freed = db_of(&a.volume_id);

    let (sb, tb) = (k.co("staged/b"), k.co("pub/b"));
    c.stage(&b.volume_id, &sb, Mode::SingleNodeWriter).await.unwrap();
    publish(&mut c, &b.volume_id, &sb, &tb).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut i = 0;
    while std::time::Instant::now() < deadline {
        k.in_ns(&format!("echo {i} > {tb}/f{i} && sync"));
        assert_eq!(k.redis.cli(freed, &["dbsize"]), "0", "the freed database got keys after {i} s");
        i += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    c.unpublish(&b.volume_id, &tb).await.unwrap();
    c.unstage(&b.volume_id, &sb).await.unwrap();
    c.delete(&b.volume_id).await.unwrap();
    assert!(k.mounts_under(&k.root).is_empty());
}

/// The publish context's metadata generation (`kelp/db`, `kelp/seed`) is checked
/// against the registry before anything is touched: a forged one once emptied another
/// volume's database. Paths kelp could never let go of, ids naming databases no server
/// has, and URLs carrying a password are refused too; no error or log line repeats the
/// password, and neither volume's database changes.
#[tokio::test(flavor = "multi_thread")]
async fn forged_generations_long_paths_and_secret_urls_change_nothing() {
    let k = Isolated::start("security-generations");
    let mut c = csi::connect(&k.endpoint).await;
    let a = c.create("forged-a", GIB).await.unwrap();
    let b = c.create("forged-b", GIB).await.unwrap();
    let (da, db) = (db_of(&a.volume_id), db_of(&b.volume_id));
    // B holds files; A is held by this node through the controller, as Swarm does it.
    let (sb, tb) = (k.co("staged/b"), k.co("pub/b"));
    c.stage(&b.volume_id, &sb, Mode::SingleNodeWriter).await.unwrap();
    publish(&mut c, &b.volume_id, &sb, &tb).await.unwrap();
    k.in_ns(&format!("echo b > {tb}/b.txt && sync"));
    c.unpublish(&b.volume_id, &tb).await.unwrap();
    c.unstage(&b.volume_id, &sb).await.unwrap();
    let ctx = controller_publish_here(&c, &a.volume_id).await;
    let epoch = ctx["kelp/epoch"].clone();
    let unallocated: u32 = 1000;
    let digest = |d: u32| k.redis.cli(0, &["eval", CONTENT_DIGEST_LUA, "0", &d.to_string()]);
    let before = [digest(da), digest(db), digest(unallocated)];
    let unchanged = |why: &str| {
        assert_eq!([digest(da), digest(db), digest(unallocated)], before, "{why}: a database changed");
        assert!(k.mounts_under(&k.root.join("co")).is_empty(), "{why}: something was mounted");
    };

    let staging = k.co("staged/a");
    let forged = |pairs: &[(&str, String)]| {
        let mut m = ctx.clone();
        m.extend(pairs.iter().map(|(key, v)| (key.to_string(), v.clone())));
        m
    };
    let cases = [
        ("seed from A into B", forged(&[("kelp/seed", da.to_string()), ("kelp/db", db.to_string())])),
        ("seed A from B", forged(&[("kelp/seed", db.to_string())])),
        ("a database never allocated", forged(&[("kelp/db", unallocated.to_string())])),
        (
            "a database never allocated, seeded from A",
            forged(&[("kelp/db", unallocated.to_string()), ("kelp/seed", da.to_string())]),
        ),
        (
            "another epoch's seed",
            forged(&[("kelp/seed", db.to_string()), ("kelp/epoch", format!("{epoch}9"))]),
        ),
    ];
    for (why, publish_context) in cases {
        let e = c
            .node
            .node_stage_volume(stage_req(&a.volume_id, &staging, HashMap::new(), publish_context))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{why}: {e:?}");
        unchanged(why);
    }
    assert_eq!(k.redis.cli(db, &["exists", "kelp:seeded-from"]), "0");
    // Below the registry check, the seed itself never empties another file system.
    let meta = kelp::meta::MetaServer::new(
        kelp::meta::MetaUrl::parse(&k.redis.url()).unwrap().with_password(k.redis.password.as_deref()),
    );
    let e = meta.seed_generation(da, db).await.unwrap_err();
    assert!(matches!(e, kelp::meta::Error::WouldOverwrite { .. }), "{e:?}");
    unchanged("a seed into another volume's database");

    // Paths kelp could mount but never unmount: refused before anything is made.
    let long_component = k.co(&format!("staged/{}", "x".repeat(300)));
    let mut long_path = k.co("staged");
    while long_path.len() < 4269 {
        long_path.push_str("/0123456789");
    }
    for (why, path) in [("a 300-byte component", &long_component), ("a 4269-byte path", &long_path)] {
        let e = c
            .node
            .node_stage_volume(stage_req(&a.volume_id, path, HashMap::new(), ctx.clone()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{why}: {e:?}");
        let e = publish(&mut c, &a.volume_id, &staging, path).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{why} as a target: {e:?}");
        unchanged(why);
    }
    assert!(!Path::new(&long_component).exists() && !k.root.join("co/staged/0123456789").exists());

    // A database number beyond what any server has: NotFound, which a CO does not
    // retry, rather than Unavailable, which it retries forever.
    for bad in ["kelp1:4000000000:0a1b2c3d:no-such-db", "kelp1:2147483648:0a1b2c3d:no-such-db:feedbeef"] {
        let e = c
            .node
            .node_stage_volume(stage_req(bad, &k.co("staged/overflow"), HashMap::new(), HashMap::new()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{bad}: {e:?}");
    }

    // A master URL with a password: refused, and the password is never repeated.
    let secret = "hunter2-in-a-forged-url";
    for url in [format!("redis://:{secret}@127.0.0.1:1"), format!("redis://user:{secret}@127.0.0.1:notaport")]
    {
        let e = c
            .node
            .node_stage_volume(stage_req(
                &a.volume_id,
                &staging,
                HashMap::new(),
                forged(&[("kelp/meta", url)]),
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(!e.message().contains(secret), "the error repeats the password: {e:?}");
    }
    assert!(!k.log_text().contains(secret), "the log repeats the password");
    unchanged("forged URLs");

    // The context the controller gave stages A as it should.
    c.node.node_stage_volume(stage_req(&a.volume_id, &staging, HashMap::new(), ctx.clone())).await.unwrap();
    c.unstage(&a.volume_id, &staging).await.unwrap();
    controller_unpublish_here(&c, &a.volume_id).await;
    assert_eq!(digest(db), before[1], "B is as it was");
    for v in [&a, &b] {
        c.delete(&v.volume_id).await.unwrap();
    }
    assert!(k.mounts_under(&k.root).is_empty());
}
