//! `kelp-bench snapshot`: what the point-in-time tree copy under snapshots and clones
//! costs (docs/snapshots.md), against what a user does today to keep a copy of a
//! volume: `juicefs sync` of it into a new volume. The copy is one script on the
//! metadata server, so its time is also how long that server answers nobody else.
//!
//! One volume is published as Swarm would, filled with small files in directories,
//! snapshotted and cloned through CSI; then a large file is added and it is copied
//! again, to show that the time follows the number of files, not the bytes. The
//! baseline syncs the same volume into a second one through both mounts.

use crate::args::BenchArgs;
use crate::common::{median, publish_one, release_one, Published};
use crate::error::{Error, Result};
use kelp::proto::csi::volume_capability::access_mode::Mode;
use kelp::proto::csi::volume_content_source::{Type as SourceType, VolumeSource};
use kelp::proto::csi::{
    controller_client::ControllerClient, node_client::NodeClient, CreateSnapshotRequest,
    DeleteSnapshotRequest, DeleteVolumeRequest, VolumeContentSource,
};
use kelp::volume::create_request;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;
use tonic::transport::Channel;

/// `files` files of 4 KiB, 100 to a directory, each written and closed (no fsync:
/// the fill is setup, not the measurement).
fn small_files(root: &Path, files: usize) -> std::io::Result<()> {
    for i in 0..files {
        let dir = root.join(format!("d{:03}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&dir)?;
            eprint!("\rfilling: {i}/{files} files   ");
        }
        std::fs::write(dir.join(format!("f{i}")), [(i % 251) as u8; 4096])?;
    }
    eprintln!("\rfilling: {files}/{files} files   ");
    Ok(())
}

fn large_file(path: &Path, mib: usize) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    let block: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    for i in 0..mib {
        f.write_all(&block)?;
        if i % 64 == 0 {
            eprint!("\rfilling: {i}/{mib} MiB   ");
        }
    }
    f.sync_all()?;
    eprintln!("\rfilling: {mib}/{mib} MiB   ");
    Ok(())
}

/// Seconds between the large file's fsync and the copies of the volume holding it.
const SETTLE_SECS: u64 = 10;

/// What the benchmark made through CSI, deleted at the end.
#[derive(Default)]
struct Made {
    snapshots: Vec<String>,
    volumes: Vec<String>,
}

/// `rounds` CreateSnapshot calls of `source` and as many clones (CreateVolume with
/// the volume as content source): the median seconds of each.
async fn copies(
    ctl: &mut ControllerClient<Channel>,
    source: &str,
    label: &str,
    rounds: usize,
    made: &mut Made,
) -> Result<(f64, f64)> {
    let (mut snaps, mut clones) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let t = Instant::now();
        let snap = ctl
            .create_snapshot(CreateSnapshotRequest {
                source_volume_id: source.into(),
                name: format!("bench-{label}-{r}"),
                ..Default::default()
            })
            .await?
            .into_inner()
            .snapshot
            .unwrap_or_default();
        snaps.push(t.elapsed().as_secs_f64());
        made.snapshots.push(snap.snapshot_id);
        let mut req = create_request(&format!("bench-{label}-clone-{r}"), 0, Mode::SingleNodeWriter);
        req.volume_content_source = Some(VolumeContentSource {
            r#type: Some(SourceType::Volume(VolumeSource { volume_id: source.into() })),
        });
        let t = Instant::now();
        let vol = ctl.create_volume(req).await?.into_inner().volume.unwrap_or_default();
        clones.push(t.elapsed().as_secs_f64());
        made.volumes.push(vol.volume_id);
    }
    Ok((median(&snaps), median(&clones)))
}

pub(crate) async fn run(
    a: &BenchArgs,
    ch: Channel,
    files: usize,
    data_mib: usize,
    rounds: usize,
) -> Result<()> {
    let mut ctl = ControllerClient::new(ch.clone());
    let mut node = NodeClient::new(ch);
    let src = publish_one(a, &mut ctl, &mut node, "bench-snap", &[]).await?;
    let dst = publish_one(a, &mut ctl, &mut node, "bench-snap-copy", &[]).await;
    let mut made = Made::default();
    let measured = match &dst {
        Ok(dst) => measure(&mut ctl, &src, dst, files, data_mib, rounds, &mut made).await,
        Err(_) => Ok(()),
    };
    // Everything goes, whatever the measurement did: copies first, then the volumes.
    for id in made.snapshots {
        ctl.delete_snapshot(DeleteSnapshotRequest { snapshot_id: id, secrets: Default::default() }).await?;
    }
    for id in made.volumes {
        ctl.delete_volume(DeleteVolumeRequest { volume_id: id, secrets: Default::default() }).await?;
    }
    for p in [Ok(src), dst].into_iter().flatten() {
        let id = p.id.clone();
        release_one(&mut ctl, &mut node, p).await?;
        ctl.delete_volume(DeleteVolumeRequest { volume_id: id, secrets: Default::default() }).await?;
    }
    measured
}

async fn measure(
    ctl: &mut ControllerClient<Channel>,
    src: &Published,
    dst: &Published,
    files: usize,
    data_mib: usize,
    rounds: usize,
    made: &mut Made,
) -> Result<()> {
    let io = |what: &'static str| move |e: std::io::Error| Error::Refused(format!("{what}: {e}"));
    small_files(&src.target, files).map_err(io("filling the volume"))?;
    let (small_snap, small_clone) = copies(ctl, &src.id, "small", rounds, made).await?;
    large_file(&src.target.join("large.bin"), data_mib).map_err(io("writing the large file"))?;
    // juicefs goes on committing and compacting the large file's slices for a while
    // after the fsync; measured during that, the copy would time the writer too.
    tokio::time::sleep(std::time::Duration::from_secs(SETTLE_SECS)).await;
    let (all_snap, all_clone) = copies(ctl, &src.id, "large", rounds, made).await?;

    // The baseline: `juicefs sync` from one mount to the other, without the mount's
    // virtual files (juicefs's own `.accesslog`, `.stats`, `.config` and friends).
    eprintln!("juicefs sync of the volume into a new one ...");
    let t = Instant::now();
    let synced = Command::new("juicefs")
        .args(["sync", "--threads=16"])
        .args([".accesslog", ".stats", ".config", ".control", ".trash"].iter().flat_map(|f| ["--exclude", f]))
        .arg(format!("{}/", src.target.display()))
        .arg(format!("{}/", dst.target.display()))
        .output()
        .map_err(io("running juicefs sync"))?;
    let sync_secs = t.elapsed().as_secs_f64();
    if !synced.status.success() {
        return Err(Error::Refused(format!(
            "juicefs sync failed: {}",
            String::from_utf8_lossy(&synced.stderr).lines().last().unwrap_or_default()
        )));
    }

    println!(
        "## snapshot: CreateSnapshot and clones (CreateVolume from the volume) through CSI, medians of {rounds}; baseline `juicefs sync` into a new volume, once"
    );
    println!("| what | seconds | against the sync |");
    println!("|---|---:|---:|");
    let row = |what: String, secs: f64| println!("| {what} | {secs:.3} | {:.0}x faster |", sync_secs / secs);
    row(format!("CreateSnapshot of {files} files of 4 KiB"), small_snap);
    row(format!("clone of {files} files of 4 KiB"), small_clone);
    row(format!("CreateSnapshot of the same plus a {data_mib} MiB file"), all_snap);
    row(format!("clone of the same plus a {data_mib} MiB file"), all_clone);
    println!("| `juicefs sync` of the volume ({files} files and {data_mib} MiB) into a new volume | {sync_secs:.1} | 1 |");
    println!(
        "(snapshot time with {data_mib} MiB added / without: {:.2}; each copy is one script its metadata server runs alone)",
        all_snap / small_snap
    );
    Ok(())
}
