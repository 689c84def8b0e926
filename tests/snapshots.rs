//! Snapshots, restores and clones on real servers (docs/snapshots.md): a snapshot is
//! the state at the call, even with a writer running; a snapshot or clone stays as it
//! was whatever happens to its source; the members of a family are deleted in any
//! order and the file system goes with the last; objects a snapshot still uses are
//! never freed; a controller killed at every step leaves what a retry finishes; bad
//! input is refused and changes nothing; and the family is written by one node at a
//! time.

mod common;

use common::csi;
use common::*;
use csi::volume_capability::access_mode::Mode;
use csi::volume_content_source::{SnapshotSource, Type as SourceType, VolumeSource};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use tonic::Code;

const GIB: i64 = 1 << 30;

fn controller(redis: &Redis, weed: &Weed) -> Kelp {
    KelpBuilder::new().redis(redis).weed(weed).start()
}

async fn snapshot(c: &mut csi::Clients, name: &str, source: &str) -> Result<csi::Snapshot, tonic::Status> {
    let req = csi::CreateSnapshotRequest {
        source_volume_id: source.into(),
        name: name.into(),
        ..Default::default()
    };
    Ok(c.ctl.create_snapshot(req).await?.into_inner().snapshot.unwrap())
}

async fn delete_snapshot(c: &mut csi::Clients, id: &str) -> Result<(), tonic::Status> {
    let req = csi::DeleteSnapshotRequest { snapshot_id: id.into(), ..Default::default() };
    c.ctl.delete_snapshot(req).await.map(|_| ())
}

fn from_snapshot(name: &str, snapshot_id: &str) -> csi::CreateVolumeRequest {
    let mut req = csi::create_req(name, GIB);
    req.volume_capabilities = vec![csi::mount_cap(Mode::SingleNodeWriter)];
    req.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(SourceType::Snapshot(SnapshotSource { snapshot_id: snapshot_id.into() })),
    });
    req
}

fn from_volume(name: &str, volume_id: &str) -> csi::CreateVolumeRequest {
    let mut req = csi::create_req(name, GIB);
    req.volume_capabilities = vec![csi::mount_cap(Mode::SingleNodeWriter)];
    req.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(SourceType::Volume(VolumeSource { volume_id: volume_id.into() })),
    });
    req
}

async fn create(c: &mut csi::Clients, req: csi::CreateVolumeRequest) -> Result<csi::Volume, tonic::Status> {
    Ok(c.ctl.create_volume(req).await?.into_inner().volume.unwrap())
}

fn put(path: &Path, data: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("<{e}>"))
}

/// Files and their contents below `dir`, sorted; not juicefs's own virtual files at
/// the top of a mount (`.accesslog` is read forever).
fn contents(dir: &Path) -> Vec<(String, String)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| !e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), read(&e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Mounts the volume with an unmodified juicefs, runs `f` on it, unmounts.
fn with_volume<T>(redis: &Redis, id: &str, f: impl FnOnce(&Path) -> T) -> T {
    let mnt = scratch("mnt").join("v");
    juicefs_mount_volume(redis, id, &mnt);
    let out = f(&mnt);
    umount(&mnt);
    assert!(mounts_under(&mnt).is_empty());
    out
}

/// What the registry keeps of the family of file system `fs`.
fn family_keys(redis: &Redis, fs: &str) -> String {
    ["members", "fsnaps", "pubs", "holder", "vol"]
        .iter()
        .map(|k| redis.cli(0, &["exists", &format!("kelp:{k}:{fs}")]))
        .collect::<Vec<_>>()
        .join("")
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_restore_and_clone_are_independent_copies() {
    let (redis, weed) = (shared_redis(), shared_weed());
    let kelp = controller(redis, weed);
    let mut c = csi::connect(&kelp.endpoint).await;
    let vol = c.create("snap-source", GIB).await.unwrap();
    let fs = vol.volume_context["fsName"].clone();
    with_volume(redis, &vol.volume_id, |m| {
        put(&m.join("a.txt"), b"first");
        put(&m.join("b.txt"), b"kept");
    });

    let snap = snapshot(&mut c, "nightly", &vol.volume_id).await.unwrap();
    assert!(snap.ready_to_use && snap.creation_time.is_some());
    assert_eq!(snap.source_volume_id, vol.volume_id);
    assert_eq!(snap.size_bytes, GIB);
    // The family's bucket holds every member's data: no longer the volume's quota.
    let listing = run(std::process::Command::new("curl")
        .args(["-s", "-H", "Accept: application/json"])
        .arg(format!("http://127.0.0.1:{}/buckets/?limit=10000", weed.filer_port)));
    let buckets: serde_json::Value = serde_json::from_str(&listing).unwrap();
    let entry = buckets["Entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["FullPath"] == format!("/buckets/kelp-{fs}"));
    assert_eq!(entry.unwrap()["Quota"].as_i64().unwrap_or(0), 0, "{entry:?}");
    // The same name and source: the same snapshot.
    assert_eq!(snapshot(&mut c, "nightly", &vol.volume_id).await.unwrap().snapshot_id, snap.snapshot_id);

    // Change the source after the snapshot.
    with_volume(redis, &vol.volume_id, |m| {
        put(&m.join("a.txt"), b"changed");
        std::fs::remove_file(m.join("b.txt")).unwrap();
        put(&m.join("c.txt"), b"new");
    });

    // A restore holds the snapshot's state, and is a volume of its own.
    let restored = create(&mut c, from_snapshot("snap-restored", &snap.snapshot_id)).await.unwrap();
    assert_eq!(restored.capacity_bytes, GIB);
    assert!(matches!(
        restored.content_source.as_ref().and_then(|s| s.r#type.as_ref()),
        Some(SourceType::Snapshot(s)) if s.snapshot_id == snap.snapshot_id
    ));
    assert_eq!(restored.volume_context["fsName"], fs, "a restore lives in its source's file system");
    let want = vec![("a.txt".to_string(), "first".to_string()), ("b.txt".into(), "kept".into())];
    assert_eq!(with_volume(redis, &restored.volume_id, contents), want);

    // A clone of the live volume holds its current state; writes to either stay there.
    let clone = create(&mut c, from_volume("snap-clone", &vol.volume_id)).await.unwrap();
    with_volume(redis, &clone.volume_id, |m| {
        assert_eq!(read(&m.join("a.txt")), "changed");
        put(&m.join("only-in-clone"), b"x");
    });
    with_volume(redis, &vol.volume_id, |m| {
        assert!(!m.join("only-in-clone").exists());
        put(&m.join("only-in-source"), b"y");
    });
    with_volume(redis, &clone.volume_id, |m| assert!(!m.join("only-in-source").exists()));
    with_volume(redis, &restored.volume_id, |m| {
        put(&m.join("a.txt"), b"restored and changed");
    });
    // The snapshot itself never changed.
    let again = create(&mut c, from_snapshot("snap-restored-2", &snap.snapshot_id)).await.unwrap();
    assert_eq!(with_volume(redis, &again.volume_id, contents), want);
    // A copy's capacity counts what it began with (its directory quota's usage).
    let db = db_of(&vol.volume_id);
    let root = scratch("mnt").join("root");
    juicefs_mount(redis, db, &root);
    let member = again.volume_id.rsplit(':').next().unwrap().to_string();
    let ino = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(root.join(".kelp/v").join(&member)).unwrap().ino()
    };
    umount(&root);
    let used: u64 = redis.cli(db, &["hget", "dirQuotaUsedSpace", &ino.to_string()]).parse().unwrap();
    let inodes: u64 = redis.cli(db, &["hget", "dirQuotaUsedInodes", &ino.to_string()]).parse().unwrap();
    assert_eq!((used, inodes), (2 * 4096, 2), "the restore's quota counts its two files");

    // Expanding a clone grows the clone alone.
    let grown = c
        .ctl
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: clone.volume_id.clone(),
            capacity_range: Some(csi::CapacityRange { required_bytes: 2 * GIB, limit_bytes: 0 }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grown.capacity_bytes, 2 * GIB);

    // ListVolumes shows every member, ListSnapshots the snapshot by id and by source.
    let listed = c.ctl.list_volumes(csi::ListVolumesRequest::default()).await.unwrap().into_inner();
    let capacity = |id: &str| {
        let v = listed.entries.iter().map(|e| e.volume.as_ref().unwrap()).find(|v| v.volume_id == id);
        v.map(|v| v.capacity_bytes)
    };
    for v in [&vol, &restored, &again] {
        assert_eq!(capacity(&v.volume_id), Some(GIB));
    }
    assert_eq!(capacity(&clone.volume_id), Some(2 * GIB));
    // JuiceFS's own check calls the family's file system clean, copies and all.
    assert_fsck_clean(&redis.url(), redis.password.as_deref(), db);
    let list = |snapshot_id: &str, source: &str| {
        let mut ctl = c.ctl.clone();
        let req = csi::ListSnapshotsRequest {
            snapshot_id: snapshot_id.into(),
            source_volume_id: source.into(),
            ..Default::default()
        };
        async move { ctl.list_snapshots(req).await.unwrap().into_inner().entries.len() }
    };
    assert_eq!(list(&snap.snapshot_id, "").await, 1);
    assert_eq!(list("", &vol.volume_id).await, 1);
    assert_eq!(list("", &clone.volume_id).await, 0);

    for id in [&clone.volume_id, &vol.volume_id, &restored.volume_id] {
        c.delete(id).await.unwrap();
    }
    delete_snapshot(&mut c, &snap.snapshot_id).await.unwrap();
    assert!(weed.buckets().contains(&format!("kelp-{fs}")), "one restore still uses the file system");
    c.delete(&again.volume_id).await.unwrap();
    assert!(!weed.buckets().contains(&format!("kelp-{fs}")));
    assert_eq!(redis.cli(db, &["dbsize"]), "0");
    assert_eq!(family_keys(redis, &fs), "00000");
}

/// Taken while a writer fsyncs files through its own mount, a snapshot holds every
/// file whose fsync returned before CreateSnapshot was called.
#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_taken_under_a_writer_holds_every_acknowledged_file() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let (redis, weed) = (shared_redis(), shared_weed());
    let kelp = controller(redis, weed);
    let mut c = csi::connect(&kelp.endpoint).await;
    let vol = c.create("snap-busy", GIB).await.unwrap();
    let mnt = scratch("mnt").join("busy");
    let _leftovers = MountsBelow(mnt.clone());
    juicefs_mount_volume(redis, &vol.volume_id, &mnt);
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (dir, acked, stop) = (mnt.clone(), acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let tmp = dir.join(format!(".f{i}.tmp"));
                put(&tmp, format!("file {i}").as_bytes());
                // Renamed into place: a snapshot never holds half a rename.
                std::fs::rename(&tmp, dir.join(format!("f{i}"))).unwrap();
                i += 1;
                acked.store(i, Ordering::SeqCst);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let before = acked.load(Ordering::SeqCst);
    let snap = snapshot(&mut c, "busy-snap", &vol.volume_id).await.unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    umount(&mnt);
    assert!(before > 0, "the writer made progress");

    let restored = create(&mut c, from_snapshot("busy-restored", &snap.snapshot_id)).await.unwrap();
    let (files, tmps) = with_volume(redis, &restored.volume_id, |m| {
        let names: Vec<String> = std::fs::read_dir(m)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        for i in 0..before {
            assert_eq!(
                read(&m.join(format!("f{i}"))),
                format!("file {i}"),
                "f{i} was acknowledged before the call"
            );
        }
        for n in names.iter().filter(|n| n.starts_with('f')) {
            assert_eq!(read(&m.join(n)), format!("file {}", &n[1..]), "{n} is whole");
        }
        (
            names.iter().filter(|n| n.starts_with('f')).count() as u64,
            names.iter().filter(|n| n.ends_with(".tmp")).count(),
        )
    });
    assert!(files >= before && tmps <= 1, "files {files}, before {before}, temporaries {tmps}");
    for id in [&restored.volume_id, &vol.volume_id] {
        c.delete(id).await.unwrap();
    }
    delete_snapshot(&mut c, &snap.snapshot_id).await.unwrap();
    assert!(!weed.buckets().contains(&format!("kelp-{}", vol.volume_context["fsName"])));
}

/// Every order of deleting a volume, its snapshot and its clone leaves the others
/// usable, and the last one takes the file system with it.
#[tokio::test(flavor = "multi_thread")]
async fn members_are_deleted_in_any_order() {
    let (redis, weed) = (shared_redis(), shared_weed());
    let kelp = controller(redis, weed);
    let mut c = csi::connect(&kelp.endpoint).await;
    let orders = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
    for (n, order) in orders.iter().enumerate() {
        let vol = c.create(&format!("order-{n}"), GIB).await.unwrap();
        let fs = vol.volume_context["fsName"].clone();
        let db = db_of(&vol.volume_id);
        with_volume(redis, &vol.volume_id, |m| put(&m.join("f"), b"data"));
        let snap = snapshot(&mut c, &format!("order-{n}-snap"), &vol.volume_id).await.unwrap();
        let clone = create(&mut c, from_volume(&format!("order-{n}-clone"), &vol.volume_id)).await.unwrap();
        for (k, which) in order.iter().enumerate() {
            match which {
                0 => c.delete(&vol.volume_id).await.unwrap(),
                1 => delete_snapshot(&mut c, &snap.snapshot_id).await.unwrap(),
                _ => c.delete(&clone.volume_id).await.unwrap(),
            }
            let left = &order[k + 1..];
            if left.is_empty() {
                break;
            }
            assert!(weed.buckets().contains(&format!("kelp-{fs}")), "order {order:?}: kept after {k}");
            // What is left still works: the clone reads its data, the snapshot restores.
            if left.contains(&2) {
                with_volume(redis, &clone.volume_id, |m| assert_eq!(read(&m.join("f")), "data"));
            }
            if left.contains(&1) {
                let r = create(&mut c, from_snapshot(&format!("order-{n}-r{k}"), &snap.snapshot_id))
                    .await
                    .unwrap();
                with_volume(redis, &r.volume_id, |m| assert_eq!(read(&m.join("f")), "data"));
                c.delete(&r.volume_id).await.unwrap();
            }
            if left.contains(&0) {
                with_volume(redis, &vol.volume_id, |m| assert_eq!(read(&m.join("f")), "data"));
            }
        }
        assert!(!weed.buckets().contains(&format!("kelp-{fs}")), "order {order:?}: bucket gone");
        assert_eq!(redis.cli(db, &["dbsize"]), "0", "order {order:?}: database empty");
        assert_eq!(redis.cli(0, &["sismember", "kelp:dbs", &db.to_string()]), "0");
        assert_eq!(family_keys(redis, &fs), "00000", "order {order:?}: registry clean");
        // The deleted volume's name is free again.
        let again = c.create(&format!("order-{n}"), GIB).await.unwrap();
        c.delete(&again.volume_id).await.unwrap();
    }
}

/// Deleting files in the source frees none of the objects a snapshot still uses.
#[tokio::test(flavor = "multi_thread")]
async fn objects_a_snapshot_uses_are_not_freed() {
    let (redis, weed) = (shared_redis(), shared_weed());
    let kelp = controller(redis, weed);
    let mut c = csi::connect(&kelp.endpoint).await;
    let vol = c.create("snap-objects", GIB).await.unwrap();
    let fs = vol.volume_context["fsName"].clone();
    let chunks = format!("/buckets/kelp-{fs}/{fs}/chunks");
    let data: Vec<u8> = (0..6u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    with_volume(redis, &vol.volume_id, |m| put(&m.join("big"), &data));
    let objects = objects_under(weed, &chunks);
    assert!(objects > 0);
    let snap = snapshot(&mut c, "objects-snap", &vol.volume_id).await.unwrap();
    with_volume(redis, &vol.volume_id, |m| std::fs::remove_file(m.join("big")).unwrap());
    // juicefs frees a deleted file's objects in the background; give it time to.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(objects_under(weed, &chunks), objects, "every object is still referenced by the snapshot");
    let r = create(&mut c, from_snapshot("objects-restored", &snap.snapshot_id)).await.unwrap();
    let mnt = scratch("mnt").join("cold");
    let _leftovers = MountsBelow(mnt.clone());
    let id = kelp::volume::VolumeId::parse(&r.volume_id).unwrap();
    juicefs_mount_with(
        redis,
        id.db,
        &mnt,
        &["--cache-size=0", &format!("--subdir={}", id.subdir().unwrap())],
    );
    assert!(std::fs::read(mnt.join("big")).unwrap() == data, "read back from the bucket");
    umount(&mnt);
    for v in [&vol.volume_id, &r.volume_id] {
        c.delete(v).await.unwrap();
    }
    delete_snapshot(&mut c, &snap.snapshot_id).await.unwrap();
    assert!(!weed.buckets().contains(&format!("kelp-{fs}")));
}

/// A controller killed at each step of a snapshot, a clone and a member's deletion:
/// the retry finishes the operation, and once everything is deleted nothing is left.
#[tokio::test(flavor = "multi_thread")]
async fn crash_at_every_step_of_snapshot_and_clone_is_finished_by_the_retry() {
    let (redis, weed) = (shared_redis(), shared_weed());
    let mut kelp = controller(redis, weed);
    let mut c = csi::connect(&kelp.endpoint).await;
    let vol = c.create("crash-family", GIB).await.unwrap();
    let fs = vol.volume_context["fsName"].clone();
    let db = db_of(&vol.volume_id);
    with_volume(redis, &vol.volume_id, |m| put(&m.join("f"), b"data"));

    let crash = |kelp: &mut Kelp, point: &str| kelp.restart_with_env(&[("KELP_FAILPOINT", point)]);
    let mut snaps = Vec::new();
    for point in ["snapshot:reserved", "snapshot:copied"] {
        crash(&mut kelp, point);
        let mut c = csi::connect(&kelp.endpoint).await;
        let name = format!("crash-{}", point.replace(':', "-"));
        assert!(snapshot(&mut c, &name, &vol.volume_id).await.is_err(), "{point}: dies mid-call");
        assert!(kelp.wait_exit(Duration::from_secs(5)), "{point}: aborted");
        kelp.restart();
        let mut c = csi::connect(&kelp.endpoint).await;
        let s =
            snapshot(&mut c, &name, &vol.volume_id).await.unwrap_or_else(|e| panic!("{point}: retry: {e}"));
        assert!(s.ready_to_use);
        snaps.push(s.snapshot_id);
    }
    let mut clones = Vec::new();
    for point in ["clone:reserved", "clone:copied"] {
        crash(&mut kelp, point);
        let mut c = csi::connect(&kelp.endpoint).await;
        let name = format!("crash-{}", point.replace(':', "-"));
        assert!(create(&mut c, from_snapshot(&name, &snaps[0])).await.is_err(), "{point}: dies mid-call");
        assert!(kelp.wait_exit(Duration::from_secs(5)), "{point}: aborted");
        kelp.restart();
        let mut c = csi::connect(&kelp.endpoint).await;
        let v = create(&mut c, from_snapshot(&name, &snaps[0]))
            .await
            .unwrap_or_else(|e| panic!("{point}: retry: {e}"));
        with_volume(redis, &v.volume_id, |m| assert_eq!(read(&m.join("f")), "data", "{point}"));
        clones.push(v.volume_id);
    }
    // Deleting: killed after a member is forgotten, and after a snapshot is.
    crash(&mut kelp, "delete:member");
    let mut c = csi::connect(&kelp.endpoint).await;
    assert!(c.delete(&clones[0]).await.is_err());
    assert!(kelp.wait_exit(Duration::from_secs(5)));
    crash(&mut kelp, "snapshot:forgotten");
    let mut c = csi::connect(&kelp.endpoint).await;
    assert!(delete_snapshot(&mut c, &snaps[0]).await.is_err());
    assert!(kelp.wait_exit(Duration::from_secs(5)));
    kelp.restart();
    let mut c = csi::connect(&kelp.endpoint).await;
    c.delete(&clones[0]).await.unwrap();
    delete_snapshot(&mut c, &snaps[0]).await.unwrap();
    for v in [&clones[1], &vol.volume_id] {
        c.delete(v).await.unwrap();
    }
    // The last one: killed after it is forgotten, before the family is destroyed.
    crash(&mut kelp, "snapshot:forgotten");
    let mut c = csi::connect(&kelp.endpoint).await;
    assert!(delete_snapshot(&mut c, &snaps[1]).await.is_err());
    assert!(kelp.wait_exit(Duration::from_secs(5)));
    assert!(weed.buckets().contains(&format!("kelp-{fs}")), "killed before the family went");
    kelp.restart();
    let mut c = csi::connect(&kelp.endpoint).await;
    delete_snapshot(&mut c, &snaps[1]).await.unwrap();
    assert!(!weed.buckets().contains(&format!("kelp-{fs}")));
    assert_eq!(redis.cli(db, &["dbsize"]), "0");
    assert_eq!(family_keys(redis, &fs), "00000");
    let listed = c.ctl.list_snapshots(csi::ListSnapshotsRequest::default()).await.unwrap().into_inner();
    assert!(!listed.entries.iter().any(|e| e.snapshot.as_ref().unwrap().snapshot_id.contains(&fs)));
}

/// Bad requests get the right code and change nothing.
#[tokio::test(flavor = "multi_thread")]
async fn bad_snapshot_and_clone_requests_are_refused_and_change_nothing() {
    let (redis, weed) = (shared_redis(), shared_weed());
    let kelp = controller(redis, weed);
    let mut c = csi::connect(&kelp.endpoint).await;
    let vol = c.create("bad-src", GIB).await.unwrap();
    let other = c.create("bad-other", GIB).await.unwrap();
    let mut root_req = csi::create_req("bad-root", GIB);
    root_req.parameters.insert("layout".into(), "root".into());
    let root = create(&mut c, root_req).await.unwrap();
    let snap = snapshot(&mut c, "bad-snap", &vol.volume_id).await.unwrap();
    let state = || {
        (
            weed.buckets().len(),
            redis.cli(0, &["zcard", "kelp:volumes"]),
            redis.cli(0, &["hlen", "kelp:snaps"]),
            redis.cli(db_of(&vol.volume_id), &["dbsize"]),
        )
    };
    let before = state();
    let code = |r: Result<csi::Snapshot, tonic::Status>| r.unwrap_err().code();
    assert_eq!(code(snapshot(&mut c, "", &vol.volume_id).await), Code::InvalidArgument);
    assert_eq!(code(snapshot(&mut c, "x", "").await), Code::InvalidArgument);
    let unknown = "kelp1:99:0a1b2c3d:nosuch:11223344";
    assert_eq!(code(snapshot(&mut c, "x", unknown).await), Code::NotFound);
    assert_eq!(code(snapshot(&mut c, "bad-snap", &other.volume_id).await), Code::AlreadyExists);
    assert_eq!(code(snapshot(&mut c, "x", &root.volume_id).await), Code::FailedPrecondition);
    let vcode = |r: Result<csi::Volume, tonic::Status>| r.unwrap_err().code();
    let unknown_snap = "kelp-snap1:99:0a1b2c3d:nosuch:11223344";
    assert_eq!(vcode(create(&mut c, from_snapshot("x", unknown_snap)).await), Code::NotFound);
    assert_eq!(vcode(create(&mut c, from_snapshot("x", "garbage")).await), Code::NotFound);
    assert_eq!(vcode(create(&mut c, from_volume("x", unknown)).await), Code::NotFound);
    assert_eq!(vcode(create(&mut c, from_volume("x", &root.volume_id)).await), Code::FailedPrecondition);
    // A name reused with another source.
    let made = create(&mut c, from_snapshot("bad-copy", &snap.snapshot_id)).await.unwrap();
    let after_made = state();
    assert_eq!(vcode(create(&mut c, from_volume("bad-copy", &vol.volume_id)).await), Code::AlreadyExists);
    assert_eq!(vcode(c.create("bad-copy", GIB).await), Code::AlreadyExists);
    // Parameters that are not the family's, a limit below the source, two sources.
    let mut req = from_volume("x", &vol.volume_id);
    req.parameters.insert("compression".into(), "zstd".into());
    assert_eq!(vcode(create(&mut c, req).await), Code::InvalidArgument);
    let mut req = from_volume("x", &vol.volume_id);
    req.capacity_range = Some(csi::CapacityRange { required_bytes: 1 << 20, limit_bytes: 1 << 25 });
    assert_eq!(vcode(create(&mut c, req).await), Code::OutOfRange);
    let mut req = from_volume("x", &vol.volume_id);
    req.parameters.insert("from-snapshot".into(), "bad-snap".into());
    assert_eq!(vcode(create(&mut c, req).await), Code::InvalidArgument);
    let mut req = csi::create_req("x", GIB);
    req.parameters = HashMap::from([("clone-of".into(), "nosuch".into())]);
    assert_eq!(vcode(create(&mut c, req).await), Code::NotFound);
    assert_eq!(state(), after_made, "refused requests change nothing");
    // A tree above --snapshot-max-entries is refused before anything is written: the
    // copy would hold its metadata server for too long.
    with_volume(redis, &vol.volume_id, |m| ["a", "b", "c"].iter().for_each(|f| put(&m.join(f), b"x")));
    let after_files = state();
    let small = KelpBuilder::new().redis(redis).weed(weed).arg("--snapshot-max-entries=2").start();
    let mut cs = csi::connect(&small.endpoint).await;
    assert_eq!(code(snapshot(&mut cs, "too-big", &vol.volume_id).await), Code::ResourceExhausted);
    assert_eq!(vcode(create(&mut cs, from_volume("too-big", &vol.volume_id)).await), Code::ResourceExhausted);
    assert_eq!(state(), after_files, "refused copies change nothing");
    drop(small);
    // The Swarm handles: clone-of by volume name, from-snapshot by snapshot name.
    let mut req = csi::create_req("bad-by-name", GIB);
    req.parameters = HashMap::from([("clone-of".into(), "bad-src".into())]);
    let by_name = create(&mut c, req).await.unwrap();
    assert_eq!(by_name.volume_context["fsName"], vol.volume_context["fsName"]);
    let mut req = csi::create_req("bad-by-snap", GIB);
    req.parameters = HashMap::from([("from-snapshot".into(), "bad-snap".into())]);
    let by_snap = create(&mut c, req).await.unwrap();
    for id in [&by_name.volume_id, &by_snap.volume_id, &made.volume_id] {
        c.delete(id).await.unwrap();
    }
    // The registry and the buckets are as before; the deleted copies' trees stay in
    // the family's file system until the family goes (docs/snapshots.md).
    let (now, then) = (state(), before);
    assert_eq!((now.0, now.1, now.2), (then.0, then.1, then.2));
    delete_snapshot(&mut c, &snap.snapshot_id).await.unwrap();
    delete_snapshot(&mut c, "not-a-kelp-snapshot").await.unwrap();
    for id in [&vol.volume_id, &other.volume_id, &root.volume_id] {
        c.delete(id).await.unwrap();
    }
}

/// A family is written by one node at a time: its members share one holder, and a
/// node releases it only when it writes none of them; writers through the home master
/// are not mixed with writers through a node's own.
#[tokio::test(flavor = "multi_thread")]
async fn a_family_has_one_writer_node() {
    let (redis, weed) = (shared_redis(), shared_weed());
    let kelp = controller(redis, weed);
    let mut c = csi::connect(&kelp.endpoint).await;
    redis.cli(
        0,
        &["hset", "kelp:nodes", "other-node", r#"{"node_id":"other-node","local_meta":"","updated_unix":0}"#],
    );
    let vol = c.create("family-pin", GIB).await.unwrap();
    let clone = create(&mut c, from_volume("family-pin-clone", &vol.volume_id)).await.unwrap();
    let publish = |id: &str, node: &str, mode: Mode| csi::ControllerPublishVolumeRequest {
        volume_id: id.into(),
        node_id: node.into(),
        volume_capability: Some(csi::mount_cap(mode)),
        ..Default::default()
    };
    let unpublish = |id: &str, node: &str| csi::ControllerUnpublishVolumeRequest {
        volume_id: id.into(),
        node_id: node.into(),
        ..Default::default()
    };
    let ctx = c
        .ctl
        .controller_publish_volume(publish(&vol.volume_id, "test-node", Mode::SingleNodeWriter))
        .await
        .unwrap();
    let ctx2 = c
        .ctl
        .controller_publish_volume(publish(&clone.volume_id, "test-node", Mode::SingleNodeWriter))
        .await
        .unwrap();
    let epoch = |m: &HashMap<String, String>| m.values().count();
    assert!(epoch(&ctx.into_inner().publish_context) > 0 && epoch(&ctx2.into_inner().publish_context) > 0);
    // The clone on another node: the family is held by test-node.
    let err = c
        .ctl
        .controller_publish_volume(publish(&clone.volume_id, "other-node", Mode::SingleNodeWriter))
        .await;
    assert_eq!(err.unwrap_err().code(), Code::FailedPrecondition);
    // Writers on several nodes through the home master cannot write while a node writes
    // a member through its own master.
    let err = c
        .ctl
        .controller_publish_volume(publish(&vol.volume_id, "other-node", Mode::MultiNodeMultiWriter))
        .await;
    assert_eq!(err.unwrap_err().code(), Code::FailedPrecondition);
    // Withdrawing one member leaves the family held; withdrawing both releases it.
    c.ctl.controller_unpublish_volume(unpublish(&vol.volume_id, "test-node")).await.unwrap();
    assert_eq!(
        redis.cli(0, &["hget", &format!("kelp:holder:{}", vol.volume_context["fsName"]), "released"]),
        "0"
    );
    c.ctl.controller_unpublish_volume(unpublish(&clone.volume_id, "test-node")).await.unwrap();
    assert_eq!(
        redis.cli(0, &["hget", &format!("kelp:holder:{}", vol.volume_context["fsName"]), "released"]),
        "1"
    );
    c.ctl
        .controller_publish_volume(publish(&clone.volume_id, "other-node", Mode::SingleNodeWriter))
        .await
        .unwrap();
    // A member still published cannot be deleted; once withdrawn it can.
    assert_eq!(c.delete(&clone.volume_id).await.unwrap_err().code(), Code::FailedPrecondition);
    c.ctl.controller_unpublish_volume(unpublish(&clone.volume_id, "other-node")).await.unwrap();

    // From writers through the home master to a single-node writer and back: each
    // waits for a fence the other left where it wrote.
    let fs = vol.volume_context["fsName"].clone();
    let db = db_of(&vol.volume_id);
    let shared = c
        .ctl
        .controller_publish_volume(publish(&vol.volume_id, "test-node", Mode::MultiNodeMultiWriter))
        .await;
    let shared = shared.unwrap().into_inner().publish_context;
    assert!(shared.contains_key("kelp/meta"), "a shared writer goes through the home master: {shared:?}");
    let err = c
        .ctl
        .controller_publish_volume(publish(&clone.volume_id, "other-node", Mode::SingleNodeWriter))
        .await;
    assert_eq!(err.unwrap_err().code(), Code::FailedPrecondition, "not while shared writers write");
    c.ctl.controller_unpublish_volume(unpublish(&vol.volume_id, "test-node")).await.unwrap();
    let holder = format!("kelp:holder:{fs}");
    assert_eq!(redis.cli(0, &["hget", &holder, "node"]), "(shared writers)");
    let fence = redis.cli(0, &["hget", &holder, "epoch"]);
    assert_eq!(redis.cli(db, &["get", "kelp:fence"]), fence, "fence left on the home master");
    let single = c
        .ctl
        .controller_publish_volume(publish(&clone.volume_id, "other-node", Mode::SingleNodeWriter))
        .await;
    let single = single.unwrap().into_inner().publish_context;
    assert_eq!(single["kelp/fence"], fence, "the single-node writer waits for it");
    c.ctl.controller_unpublish_volume(unpublish(&clone.volume_id, "other-node")).await.unwrap();
    let epoch = single["kelp/epoch"].clone();
    let back = c
        .ctl
        .controller_publish_volume(publish(&vol.volume_id, "test-node", Mode::MultiNodeMultiWriter))
        .await;
    assert_eq!(back.unwrap().into_inner().publish_context["kelp/fence"], epoch, "and back");
    c.ctl.controller_unpublish_volume(unpublish(&vol.volume_id, "test-node")).await.unwrap();

    for id in [&clone.volume_id, &vol.volume_id] {
        c.delete(id).await.unwrap();
    }
    redis.cli(0, &["hdel", "kelp:nodes", "other-node"]);
}
