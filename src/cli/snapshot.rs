//! `kelp snapshot` and `kelp restore`: the snapshot handles Swarm does not have.
//! `docker` has no snapshot command, so these talk CSI to the plugin's controller
//! socket on a manager (found through `docker plugin inspect`), and `kelp restore`
//! makes the new volume through `docker volume create`, because Swarm only knows
//! cluster volumes made through its own API.

use super::{docker, Error, Result};
use clap::{Args, Subcommand};
use kelp::endpoint::connect;
use kelp::proto::csi::{
    controller_client::ControllerClient, CreateSnapshotRequest, DeleteSnapshotRequest, ListSnapshotsRequest,
};

#[derive(Args)]
pub struct Target {
    /// The controller's endpoint (unix:///path or tcp://host:port); default: the
    /// socket of the managed plugin `--plugin` on this manager.
    #[arg(long, env = "KELP_ENDPOINT")]
    endpoint: Option<String>,
    /// The managed plugin whose controller to use.
    #[arg(long, default_value = "kelp:latest")]
    plugin: String,
}

#[derive(Args)]
pub struct SnapshotArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    command: SnapshotCommand,
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// CreateSnapshot of VOLUME (a Swarm volume name or a kelp volume id); prints the
    /// snapshot id. The same NAME and VOLUME again return the same snapshot.
    Create { name: String, volume: String },
    /// Every snapshot: id, source volume id, creation time (UTC), size.
    List {
        /// Only the snapshots of this volume (Swarm name or kelp volume id).
        #[arg(long)]
        volume: Option<String>,
    },
    /// DeleteSnapshot. Volumes restored from it are not affected.
    Delete { snapshot_id: String },
}

#[derive(Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    target: Target,
    /// The snapshot id (`kelp snapshot list`).
    snapshot_id: String,
    /// The new Swarm volume's name.
    name: String,
    /// Print the `docker volume create` command without running it.
    #[arg(long)]
    dry_run: bool,
}

impl Target {
    async fn controller(&self) -> Result<ControllerClient<tonic::transport::Channel>> {
        let endpoint = match &self.endpoint {
            Some(e) => e.clone(),
            None => {
                let id = docker(&["plugin", "inspect", "--format", "{{.ID}}", &self.plugin])?;
                format!("unix:///run/docker/plugins/{}/kelp.sock", id.trim())
            }
        };
        Ok(ControllerClient::new(connect(&endpoint).await?))
    }
}

/// A kelp volume id as given, or the CSI volume id Swarm keeps for a volume name.
fn volume_id(volume: &str) -> Result<String> {
    if kelp::volume::VolumeId::parse(volume).is_some() {
        return Ok(volume.to_string());
    }
    let id = docker(&["volume", "inspect", "--format", "{{.ClusterVolume.Info.VolumeID}}", volume])?;
    match id.trim() {
        "" | "<no value>" => Err(Error::Refused(format!(
            "Swarm volume {volume:?} has no CSI volume yet (it is created when a task first uses it); use the kelp volume id"
        ))),
        id => Ok(id.to_string()),
    }
}

pub async fn run(a: SnapshotArgs) -> Result<()> {
    let mut ctl = a.target.controller().await?;
    match a.command {
        SnapshotCommand::Create { name, volume } => {
            let req =
                CreateSnapshotRequest { source_volume_id: volume_id(&volume)?, name, ..Default::default() };
            let snap = ctl.create_snapshot(req).await?.into_inner().snapshot.unwrap_or_default();
            println!("{}", snap.snapshot_id);
        }
        SnapshotCommand::List { volume } => {
            let source = volume.as_deref().map(volume_id).transpose()?.unwrap_or_default();
            let mut token = String::new();
            loop {
                let req = ListSnapshotsRequest {
                    max_entries: 100,
                    starting_token: token,
                    source_volume_id: source.clone(),
                    ..Default::default()
                };
                let page = ctl.list_snapshots(req).await?.into_inner();
                for s in page.entries.into_iter().filter_map(|e| e.snapshot) {
                    let at = s.creation_time.map(|t| t.seconds).unwrap_or(0);
                    println!("{}\t{}\t{}\t{}", s.snapshot_id, s.source_volume_id, utc(at), s.size_bytes);
                }
                if page.next_token.is_empty() {
                    break;
                }
                token = page.next_token;
            }
        }
        SnapshotCommand::Delete { snapshot_id } => {
            ctl.delete_snapshot(DeleteSnapshotRequest { snapshot_id, ..Default::default() }).await?;
        }
    }
    Ok(())
}

/// Makes the new Swarm volume `name` from the snapshot, with the access mode, group,
/// capacity and options of the snapshot's source volume when Swarm still has it.
pub async fn restore(a: RestoreArgs) -> Result<()> {
    let mut ctl = a.target.controller().await?;
    let req = ListSnapshotsRequest { snapshot_id: a.snapshot_id.clone(), ..Default::default() };
    let snap = ctl.list_snapshots(req).await?.into_inner().entries.into_iter().find_map(|e| e.snapshot);
    let snap = snap.ok_or_else(|| {
        Error::Refused(format!("no snapshot has id {:?} (kelp snapshot list)", a.snapshot_id))
    })?;
    let source = swarm_volume_of(&snap.source_volume_id)?;
    if source.is_none() {
        eprintln!(
            "kelp: Swarm no longer has the snapshot's source volume; the new one gets driver {} and single-node access (edit the command to change that)",
            a.target.plugin
        );
    }
    let args = create_args(source.as_ref(), &a.target.plugin, &a.snapshot_id, &a.name);
    println!("docker {}", args.join(" "));
    if !a.dry_run {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        print!("{}", docker(&refs)?);
    }
    Ok(())
}

/// The `docker volume inspect` record of the Swarm volume whose CSI id is `id`.
fn swarm_volume_of(id: &str) -> Result<Option<serde_json::Value>> {
    // `docker volume ls --cluster` ignores --format (Docker 28.5): the table it
    // prints has the name first, under a header.
    let table = docker(&["volume", "ls", "--cluster"])?;
    let names =
        table.lines().filter(|l| !l.starts_with("VOLUME NAME")).filter_map(|l| l.split_whitespace().next());
    for name in names {
        let json = docker(&["volume", "inspect", name])?;
        let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        let v = v.get(0).cloned().unwrap_or_default();
        if v["ClusterVolume"]["Info"]["VolumeID"] == id {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// `docker volume create` arguments for a restore with `source`'s settings.
fn create_args(source: Option<&serde_json::Value>, plugin: &str, snapshot: &str, name: &str) -> Vec<String> {
    let null = serde_json::Value::Null;
    let v = source.unwrap_or(&null);
    let spec = &v["ClusterVolume"]["Spec"];
    let text = |x: &serde_json::Value, default: &str| {
        x.as_str().filter(|s| !s.is_empty()).unwrap_or(default).to_string()
    };
    let mut args: Vec<String> = vec![
        "volume".into(),
        "create".into(),
        "--driver".into(),
        text(&v["Driver"], plugin),
        "--type".into(),
        "mount".into(),
        "--scope".into(),
        text(&spec["AccessMode"]["Scope"], "single"),
        "--sharing".into(),
        text(&spec["AccessMode"]["Sharing"], "none"),
    ];
    if let Some(group) = spec["Group"].as_str().filter(|g| !g.is_empty()) {
        args.extend(["--group".into(), group.into()]);
    }
    for (flag, key) in [("--required-bytes", "RequiredBytes"), ("--limit-bytes", "LimitBytes")] {
        if let Some(n) = spec["CapacityRange"][key].as_u64().filter(|&n| n > 0) {
            args.extend([flag.into(), n.to_string()]);
        }
    }
    if let Some(opts) = v["Options"].as_object() {
        for (k, val) in opts {
            if k != kelp::controller::CLONE_OF && k != kelp::controller::FROM_SNAPSHOT {
                args.extend(["--opt".into(), format!("{k}={}", val.as_str().unwrap_or_default())]);
            }
        }
    }
    args.extend(["--opt".into(), format!("{}={snapshot}", kelp::controller::FROM_SNAPSHOT), name.into()]);
    args
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_796_000_000), "2026-11-30T00:53:20Z");
    }

    #[test]
    fn a_restore_keeps_the_source_volumes_settings() {
        let v: serde_json::Value = serde_json::json!({
            "Driver": "kelp:latest",
            "Options": {"replication": "010", "clone-of": "old"},
            "ClusterVolume": {"Spec": {"Group": "db", "AccessMode": {"Scope": "single", "Sharing": "onewriter"},
                "CapacityRange": {"RequiredBytes": 1073741824, "LimitBytes": 0}}}
        });
        let args =
            create_args(Some(&v), "kelp:latest", "kelp-snap1:1:0a1b2c3d:data:11223344", "data-restored");
        assert_eq!(
            args.join(" "),
            "volume create --driver kelp:latest --type mount --scope single --sharing onewriter --group db \
             --required-bytes 1073741824 --opt replication=010 --opt from-snapshot=kelp-snap1:1:0a1b2c3d:data:11223344 data-restored"
        );
        let bare = create_args(None, "kelp:latest", "s", "n").join(" ");
        assert_eq!(bare, "volume create --driver kelp:latest --type mount --scope single --sharing none --opt from-snapshot=s n");
    }
}
