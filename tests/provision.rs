//! Provisioning on real servers: CreateVolume writes a file system an unmodified
//! `juicefs mount` uses; DeleteVolume removes bucket and database; bad input changes
//! nothing; a controller killed at every step leaves what a retry finishes.

mod common;

use common::csi;
use common::*;
use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;
use tonic::Code;

const GIB: i64 = 1 << 30;

fn controller(redis: &Redis, weed: &Weed) -> Kelp {
    KelpBuilder::new().redis(redis).weed(weed).start()
}

#[tokio::test(flavor = "multi_thread")]
async fn create_mount_write_df_delete() {
    let (redis, weed) = (shared_redis(), shared_weed());
    let kelp = controller(redis, weed);
    let mut c = csi::connect(&kelp.endpoint).await;

    let vol = c.create("Media Library", 2 * GIB).await.unwrap();
    assert_eq!(vol.capacity_bytes, 2 * GIB);
    let db = db_of(&vol.volume_id);
    let fs = vol.volume_context["fsName"].clone();
    assert!(weed.buckets().contains(&format!("kelp-{fs}")));
    assert_eq!(redis.cli(db, &["exists", "setting"]), "1");
    assert_eq!(redis.cli(db, &["exists", "i1"]), "1");
    assert_fsck_clean(&redis.url(), redis.password.as_deref(), db);

    // Same name and size: the same volume. Same name, other size: AlreadyExists.
    assert_eq!(c.create("Media Library", 2 * GIB).await.unwrap().volume_id, vol.volume_id);
    assert_eq!(c.create("Media Library", 4 * GIB).await.unwrap_err().code(), Code::AlreadyExists);

    // The volume is its own directory of the file system (tree layout), made natively
    // beside nothing else, with fresh inode numbers (never the root's).
    let root = scratch("mnt").join("root");
    juicefs_mount(redis, db, &root);
    let member = vol.volume_id.rsplit(':').next().unwrap();
    let tree = root.join(".kelp/v").join(member);
    {
        use std::os::unix::fs::MetadataExt;
        let inos: Vec<u64> = [&root, &root.join(".kelp"), &root.join(".kelp/v"), &tree]
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().ino())
            .collect();
        assert_eq!(inos[0], 1);
        assert!(inos[1..].iter().all(|&i| i > 1) && inos[1] != inos[2] && inos[2] != inos[3], "{inos:?}");
    }
    assert!(std::fs::read_dir(&tree).unwrap().next().is_none(), "a new volume is empty");

    // An unmodified juicefs mounts it as a node does, writes, reads, and df shows the
    // capacity; the file lands in the volume's directory.
    let mnt = scratch("mnt").join("m");
    juicefs_mount_volume(redis, &vol.volume_id, &mnt);
    std::fs::write(mnt.join("hello.txt"), b"kelp was here").unwrap();
    assert_eq!(std::fs::read(mnt.join("hello.txt")).unwrap(), b"kelp was here");
    let df = run(Command::new("df").arg("-B1").arg("--output=size").arg(&mnt));
    let size: i64 = df.lines().nth(1).unwrap().trim().parse().unwrap();
    assert_eq!(size, 2 * GIB, "df size");
    umount(&mnt);
    assert!(mounts_under(&mnt).is_empty());
    assert_eq!(std::fs::read(tree.join("hello.txt")).unwrap(), b"kelp was here");
    umount(&root);
    assert_fsck_clean(&redis.url(), redis.password.as_deref(), db);
    // The bucket carries the capacity as its SeaweedFS quota.
    let listing = run(Command::new("curl")
        .args(["-s", "-H", "Accept: application/json"])
        .arg(format!("http://127.0.0.1:{}/buckets/?limit=10000", weed.filer_port)));
    let v: serde_json::Value = serde_json::from_str(&listing).unwrap();
    let entry = v["Entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["FullPath"] == format!("/buckets/kelp-{fs}"))
        .unwrap();
    assert_eq!(entry["Quota"], 2 * GIB);

    c.delete(&vol.volume_id).await.unwrap();
    assert!(!weed.buckets().contains(&format!("kelp-{fs}")));
    assert_eq!(redis.cli(db, &["dbsize"]), "0");
    // Deleting again, or an id kelp never issued, succeeds.
    c.delete(&vol.volume_id).await.unwrap();
    c.delete("no-such-volume").await.unwrap();

    // Created again under the same name it may reuse the database, never the id; the
    // stale id neither finds nor deletes the new volume.
    let again = c.create("Media Library", 2 * GIB).await.unwrap();
    assert_ne!(again.volume_id, vol.volume_id);
    c.delete(&vol.volume_id).await.unwrap();
    let validate = |id: &str| csi::ValidateVolumeCapabilitiesRequest {
        volume_id: id.into(),
        volume_capabilities: vec![csi::mount_cap(
            csi::volume_capability::access_mode::Mode::SingleNodeWriter,
        )],
        ..Default::default()
    };
    c.ctl
        .validate_volume_capabilities(validate(&again.volume_id))
        .await
        .expect("new volume survives the stale delete");
    assert_eq!(
        c.ctl.validate_volume_capabilities(validate(&vol.volume_id)).await.unwrap_err().code(),
        Code::NotFound
    );
    c.delete(&again.volume_id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn format_is_what_juicefs_format_writes() {
    let (redis, weed) = (shared_redis(), shared_weed());
    let kelp = controller(redis, weed);
    let mut c = csi::connect(&kelp.endpoint).await;
    let mut req = csi::create_req("fmt-check", GIB);
    req.parameters = HashMap::from([
        ("block-size".into(), "1M".into()),
        ("compression".into(), "lz4".into()),
        ("inodes".into(), "1000".into()),
        ("trash-days".into(), "1".into()),
        // The tree layout adds the volume's directory to what format writes (below).
        ("layout".into(), "root".into()),
    ]);
    let vol = c.ctl.create_volume(req).await.unwrap().into_inner().volume.unwrap();
    let db = db_of(&vol.volume_id);

    // The same file system made by hand with the real juicefs, in a spare database.
    let spare = 250;
    redis.cli(spare, &["flushdb"]);
    let mut fmt = Command::new("juicefs");
    fmt.args([
        "format",
        "--no-update",
        "--storage=s3",
        "--block-size=1024",
        "--compress=lz4",
        "--inodes=1000",
        "--capacity=1",
    ])
    .arg(format!("--bucket={}/kelp-byhand-fmt", weed.s3_endpoint()))
    .arg(format!("--access-key={S3_ACCESS_KEY}"))
    .arg(format!("--secret-key={S3_SECRET_KEY}"))
    .arg(format!("redis://127.0.0.1:{}/{spare}", redis.port))
    .arg("fmt-check")
    .env("META_PASSWORD", META_PASSWORD);
    run(&mut fmt);

    let keys = |db| {
        let mut k: Vec<String> = redis.cli(db, &["keys", "*"]).lines().map(String::from).collect();
        k.sort();
        k
    };
    assert_eq!(keys(db), keys(spare));
    let ours: serde_json::Value = serde_json::from_str(&redis.cli(db, &["get", "setting"])).unwrap();
    let theirs: serde_json::Value = serde_json::from_str(&redis.cli(spare, &["get", "setting"])).unwrap();
    let field_names = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(field_names(&ours), field_names(&theirs), "same fields in the same order");
    for (k, v) in theirs.as_object().unwrap() {
        if !["UUID", "SecretKey", "Bucket"].contains(&k.as_str()) {
            assert_eq!(&ours[k], v, "field {k}");
        }
    }
    // Root and trash inode records differ only in their timestamps.
    for key in ["i1", "i9223372032828243968"] {
        let length = |db: u32| redis.cli(db, &["--no-raw", "strlen", key]);
        assert_eq!(length(db), length(spare), "{key} length");
    }
    // The marker object is where juicefs puts it.
    let fs = &vol.volume_context["fsName"];
    assert_eq!(weed.list(&format!("/buckets/kelp-{fs}/{fs}")), vec!["juicefs_uuid".to_string()]);
    redis.cli(spare, &["flushdb"]);
    c.delete(&vol.volume_id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_the_right_code_and_creates_nothing() {
    let (redis, weed) = (shared_redis(), shared_weed());
    let kelp = controller(redis, weed);
    let mut c = csi::connect(&kelp.endpoint).await;

    let base = || csi::create_req("bad-input-case", GIB);
    let with_params = |kv: &[(&str, &str)]| {
        let mut r = base();
        r.parameters = kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        r
    };
    let mut cases: Vec<(&str, csi::CreateVolumeRequest, Code)> = vec![
        ("missing name", csi::CreateVolumeRequest { name: String::new(), ..base() }, Code::InvalidArgument),
        (
            "no capabilities",
            csi::CreateVolumeRequest { volume_capabilities: vec![], ..base() },
            Code::InvalidArgument,
        ),
        (
            "block access",
            csi::CreateVolumeRequest { volume_capabilities: vec![csi::block_cap()], ..base() },
            Code::InvalidArgument,
        ),
        (
            "control chars in name",
            csi::CreateVolumeRequest { name: "a\u{7}b".into(), ..base() },
            Code::InvalidArgument,
        ),
        ("huge name", csi::CreateVolumeRequest { name: "n".repeat(5000), ..base() }, Code::InvalidArgument),
        ("unknown key", with_params(&[("colour", "blue")]), Code::InvalidArgument),
        ("huge value", with_params(&[("compression", &"z".repeat(10_000))]), Code::InvalidArgument),
        ("bad block size", with_params(&[("block-size", "3G")]), Code::InvalidArgument),
        ("bad replication", with_params(&[("replication", "9x")]), Code::InvalidArgument),
        ("takeover sooner than two leases", with_params(&[("takeover-after", "3")]), Code::InvalidArgument),
        (
            "takeover without a trash",
            with_params(&[("takeover-after", "30"), ("trash-days", "0")]),
            Code::InvalidArgument,
        ),
        // Removed: it corrupts data on multi-master KeyDB (docs/pinning.md).
        ("shared-writers=local", with_params(&[("shared-writers", "local")]), Code::InvalidArgument),
        // SeaweedFS rejects a fourth data centre only at the first upload.
        ("replication SeaweedFS refuses", with_params(&[("replication", "999")]), Code::InvalidArgument),
        // One volume server cannot hold a copy on another rack: every write would hang.
        (
            "replication the cluster cannot place",
            with_params(&[("replication", "010")]),
            Code::ResourceExhausted,
        ),
        (
            "smaller than one block",
            csi::CreateVolumeRequest {
                capacity_range: Some(csi::CapacityRange { required_bytes: 1, limit_bytes: 0 }),
                ..base()
            },
            Code::OutOfRange,
        ),
        (
            "limit below required",
            csi::CreateVolumeRequest {
                capacity_range: Some(csi::CapacityRange { required_bytes: 2 * GIB, limit_bytes: GIB }),
                ..base()
            },
            Code::OutOfRange,
        ),
    ];
    let mut only_access_key = base();
    only_access_key.secrets = HashMap::from([("access-key".to_string(), "x".to_string())]);
    cases.push(("half the S3 secrets", only_access_key, Code::InvalidArgument));
    let many: HashMap<String, String> = (0..100).map(|i| (format!("k{i}"), "v".into())).collect();
    cases.push((
        "too many params",
        csi::CreateVolumeRequest { parameters: many, ..base() },
        Code::InvalidArgument,
    ));

    // Other tests share the servers, so look for traces of these names only.
    let fs_names: Vec<String> = cases.iter().map(|(_, r, _)| kelp::volume::fs_name_for(&r.name)).collect();
    for (what, req, code) in cases {
        let err = c.ctl.create_volume(req).await.expect_err(what);
        assert_eq!(err.code(), code, "{what}: {}", err.message());
        assert!(!err.message().is_empty(), "{what} has a message");
    }
    let e = c.ctl.create_volume(with_params(&[("colour", "blue")])).await.unwrap_err();
    assert!(e.message().contains("colour"), "names the key: {}", e.message());

    let buckets = weed.buckets();
    for fs in fs_names {
        assert!(!buckets.contains(&format!("kelp-{fs}")), "no bucket for {fs}");
        assert_eq!(redis.cli(0, &["exists", &format!("kelp:vol:{fs}")]), "0", "no registry entry for {fs}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn list_validate_capacity_publish_and_expand() {
    let (redis, weed) = (shared_redis(), shared_weed());
    let kelp = controller(redis, weed);
    let mut c = csi::connect(&kelp.endpoint).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(c.create(&format!("list-{i}"), GIB).await.unwrap().volume_id);
    }
    // Paging by two finds every volume exactly once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let r = c
            .ctl
            .list_volumes(csi::ListVolumesRequest { max_entries: 2, starting_token: token })
            .await
            .unwrap()
            .into_inner();
        assert!(r.entries.len() <= 2);
        seen.extend(r.entries.into_iter().map(|e| e.volume.unwrap().volume_id));
        if r.next_token.is_empty() {
            break;
        }
        token = r.next_token;
    }
    for id in &ids {
        assert_eq!(seen.iter().filter(|s| *s == id).count(), 1, "{id} listed once");
    }
    let bad =
        c.ctl.list_volumes(csi::ListVolumesRequest { max_entries: 2, starting_token: "bogus".into() }).await;
    assert_eq!(bad.unwrap_err().code(), Code::Aborted);

    let cap = csi::mount_cap(csi::volume_capability::access_mode::Mode::SingleNodeWriter);
    let v = c
        .ctl
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: ids[0].clone(),
            volume_capabilities: vec![cap.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(v.confirmed.is_some());
    let v = c
        .ctl
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: ids[0].clone(),
            volume_capabilities: vec![csi::block_cap()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(v.confirmed.is_none() && !v.message.is_empty());
    let nf = c
        .ctl
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: "kelp1:200:00000000:nope".into(),
            volume_capabilities: vec![cap.clone()],
            ..Default::default()
        })
        .await;
    assert_eq!(nf.unwrap_err().code(), Code::NotFound);

    let capacity = c.ctl.get_capacity(csi::GetCapacityRequest::default()).await.unwrap().into_inner();
    assert!(capacity.available_capacity > 0);

    // Publish validates the node and the volume.
    let publish = |vol: &str, node: &str| csi::ControllerPublishVolumeRequest {
        volume_id: vol.into(),
        node_id: node.into(),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    };
    c.ctl.controller_publish_volume(publish(&ids[0], "test-node")).await.unwrap();
    let e = c.ctl.controller_publish_volume(publish(&ids[0], "no-such-node")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e =
        c.ctl.controller_publish_volume(publish("kelp1:201:00000000:ghost", "test-node")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Expansion raises the volume directory's quota; a mounted client sees it without
    // remounting.
    let mnt = scratch("mnt").join("x");
    juicefs_mount_volume(redis, &ids[1], &mnt);
    let r = c
        .ctl
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: ids[1].clone(),
            capacity_range: Some(csi::CapacityRange { required_bytes: 3 * GIB, limit_bytes: 0 }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.capacity_bytes, 3 * GIB);
    let mut seen_size = 0;
    poll_until_async(Duration::from_secs(20), Duration::from_millis(500), || {
        let df = run(Command::new("df").arg("-B1").arg("--output=size").arg(&mnt));
        seen_size = df.lines().nth(1).unwrap().trim().parse::<i64>().unwrap();
        std::future::ready((seen_size == 3 * GIB).then_some(()))
    })
    .await;
    assert_eq!(seen_size, 3 * GIB, "mounted client sees the new capacity");
    umount(&mnt);
    for id in ids {
        c.delete(&id).await.unwrap();
    }
}

/// Creation and deletion killed at each step: the retry finishes, nothing leaks.
#[tokio::test(flavor = "multi_thread")]
async fn crash_at_every_step_is_finished_by_the_retry() {
    let (redis, weed) = (shared_redis(), shared_weed());
    let mut kelp = controller(redis, weed);
    for (i, point) in
        ["create:reserved", "create:bucket", "create:formatted", "create:tree"].iter().enumerate()
    {
        let name = format!("crash-create-{i}");
        kelp.restart_with_env(&[("KELP_FAILPOINT", point)]);
        let mut c = csi::connect(&kelp.endpoint).await;
        assert!(c.create(&name, GIB).await.is_err(), "{point}: the process dies mid-call");
        assert!(kelp.wait_exit(Duration::from_secs(5)), "{point}: aborted");
        kelp.restart();
        let mut c = csi::connect(&kelp.endpoint).await;
        let vol = c.create(&name, GIB).await.unwrap_or_else(|e| panic!("{point}: retry: {e}"));
        let mnt = scratch("mnt").join("c");
        juicefs_mount_volume(redis, &vol.volume_id, &mnt);
        std::fs::write(mnt.join("f"), b"ok").unwrap();
        umount(&mnt);
        c.delete(&vol.volume_id).await.unwrap();
    }
    for (i, point) in ["delete:marked", "delete:bucket", "delete:flushed"].iter().enumerate() {
        kelp.restart();
        let mut c = csi::connect(&kelp.endpoint).await;
        let vol = c.create(&format!("crash-delete-{i}"), GIB).await.unwrap();
        let db = db_of(&vol.volume_id);
        let bucket = format!("kelp-{}", vol.volume_context["fsName"]);
        kelp.restart_with_env(&[("KELP_FAILPOINT", point)]);
        let mut c = csi::connect(&kelp.endpoint).await;
        assert!(c.delete(&vol.volume_id).await.is_err(), "{point}: dies mid-call");
        assert!(kelp.wait_exit(Duration::from_secs(5)));
        kelp.restart();
        let mut c = csi::connect(&kelp.endpoint).await;
        c.delete(&vol.volume_id).await.unwrap();
        assert!(!weed.buckets().contains(&bucket), "{point}: bucket gone");
        assert_eq!(redis.cli(db, &["dbsize"]), "0", "{point}: database empty");
        assert_eq!(
            redis.cli(0, &["sismember", "kelp:dbs", &db.to_string()]),
            "0",
            "{point}: database released"
        );
    }
}

/// No S3 key or metadata password in logs, errors or volume context.
#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_leak() {
    let (redis, weed) = (shared_redis(), shared_weed());
    let kelp = controller(redis, weed);
    let mut c = csi::connect(&kelp.endpoint).await;
    let mut req = csi::create_req("secret-holder", GIB);
    req.secrets = HashMap::from([
        ("access-key".to_string(), S3_ACCESS_KEY.to_string()),
        ("secret-key".to_string(), S3_SECRET_KEY.to_string()),
    ]);
    let vol = c.ctl.create_volume(req).await.unwrap().into_inner().volume.unwrap();
    let ctx = format!("{:?}", vol.volume_context);
    assert!(!ctx.contains(S3_SECRET_KEY) && !ctx.contains(META_PASSWORD));
    // The stored secret is sealed as juicefs seals it.
    let setting = redis.cli(db_of(&vol.volume_id), &["get", "setting"]);
    assert!(!setting.contains(S3_SECRET_KEY), "secret stored in clear");
    assert!(setting.contains("\"KeyEncrypted\": true"));

    // A kelp given a password in its metadata URL, whose server is down, is not
    // ready (an answer, not an error, as the CSI spec has it) and says why in its log,
    // without the password; an RPC that needs the server fails saying so.
    let mut bare = KelpBuilder::new()
        .bare()
        .services("controller")
        .arg(format!("--meta-url=redis://:{META_PASSWORD}@127.0.0.1:{}", free_port()))
        .start();
    let mut dead = csi::connect(&bare.endpoint).await;
    let probe = dead.identity.probe(csi::ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(false));
    let err = dead.create("unreachable-meta", GIB).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("unreachable") && !err.message().contains(META_PASSWORD),
        "{}",
        err.message()
    );
    bare.kill();
    let dead_log = bare.log_text();
    assert!(dead_log.contains("Probe: not ready") && dead_log.contains("unreachable"), "{dead_log}");
    assert!(!dead_log.contains(META_PASSWORD), "password in log: {dead_log}");
    c.delete(&vol.volume_id).await.unwrap();
    let log = kelp.log_text();
    assert!(!log.contains(S3_SECRET_KEY), "S3 secret in log");
    assert!(!log.contains(META_PASSWORD), "metadata password in log");
    assert!(log.contains("outcome"), "RPCs are logged");
}

/// Writes past the size fail in both layouts: at the file system's capacity with
/// ENOSPC (root layout), at the volume directory's quota with EDQUOT (tree layout,
/// mounted as nodes do, with `--subdir`; `df` there shows the quota as the size and
/// juicefs's own `quota get` reads kelp's record).
#[tokio::test(flavor = "multi_thread")]
async fn writes_past_capacity_fail_in_both_layouts() {
    let (redis, weed) = (shared_redis(), shared_weed());
    let kelp = controller(redis, weed);
    let mut c = csi::connect(&kelp.endpoint).await;
    let base = scratch("small");
    let _leftovers = MountsBelow(base.clone());
    for (layout, errno) in [("root", libc::ENOSPC), ("tree", libc::EDQUOT)] {
        let mut req = csi::create_req(&format!("small-{layout}"), 32 << 20);
        req.parameters = HashMap::from([("layout".into(), layout.into())]);
        let vol = c.ctl.create_volume(req).await.unwrap().into_inner().volume.unwrap();
        let id = kelp::volume::VolumeId::parse(&vol.volume_id).unwrap();
        assert_eq!(id.member.is_some(), layout == "tree", "{}", vol.volume_id);
        let db = db_of(&vol.volume_id);
        let mnt = base.join(layout);
        juicefs_mount_volume(redis, &vol.volume_id, &mnt);
        let df = run(Command::new("df").arg("-B1").arg("--output=size").arg(&mnt));
        assert_eq!(df.lines().nth(1).unwrap().trim(), (32u64 << 20).to_string(), "{layout}: df size");
        if let Some(dir) = id.subdir() {
            let quota = Command::new("juicefs")
                .args(["quota", "get", &format!("redis://127.0.0.1:{}/{db}", redis.port), "--path", &dir])
                .env("META_PASSWORD", META_PASSWORD)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&quota.stdout);
            assert!(text.contains(&dir) && text.contains("32 MiB"), "juicefs quota get: {text}");
        }
        let chunk = vec![7u8; 1 << 20];
        let result = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(mnt.join("big"))?;
            for _ in 0..64 {
                f.write_all(&chunk)?;
            }
            f.sync_all()
        })();
        let err = result.expect_err("64 MiB fit in a 32 MiB volume");
        assert_eq!(err.raw_os_error(), Some(errno), "{layout}: {err}");
        umount(&mnt);
        c.delete(&vol.volume_id).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn probe_names_the_backend_that_is_down() {
    let redis = shared_redis();
    // A filer address where nothing listens.
    let bare = KelpBuilder::new()
        .bare()
        .services("controller")
        .args(["--databases=64".into(), format!("--meta-url={}", redis.url())])
        .arg(format!("--filer=127.0.0.1:{}", free_port()))
        .env("KELP_META_PASSWORD", META_PASSWORD)
        .start();
    let mut c = csi::connect(&bare.endpoint).await;
    let probe = c.identity.probe(csi::ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(false));
    let again = c.identity.probe(csi::ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(again.ready, Some(false));
    // The reason is logged once, not on every Probe.
    let log = bare.log_text();
    assert_eq!(log.matches("Probe: not ready").count(), 1, "{log}");
    assert!(log.contains("SeaweedFS filer"), "{log}");
}

/// `kelp admin orphans` finds buckets no registry entry owns (as `docker volume rm -f`
/// plus a hand-wiped registry leave them) and removes them only with `--delete`.
#[tokio::test(flavor = "multi_thread")]
async fn orphan_buckets_are_found_and_removed_on_request() {
    // Servers of its own: the sweep must not see other tests' buckets.
    let (redis, weed) = (Redis::start(Some(META_PASSWORD)), Weed::start());
    let kelp = controller(&redis, &weed);
    let mut c = csi::connect(&kelp.endpoint).await;
    let kept = c.create("orphan-kept", GIB).await.unwrap();
    let lost = c.create("orphan-lost", GIB).await.unwrap();
    redis.cli(0, &["del", "kelp:vol:orphan-lost"]);
    redis.cli(0, &["zrem", "kelp:volumes", "orphan-lost"]);
    let admin = |extra: &[&str]| {
        run(Command::new(kelp_bin())
            .args(["admin", "--meta-url", &redis.url(), "orphans", "--filer", &weed.filer_addr()])
            .args(extra)
            .env("KELP_META_PASSWORD", META_PASSWORD))
    };
    let listed = admin(&[]);
    assert!(listed.contains("kelp-orphan-lost: no registry entry"), "{listed}");
    assert!(!listed.contains("orphan-kept"), "{listed}");
    assert!(weed.buckets().contains(&"kelp-orphan-lost".to_string()), "a listing deletes nothing");
    assert!(admin(&["--delete"]).contains("kelp-orphan-lost: deleted"));
    assert_eq!(weed.buckets(), vec!["kelp-orphan-kept".to_string()]);
    assert!(admin(&[]).contains("no orphan buckets"));
    c.delete(&kept.volume_id).await.unwrap();
    let _ = lost;
}

/// SIGTERM ends the driver within its drain limit even while a client keeps its
/// connection open (a CO may never close one), and removes the socket.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_the_driver_despite_open_connections() {
    let (redis, weed) = (shared_redis(), shared_weed());
    let mut kelp = controller(redis, weed);
    let mut c = csi::connect(&kelp.endpoint).await;
    c.identity.probe(csi::ProbeRequest {}).await.unwrap();
    unsafe { libc::kill(kelp.pid() as i32, libc::SIGTERM) };
    assert!(kelp.wait_exit(Duration::from_secs(15)), "kelp did not exit after SIGTERM");
    assert!(!std::path::Path::new(kelp.endpoint.trim_start_matches("unix://")).exists(), "socket removed");
    assert!(kelp.log_text().contains("draining in-flight RPCs"));
    drop(c);
}

/// Strict durability (the default) is a filer.conf rule asking SeaweedFS to fsync the
/// bucket's writes; `durability=relaxed` has none; DeleteVolume removes the rule.
#[tokio::test(flavor = "multi_thread")]
async fn durability_is_a_bucket_fsync_rule() {
    // A SeaweedFS of its own: filer.conf is read-modify-written, and another test's
    // controller editing the shared filer's at the same moment can write back a rule
    // this test just removed (one controller acts at a time in a Swarm).
    let weed = &Weed::start();
    let redis = shared_redis();
    let kelp = controller(redis, weed);
    let mut c = csi::connect(&kelp.endpoint).await;
    let strict = c.create("durable-strict", GIB).await.unwrap();
    let mut req = csi::create_req("durable-relaxed", GIB);
    req.parameters = HashMap::from([("durability".into(), "relaxed".into())]);
    let relaxed = c.ctl.create_volume(req).await.unwrap().into_inner().volume.unwrap();
    let rule_of = |vol: &csi::Volume| {
        let conf = run(Command::new("curl")
            .arg("-s")
            .arg(format!("http://127.0.0.1:{}/etc/seaweedfs/filer.conf", weed.filer_port)));
        let conf: serde_json::Value = serde_json::from_str(&conf).unwrap_or_default();
        let prefix = format!("/buckets/kelp-{}/", vol.volume_context["fsName"]);
        conf["locations"]
            .as_array()
            .and_then(|l| l.iter().find(|r| r["locationPrefix"] == prefix.as_str()).cloned())
    };
    assert_eq!(rule_of(&strict).expect("a rule for the strict bucket")["fsync"], true);
    assert!(rule_of(&relaxed).is_none(), "{:?}", rule_of(&relaxed));
    for v in [&strict, &relaxed] {
        c.delete(&v.volume_id).await.unwrap();
    }
    assert!(rule_of(&strict).is_none(), "DeleteVolume removes the rule");
}

/// The copy under snapshots and clones (docs/snapshots.md), on a real file system:
/// taken while a writer fsyncs files, it holds every file acknowledged before the
/// call; it keeps hard links, symlinks, extended attributes and times; changing or
/// deleting the source leaves it intact (its objects are shared, not freed); an
/// unmodified `juicefs mount --subdir` reads it and `juicefs fsck` finds nothing
/// wrong; deleting both frees every object; and bad requests write nothing.
#[tokio::test(flavor = "multi_thread")]
async fn tree_copy_is_point_in_time_and_shares_objects() {
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let (redis, weed) = (shared_redis(), shared_weed());
    let kelp = controller(redis, weed);
    let mut c = csi::connect(&kelp.endpoint).await;
    let vol = c.create("tree-copy", GIB).await.unwrap();
    let db = db_of(&vol.volume_id);
    let chunks = format!("/buckets/kelp-{0}/{0}/chunks", vol.volume_context["fsName"]);
    let base = scratch("treecopy");
    let _leftovers = MountsBelow(base.clone());
    let root = base.join("root");
    // No local cache: a read after drop_caches must come from the bucket.
    juicefs_mount_with(redis, db, &root, &["--cache-size=0"]);

    // A tree with every kind of entry: nested directories, a multi-block file, small
    // files, an empty directory, a symlink, two hard links, an extended attribute.
    let src = root.join("src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::create_dir_all(src.join("empty")).unwrap();
    let big: Vec<u8> = (0..9u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let put = |path: &std::path::Path, data: &[u8]| {
        let mut f = std::fs::File::create(path).unwrap();
        f.write_all(data).unwrap();
        f.sync_all().unwrap();
    };
    put(&src.join("big.bin"), &big);
    put(&src.join("a/b/deep.txt"), b"deep");
    put(&src.join("a/hard1"), b"linked");
    std::fs::hard_link(src.join("a/hard1"), src.join("a/b/hard2")).unwrap();
    std::os::unix::fs::symlink("a/b/deep.txt", src.join("link")).unwrap();
    let big_ino = std::fs::metadata(src.join("big.bin")).unwrap().ino();
    redis.cli(db, &["hset", &format!("x{big_ino}"), "user.kelp", "snapshotted"]);

    // A writer fsyncs numbered files while the copy runs.
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (dir, acked, stop) = (src.join("w"), acked.clone(), stop.clone());
        std::fs::create_dir_all(&dir).unwrap();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let mut f = std::fs::File::create(dir.join(format!("f{i}"))).unwrap();
                f.write_all(format!("file {i}").as_bytes()).unwrap();
                f.sync_all().unwrap();
                i += 1;
                acked.store(i, Ordering::SeqCst);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let meta = kelp::meta::MetaServer::new(
        kelp::meta::MetaUrl::parse(&redis.url()).unwrap().with_password(redis.password.as_deref()),
    );
    let before = acked.load(Ordering::SeqCst);
    let copied = meta.copy_tree(db, &["src"], &[".kelp", "s", "snap"], 100_000).await.unwrap();
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    assert!(before > 0, "the writer made progress before the copy");

    // Bad requests are refused and write nothing.
    let keys = redis.cli(db, &["dbsize"]);
    let refused = |r: kelp::meta::Result<kelp::meta::Copied>| match r {
        Err(kelp::meta::Error::TreeRefused { why, .. }) => why,
        other => panic!("expected a refusal, got {other:?}"),
    };
    use kelp::meta::Refusal;
    assert_eq!(
        refused(meta.copy_tree(db, &["src"], &[".kelp", "s", "snap"], 100_000).await),
        Refusal::Exists
    );
    assert_eq!(refused(meta.copy_tree(db, &["nope"], &["x"], 100_000).await), Refusal::NoSource);
    assert_eq!(
        refused(meta.copy_tree(db, &["src", "big.bin"], &["x"], 100_000).await),
        Refusal::NotADirectory
    );
    assert_eq!(
        refused(meta.copy_tree(db, &["src"], &["src", "a", "x"], 100_000).await),
        Refusal::InsideSource
    );
    assert_eq!(refused(meta.copy_tree(db, &["src"], &["x"], 3).await), Refusal::TooMany(3));
    assert_eq!(redis.cli(db, &["dbsize"]), keys, "a refused copy writes nothing");
    assert_eq!(
        tonic::Status::from(kelp::error::Error::from(
            meta.copy_tree(db, &["src"], &["x"], 3).await.unwrap_err()
        ))
        .code(),
        Code::ResourceExhausted
    );

    // Change the source after the copy: overwrite the start of the big file.
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(src.join("big.bin")).unwrap();
        f.write_all(&[0xEE; 4096]).unwrap();
        f.sync_all().unwrap();
    }

    // The copy, through an unmodified juicefs mounted at the copied directory.
    let snap = base.join("snap");
    juicefs_mount_with(redis, db, &snap, &["--cache-size=0", "--subdir=/.kelp/s/snap", "--read-only"]);
    let check_copy = |snap: &std::path::Path| {
        assert_eq!(std::fs::read(snap.join("big.bin")).unwrap(), big, "the copy predates the overwrite");
        assert_eq!(std::fs::read(snap.join("a/b/deep.txt")).unwrap(), b"deep");
        assert_eq!(std::fs::read_link(snap.join("link")).unwrap(), std::path::Path::new("a/b/deep.txt"));
        assert_eq!(std::fs::read(snap.join("link")).unwrap(), b"deep");
        let (h1, h2) = (
            std::fs::metadata(snap.join("a/hard1")).unwrap(),
            std::fs::metadata(snap.join("a/b/hard2")).unwrap(),
        );
        assert_eq!((h1.ino(), h1.nlink()), (h2.ino(), 2), "hard links stay hard links");
        assert!(std::fs::read_dir(snap.join("empty")).unwrap().next().is_none());
        for i in 0..before {
            assert_eq!(
                std::fs::read_to_string(snap.join(format!("w/f{i}"))).unwrap(),
                format!("file {i}"),
                "file {i} was fsync'd before the copy began"
            );
        }
    };
    check_copy(&snap);
    let src_mtime = std::fs::metadata(src.join("a/b/deep.txt")).unwrap().mtime();
    assert_eq!(std::fs::metadata(snap.join("a/b/deep.txt")).unwrap().mtime(), src_mtime, "times are kept");
    let copied_ino = std::fs::metadata(snap.join("big.bin")).unwrap().ino();
    assert_eq!(redis.cli(db, &["hget", &format!("x{copied_ino}"), "user.kelp"]), "snapshotted");
    let entries = std::fs::read_dir(snap.join("w")).unwrap().count() as u64 + 9;
    assert_eq!(copied.entries, entries, "every entry of the tree was copied");

    // Deleting the whole source frees only what the copy does not use.
    std::fs::remove_dir_all(&src).unwrap();
    let settled = |want: Option<usize>| {
        let mut last = usize::MAX;
        poll_until(Duration::from_secs(60), Duration::from_secs(2), || {
            let now = objects_under(weed, &chunks);
            let done = match want {
                Some(w) => now == w,
                None => now == last,
            };
            last = now;
            done.then_some(now)
        })
    };
    let left = settled(None).expect("object deletion settles");
    assert!(left > 0);
    let _ = Command::new("sh").arg("-c").arg("echo 3 > /proc/sys/vm/drop_caches").status();
    check_copy(&snap);
    assert_fsck_clean(&redis.url(), redis.password.as_deref(), db);

    // Deleting the copy too frees every object: the references were counted right.
    umount(&snap);
    std::fs::remove_dir_all(root.join(".kelp/s/snap")).unwrap();
    assert_eq!(
        settled(Some(0)),
        Some(0),
        "{} objects left after both trees were deleted",
        objects_under(weed, &chunks)
    );
    umount(&root);
    assert!(mounts_under(&base).is_empty());
    c.delete(&vol.volume_id).await.unwrap();
}
