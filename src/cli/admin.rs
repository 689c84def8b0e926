//! `kelp admin`: read kelp's registry straight from a metadata server, for operators.
//! Works while no driver runs (e.g. to see who holds a volume after a node died).

use super::Result;
use clap::{Args, Subcommand};
use kelp::meta::{MetaServer, MetaUrl, VolumeState};
use kelp::seaweedfs::Filer;
use kelp::volume::{Spec, BUCKET_PREFIX};

pub use super::backup::BackupArgs;

#[derive(Args)]
pub struct AdminArgs {
    /// The metadata server holding the registry (the controller's --meta-url).
    #[arg(long, env = "KELP_META_URL", default_value = "redis://127.0.0.1:6379")]
    meta_url: String,
    #[arg(long, env = "KELP_META_PASSWORD", hide_env_values = true)]
    meta_password: Option<String>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Every volume: id, state, home master, writer node, epoch, fence and the
    /// database of its live metadata generation.
    Volumes {
        /// Also usage (bytes and files against capacity) and where it is mounted now
        /// (the live JuiceFS clients: host and mount point).
        #[arg(long)]
        wide: bool,
        /// One JSON object per volume, one per line, with every field.
        #[arg(long)]
        json: bool,
        /// The controllers' --backup-interval: a family whose last backup is older
        /// than twice this is shown STALE.
        #[arg(long, env = "KELP_BACKUP_INTERVAL", default_value_t = 600)]
        backup_interval: u64,
    },
    /// Metadata generations retired by takeovers: how many keys of files each holds
    /// that were written after its takeover, and which files, as the controller last
    /// counted them on the old holder's own master.
    Generations,
    /// Empties a retired generation and frees its database, once its files are
    /// recovered or known to be unwanted.
    DropGeneration {
        /// The volume's name (its fsName, as `kelp admin volumes` shows).
        volume: String,
        /// The retired generation's database.
        db: u32,
    },
    /// Every node that announced itself: its master, when it was last heard from,
    /// when it last renewed its lease at this server, and what it found wrong with its
    /// master's configuration.
    Nodes,
    /// Metadata backups: list them, take one now, or restore from them
    /// (docs/operations.md, "Metadata backups").
    Backup(BackupArgs),
    /// Buckets kelp made (`kelp-*`) that no registry entry owns, e.g. after
    /// `docker volume rm -f` and a manual cleanup; `--delete` removes them with their
    /// data. Not automatic: several kelp clusters may share one filer, and a bucket is
    /// an orphan only for the registry that is asked.
    Orphans {
        /// SeaweedFS filer gRPC address, host:port.
        #[arg(long, env = "KELP_FILER", default_value = "127.0.0.1:18888")]
        filer: String,
        /// Delete the orphan buckets and everything in them.
        #[arg(long)]
        delete: bool,
    },
}

pub async fn run(a: AdminArgs) -> Result<()> {
    let meta = MetaServer::new(MetaUrl::parse(&a.meta_url)?.with_password(a.meta_password.as_deref()));
    match a.command {
        AdminCommand::Volumes { wide, json, backup_interval } => {
            volumes(&meta, wide, json, backup_interval).await
        }
        AdminCommand::Nodes => nodes(&meta).await,
        AdminCommand::Generations => generations(&meta).await,
        AdminCommand::DropGeneration { volume, db } => drop_generation(&meta, &volume, db).await,
        AdminCommand::Backup(b) => super::backup::run(&meta, b).await,
        AdminCommand::Orphans { filer, delete } => orphans(&meta, &Filer::new(&filer)?, delete).await,
    }
}

async fn orphans(meta: &MetaServer, filer: &Filer, delete: bool) -> Result<()> {
    let mut found = 0;
    for bucket in filer.buckets_with_prefix(BUCKET_PREFIX).await? {
        let fs_name = &bucket[BUCKET_PREFIX.len()..];
        if meta.volume(fs_name).await?.is_some() {
            continue;
        }
        found += 1;
        if delete {
            filer.delete_bucket(&bucket).await?;
            println!("{bucket}: deleted");
        } else {
            println!("{bucket}: no registry entry (rerun with --delete to remove it and its data)");
        }
    }
    if found == 0 {
        println!("no orphan buckets");
    }
    Ok(())
}

async fn nodes(meta: &MetaServer) -> Result<()> {
    println!("{:<20} {:<30} {:>9} {:>10}  WARNINGS", "NODE", "MASTER", "SEEN", "LEASE");
    for n in meta.nodes().await? {
        let seen = format!("{} s ago", kelp::unix_now() - n.updated_unix);
        // Renewed at this very server (the controller's); "elsewhere" otherwise.
        let lease = match meta.lease(&n.node_id, false).await? {
            kelp::pinning::Lease::SilentFor(ms) => format!("{:.1} s ago", ms as f64 / 1000.0),
            kelp::pinning::Lease::NotHere => "elsewhere".into(),
        };
        let first = n.warnings.first().map_or("none", String::as_str);
        println!("{:<20} {:<30} {seen:>9} {lease:>10}  {first}", n.node_id, n.local_meta);
        for w in n.warnings.iter().skip(1) {
            println!("{:<20} {:<30} {:>9} {:>10}  {w}", "", "", "", "");
        }
    }
    Ok(())
}

async fn generations(meta: &MetaServer) -> Result<()> {
    println!(
        "{:<28} {:>6} {:>5} {:<14} {:<14} {:>12} {:>9} {:>6}  COUNTED ON",
        "VOLUME", "DB", "EPOCH", "FROM", "TO", "TAKEN OVER", "TAIL KEYS", "OTHER"
    );
    let mut any = false;
    for fs_name in meta.volumes_with_generations().await? {
        for (db, g) in meta.generations(&fs_name).await? {
            any = true;
            let or_dash = |n: Option<u64>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
            let ago = format!("{} s ago", kelp::unix_now() - g.at_unix);
            let on = match (&g.counted_on, g.settled) {
                (Some(m), true) => m.clone(),
                (Some(m), false) => format!("{m} (counting)"),
                (None, true) => "not comparable (retired by an older kelp)".into(),
                (None, false) => "not yet: the old holder's master was not readable".into(),
            };
            println!(
                "{fs_name:<28} {db:>6} {:>5} {:<14} {:<14} {ago:>12} {:>9} {:>6}  {on}",
                g.epoch,
                g.from_node,
                g.to_node,
                or_dash(g.tail_keys),
                or_dash(g.tail_other)
            );
            for f in &g.tail_files {
                let path = f.path.as_deref().unwrap_or("(no path left in the retired generation)");
                println!("    inode {:<12} {:>3} keys  {path}", f.inode, f.keys);
            }
        }
    }
    if any {
        println!(
            "TAIL KEYS: keys of files (attributes, entries, chunks, xattrs) whose content on the old holder's master differs from when the volume was taken over; OTHER: counters, usage and sessions, which hold no file data."
        );
    }
    Ok(())
}

async fn drop_generation(meta: &MetaServer, fs_name: &str, db: u32) -> Result<()> {
    if !meta.generations(fs_name).await?.iter().any(|(d, _)| *d == db) {
        return Err(super::Error::Refused(format!(
            "volume {fs_name} has no retired generation in database {db} (see `kelp admin generations`)"
        )));
    }
    meta.drop_generation(fs_name, db).await?;
    println!("{fs_name}: retired generation in database {db} emptied and freed");
    Ok(())
}

/// One volume as `kelp admin volumes` shows it.
#[derive(serde::Serialize)]
struct VolumeRow {
    name: String,
    id: String,
    state: String,
    home: String,
    writer: Option<String>,
    epoch: Option<u64>,
    released: Option<bool>,
    fence: u64,
    db: u32,
    used_bytes: Option<u64>,
    capacity_bytes: Option<u64>,
    files: Option<u64>,
    mounted_on: Option<Vec<String>>,
    /// The family's last good metadata backup (clones share their founder's).
    last_backup_unix: Option<i64>,
    backup_stale: bool,
}

/// The volumes' last backups and the schedule, for the BACKUP column.
struct Backups {
    last: std::collections::HashMap<String, i64>,
    interval: u64,
}

async fn volume_row(
    meta: &MetaServer,
    fs_name: &str,
    wide: bool,
    backups: &Backups,
) -> Result<Option<VolumeRow>> {
    let Some(rec) = meta.volume(fs_name).await? else { return Ok(None) };
    let spec: Option<Spec> = serde_json::from_str(&rec.spec).ok();
    let (name, id, home) = match &spec {
        Some(s) => (s.name.clone(), s.id(rec.db, fs_name).to_string(), s.home_meta.clone()),
        None => ("?".into(), format!("db {}", rec.db), String::new()),
    };
    let holder = meta.holder(fs_name).await?;
    let db = holder.as_ref().map(|h| h.db).filter(|&d| d != 0).unwrap_or(rec.db);
    let ready = rec.state == VolumeState::Ready;
    let fence = if ready { meta.fence(db).await? } else { 0 };
    let mut row = VolumeRow {
        name,
        id,
        state: format!("{:?}", rec.state).to_lowercase(),
        home,
        writer: holder.as_ref().map(|h| h.node.clone()),
        epoch: holder.as_ref().map(|h| h.epoch),
        released: holder.as_ref().map(|h| h.released),
        fence,
        db,
        used_bytes: None,
        capacity_bytes: None,
        files: None,
        mounted_on: None,
        last_backup_unix: None,
        backup_stale: false,
    };
    let family = spec.as_ref().and_then(|s| s.family.clone()).unwrap_or_else(|| fs_name.to_string());
    row.last_backup_unix = backups.last.get(&family).copied();
    row.backup_stale =
        ready && kelp::backup::policy::stale(row.last_backup_unix, kelp::unix_now(), backups.interval);
    if wide && ready {
        let vid = spec.as_ref().map(|s| s.id(rec.db, fs_name));
        let tree = vid.as_ref().and_then(|v| v.tree_path());
        let usage =
            kelp::juicefs::volume_usage(meta, db, tree.as_ref().map(|p| &p[..])).await.map_err(meta_error)?;
        row.used_bytes = Some(usage.used_bytes);
        row.files = Some(usage.files);
        row.capacity_bytes = Some(usage.capacity_bytes);
        row.mounted_on = Some(kelp::juicefs::session_hosts(meta, db).await.map_err(meta_error)?);
    }
    Ok(Some(row))
}

fn meta_error(e: kelp::juicefs::Error) -> super::Error {
    super::Error::Refused(e.to_string())
}

fn gib(b: Option<u64>) -> String {
    b.map(|b| format!("{:.1}G", b as f64 / (1u64 << 30) as f64)).unwrap_or_else(|| "-".into())
}

async fn volumes(meta: &MetaServer, wide: bool, json: bool, backup_interval: u64) -> Result<()> {
    let backups = Backups {
        last: meta.last_backups().await?.into_iter().map(|(fs, r)| (fs, r.taken_unix)).collect(),
        interval: backup_interval,
    };
    if !json {
        print!(
            "{:<28} {:<44} {:<9} {:<26} {:<14} {:>5} {:<8} {:>5} {:>4} {:<16}",
            "NAME", "ID", "STATE", "HOME", "WRITER", "EPOCH", "RELEASED", "FENCE", "DB", "BACKUP"
        );
        if wide {
            print!(" {:>8} {:>8} {:>8}  MOUNTED ON", "USED", "CAPACITY", "FILES");
        }
        println!();
    }
    let mut after: Option<String> = None;
    loop {
        let names = meta.volume_names_after(after.as_deref(), 200).await?;
        for fs_name in &names {
            let Some(r) = volume_row(meta, fs_name, wide || json, &backups).await? else { continue };
            if json {
                println!("{}", serde_json::to_string(&r).expect("row serialises"));
                continue;
            }
            let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            let backup = match r.last_backup_unix {
                Some(t) => format!("{} s ago", kelp::unix_now() - t),
                None => "never".into(),
            };
            let backup = if r.backup_stale { format!("{backup} STALE") } else { backup };
            print!(
                "{:<28} {:<44} {:<9} {:<26} {:<14} {:>5} {:<8} {:>5} {:>4} {backup:<16}",
                r.name,
                r.id,
                r.state,
                r.home,
                dash(r.writer.clone()),
                dash(r.epoch.map(|e| e.to_string())),
                dash(r.released.map(|x| if x { "yes" } else { "no" }.to_string())),
                r.fence,
                r.db
            );
            if wide {
                let files = dash(r.files.map(|f| f.to_string()));
                let on = r.mounted_on.as_ref().map(|m| m.join(", ")).filter(|m| !m.is_empty());
                print!(" {:>8} {:>8} {files:>8}  {}", gib(r.used_bytes), gib(r.capacity_bytes), dash(on));
            }
            println!();
        }
        if names.len() < 200 {
            return Ok(());
        }
        after = names.last().cloned();
    }
}
