//! `kelp admin backup list|now|restore`: the operator's side of metadata backups.
//! Talks to the metadata server and the filer directly, so it works with every kelp
//! driver down and the registry wiped.

use super::{Error, Result};
use clap::{Args, Subcommand};
use kelp::backup::policy::{self, Retention};
use kelp::backup::{restore, take};
use kelp::meta::MetaServer;
use kelp::seaweedfs::Filer;
use kelp::volume::BUCKET_PREFIX;

#[derive(Args)]
pub struct BackupArgs {
    /// SeaweedFS filer gRPC address, host:port.
    #[arg(long, env = "KELP_FILER", default_value = "127.0.0.1:18888")]
    filer: String,
    #[command(subcommand)]
    command: BackupCommand,
}

#[derive(Subcommand)]
enum BackupCommand {
    /// The backups of one volume family, or of every bucket kelp made.
    List {
        /// A volume's fsName (as `kelp admin volumes` shows it); all when left out.
        volume: Option<String>,
    },
    /// Takes a backup of the named families now (every live one when none is named).
    Now {
        volumes: Vec<String>,
        #[arg(long, env = "KELP_BACKUP_KEEP_HOURLY", default_value_t = 24)]
        keep_hourly: usize,
        #[arg(long, env = "KELP_BACKUP_KEEP_DAILY", default_value_t = 7)]
        keep_daily: usize,
    },
    /// Loads a family's newest backup (or the one `--at` names) into its database and
    /// writes its registry records back, so the volume ids Swarm holds work again.
    /// Stop the tasks using it first. Prints what was restored and what was lost.
    Restore {
        /// Volume fsNames to restore; with --all, every bucket kelp made that holds
        /// a backup (after the whole metadata cluster was lost).
        volumes: Vec<String>,
        #[arg(long)]
        all: bool,
        /// A backup's object name or time (`kelp admin backup list`); the newest when
        /// left out. Only with one volume.
        #[arg(long)]
        at: Option<String>,
        /// Restore over a database that still holds a file system (losing every
        /// write made since the backup).
        #[arg(long)]
        force: bool,
        /// Restore as a new volume of this name instead, beside the running original
        /// (a clone from the past, in the same family); one volume only.
        #[arg(long = "as", value_name = "NAME")]
        as_new: Option<String>,
        /// With --as: the largest tree it copies (the copy is one script its master
        /// runs alone, as a snapshot's; see --snapshot-max-entries).
        #[arg(long, env = "KELP_SNAPSHOT_MAX_ENTRIES", default_value_t = 100_000)]
        max_entries: u64,
    },
}

pub async fn run(meta: &MetaServer, a: BackupArgs) -> Result<()> {
    let filer = Filer::new(&a.filer)?;
    match a.command {
        BackupCommand::List { volume } => list(&filer, volume).await,
        BackupCommand::Now { volumes, keep_hourly, keep_daily } => {
            now(meta, &filer, volumes, Retention { hourly: keep_hourly, daily: keep_daily }).await
        }
        BackupCommand::Restore { volumes, all, at, force, as_new: Some(name), max_entries } => {
            let [fs] = &volumes[..] else {
                return Err(Error::Refused("--as restores one volume as a new one; name exactly one".into()));
            };
            if all || force {
                return Err(Error::Refused("--as takes neither --all nor --force".into()));
            }
            let c = kelp::backup::clone::restore_as_new(meta, &filer, fs, at.as_deref(), &name, max_entries)
                .await
                .map_err(backup_error)?;
            println!(
                "{fs}: restored from {} taken {} as the new volume {name} ({} entries): {}",
                c.object,
                when(c.taken_unix),
                c.entries,
                c.id
            );
            println!(
                "on a Swarm: docker volume create -d kelp:latest --type mount --opt clone-of={name} <volume>"
            );
            Ok(())
        }
        BackupCommand::Restore { volumes, all, at, force, as_new: None, .. } => {
            if all != volumes.is_empty() {
                return Err(Error::Refused("name the volumes to restore, or give --all".into()));
            }
            if at.is_some() && volumes.len() != 1 {
                return Err(Error::Refused("--at names a backup of one volume; name exactly one".into()));
            }
            let volumes = if all { families_with_backups(&filer).await? } else { volumes };
            restore_all(meta, &filer, &volumes, at.as_deref(), force).await
        }
    }
}

fn backup_error(e: kelp::backup::Error) -> Error {
    match e {
        kelp::backup::Error::Meta(m) => m.into(),
        kelp::backup::Error::Filer(f) => f.into(),
        e => Error::Refused(e.to_string()),
    }
}

/// Every family whose bucket holds a backup: found in the filer, so it works when the
/// registry is gone.
async fn families_with_backups(filer: &Filer) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for bucket in filer.buckets_with_prefix(kelp::volume::BUCKET_PREFIX).await? {
        let fs = bucket[BUCKET_PREFIX.len()..].to_string();
        if !take::list(filer, &fs).await.map_err(backup_error)?.is_empty() {
            out.push(fs);
        }
    }
    Ok(out)
}

fn when(unix: i64) -> String {
    let name = policy::object_name(unix);
    let stamp = name.trim_end_matches(".kbak");
    format!("{stamp} ({} s ago)", kelp::unix_now() - unix)
}

async fn list(filer: &Filer, volume: Option<String>) -> Result<()> {
    let families = match volume {
        Some(v) => vec![v],
        None => families_with_backups(filer).await?,
    };
    println!("{:<28} {:<40} {:>12}  TAKEN (UTC)", "VOLUME", "OBJECT", "BYTES");
    for fs in families {
        for (object, t, bytes) in take::list(filer, &fs).await.map_err(backup_error)? {
            println!("{fs:<28} {object:<40} {bytes:>12}  {}", when(t));
        }
    }
    Ok(())
}

async fn now(meta: &MetaServer, filer: &Filer, volumes: Vec<String>, keep: Retention) -> Result<()> {
    let volumes = if volumes.is_empty() { kelp::controller::backup::families(meta).await? } else { volumes };
    for fs in volumes {
        let t = take::take(meta, filer, &fs, keep).await.map_err(backup_error)?;
        println!(
            "{fs}: {} ({} bytes, {} keys; the metadata server paused {} ms)",
            t.object, t.record.bytes, t.record.keys, t.record.stall_ms
        );
    }
    Ok(())
}

async fn restore_all(
    meta: &MetaServer,
    filer: &Filer,
    volumes: &[String],
    at: Option<&str>,
    force: bool,
) -> Result<()> {
    let mut failed = Vec::new();
    for fs in volumes {
        match restore::restore(meta, filer, fs, at, force).await {
            Ok(r) => {
                println!(
                    "{fs}: restored from {} taken {} into database {}: volumes [{}], {} inodes, {} keys",
                    r.object,
                    when(r.taken_unix),
                    r.db,
                    r.volumes.join(", "),
                    r.inodes,
                    r.keys
                );
                if r.lost_objects > 0 {
                    println!(
                        "{fs}: LOST: {} data objects ({} bytes) were written after the backup; the files and changes they held are not in the restored volume (the objects stay in bucket {BUCKET_PREFIX}{fs})",
                        r.lost_objects, r.lost_bytes
                    );
                } else {
                    println!("{fs}: nothing written after the backup was found in the bucket");
                }
            }
            Err(e) => {
                eprintln!("{fs}: NOT restored: {e}");
                failed.push(fs.clone());
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Refused(format!(
            "{} of {} volumes were not restored: {}",
            failed.len(),
            volumes.len(),
            failed.join(", ")
        )))
    }
}
