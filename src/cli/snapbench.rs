//! `kelp bench snapshot`: what the point-in-time tree copy under snapshots and clones
//! costs (docs/snapshots.md), against what a user does today to keep a copy of a
//! volume: `juicefs sync` of it into a new volume. The copy is one script on the
//! metadata server, so its time is also how long that server answers nobody else.
//!
//! One volume is published as Swarm would, filled with small files in directories,
//! copied; then a large file is added and it is copied again, to show that the copy's
//! time follows the number of files, not the bytes. The baseline syncs the same
//! volume into a second one through both mounts.

use super::bench::{publish_one, release_one, BenchArgs, Published};
use super::{Error, Result};
use kelp::meta::{MetaServer, MetaUrl};
use kelp::proto::csi::{controller_client::ControllerClient, node_client::NodeClient, DeleteVolumeRequest};
use kelp::volume::VolumeId;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;
use tonic::transport::Channel;

/// Entries a snapshot may hold in this benchmark: above any volume it makes.
const MAX_ENTRIES: u64 = 10_000_000;

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

/// `rounds` copies of the tree at `tree` into `/.kelp/s/<label>-<round>`: the entries
/// copied and the median seconds.
async fn copies(meta: &MetaServer, db: u32, tree: &[&str], label: &str, rounds: usize) -> Result<(u64, f64)> {
    let mut secs = Vec::new();
    let mut entries = 0;
    for r in 0..rounds {
        let name = format!("{label}-{r}");
        let t = Instant::now();
        entries = meta.copy_tree(db, tree, &[".kelp", "s", &name], MAX_ENTRIES).await?.entries;
        secs.push(t.elapsed().as_secs_f64());
    }
    Ok((entries, super::datapath::median(&secs)))
}

pub async fn run(a: &BenchArgs, ch: Channel, files: usize, data_mib: usize, rounds: usize) -> Result<()> {
    let mut ctl = ControllerClient::new(ch.clone());
    let mut node = NodeClient::new(ch);
    let password = std::env::var("KELP_META_PASSWORD").ok();
    let meta = MetaServer::new(MetaUrl::parse(&a.meta_url)?.with_password(password.as_deref()));
    let src = publish_one(a, &mut ctl, &mut node, "bench-snap", &[]).await?;
    let dst = publish_one(a, &mut ctl, &mut node, "bench-snap-copy", &[]).await;
    let measured = match &dst {
        Ok(dst) => measure(&meta, &src, dst, files, data_mib, rounds).await,
        Err(_) => Ok(()),
    };
    // Both volumes go, whatever the measurement did.
    for p in [Ok(src), dst].into_iter().flatten() {
        let id = p.id.clone();
        release_one(&mut ctl, &mut node, p).await?;
        ctl.delete_volume(DeleteVolumeRequest { volume_id: id, secrets: Default::default() }).await?;
    }
    measured
}

async fn measure(
    meta: &MetaServer,
    src: &Published,
    dst: &Published,
    files: usize,
    data_mib: usize,
    rounds: usize,
) -> Result<()> {
    let id =
        VolumeId::parse(&src.id).ok_or_else(|| Error::Refused(format!("unexpected volume id {}", src.id)))?;
    let tree = id.tree_path().ok_or_else(|| Error::Refused("the volume is not tree-layout".into()))?;
    let io = |what: &'static str| move |e: std::io::Error| Error::Refused(format!("{what}: {e}"));
    small_files(&src.target, files).map_err(io("filling the volume"))?;

    let (small_entries, small_secs) = copies(meta, id.db, &tree, "small", rounds).await?;
    large_file(&src.target.join("large.bin"), data_mib).map_err(io("writing the large file"))?;
    let (all_entries, all_secs) = copies(meta, id.db, &tree, "large", rounds).await?;

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
        "## snapshot: the tree copy, medians of {rounds}; baseline `juicefs sync` into a new volume, once"
    );
    println!("| what | entries | seconds | against the sync |");
    println!("|---|---:|---:|---:|");
    println!(
        "| copy of {files} files of 4 KiB | {small_entries} | {small_secs:.3} | {:.0}x faster |",
        sync_secs / small_secs
    );
    println!(
        "| copy of the same plus a {data_mib} MiB file | {all_entries} | {all_secs:.3} | {:.0}x faster |",
        sync_secs / all_secs
    );
    println!("| `juicefs sync` of the volume ({files} files and {data_mib} MiB) into a new volume | - | {sync_secs:.1} | 1 |");
    println!(
        "(the copy is one script: the metadata server answers nobody else for its duration; {:.1} us per entry)",
        all_secs * 1e6 / all_entries.max(1) as f64
    );

    Ok(())
}
