//! `kelp serve`: the CSI driver itself, Identity plus the Controller and/or Node
//! service on one endpoint. Every flag has a `KELP_*` environment variable, which is
//! how the managed plugin's settings reach it.

use super::{Error, Result};
use clap::{Args, ValueEnum};
use kelp::controller::{Backends, ControllerService};
use kelp::endpoint::Endpoint;
use kelp::identity::IdentityService;
use kelp::meta::{MetaServer, MetaUrl};
use kelp::node::core::{NodeConfig, NodeCore};
use kelp::node::jfs::JuicefsConfig;
use kelp::node::paths::PathPolicy;
use kelp::node::{repair, NodeService};
use kelp::proto::csi::{
    controller_server::ControllerServer, identity_server::IdentityServer, node_server::NodeServer,
};
use kelp::seaweedfs::Filer;
use kelp::server::{self, RpcLogLayer};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::info;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Services {
    Controller,
    Node,
    Both,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args)]
pub struct ServeArgs {
    /// Where to listen: unix:///path/to.sock or tcp://host:port. A stale socket file is replaced.
    #[arg(long, env = "KELP_ENDPOINT", default_value = "unix:///run/kelp/csi.sock")]
    endpoint: String,
    /// CSI node id reported by NodeGetInfo (default: the host name).
    #[arg(long, env = "KELP_NODE_ID")]
    node_id: Option<String>,
    /// Which services to run.
    #[arg(long, env = "KELP_SERVICES", value_enum, default_value = "both")]
    services: Services,
    /// The metadata server (KeyDB/Redis) on this node: redis://[user@]host:port. The controller
    /// keeps its registry there; nodes mount every volume against it.
    #[arg(long, env = "KELP_META_URL", default_value = "redis://127.0.0.1:6379")]
    meta_url: String,
    /// This node's metadata master as other nodes reach it (default: --meta-url). A
    /// controller gives it to new volumes as their home master.
    #[arg(long, env = "KELP_META_ADVERTISE")]
    meta_advertise: Option<String>,
    /// Where this node announces itself (default: --meta-url); set it when the local
    /// master does not replicate to the controller's (e.g. a read replica).
    #[arg(long, env = "KELP_REGISTRY_URL")]
    registry_url: Option<String>,
    /// Seconds a single-node writer waits for its local master to hold the previous
    /// writer's fence before staging fails (FailedPrecondition; Swarm retries).
    #[arg(long, env = "KELP_FENCE_WAIT", default_value_t = 10)]
    fence_wait: u64,
    /// Password of the metadata server (prefer the environment variable).
    #[arg(long, env = "KELP_META_PASSWORD", hide_env_values = true)]
    meta_password: Option<String>,
    /// Logical databases to allocate volumes from (default: the server's `databases`).
    #[arg(long, env = "KELP_DATABASES")]
    databases: Option<u32>,
    /// Largest tree (files and directories) a snapshot or clone copies: the copy is
    /// one script its metadata server runs alone, about 30 us per entry, so the
    /// default (about 3 s) bounds how long every mount on that server waits.
    #[arg(long, env = "KELP_SNAPSHOT_MAX_ENTRIES", default_value_t = 100_000)]
    snapshot_max_entries: u64,
    /// Seconds between two metadata backups of each volume family (its database and
    /// registry records, as one object in its bucket): the most a lost metadata
    /// cluster costs. One controller takes them, by a lease; 0 turns them off.
    #[arg(long, env = "KELP_BACKUP_INTERVAL", default_value_t = 600)]
    backup_interval: u64,
    /// Backups kept per family: the newest of each of this many last hours...
    #[arg(long, env = "KELP_BACKUP_KEEP_HOURLY", default_value_t = 24)]
    backup_keep_hourly: usize,
    /// ...and of each of this many last days.
    #[arg(long, env = "KELP_BACKUP_KEEP_DAILY", default_value_t = 7)]
    backup_keep_daily: usize,
    /// SeaweedFS filer gRPC address, host:port (the filer's HTTP port + 10000).
    #[arg(long, env = "KELP_FILER", default_value = "127.0.0.1:18888")]
    filer: String,
    /// SeaweedFS S3 endpoint as every node reaches it; written into each volume.
    #[arg(long, env = "KELP_S3_ENDPOINT", default_value = "http://127.0.0.1:8333")]
    s3_endpoint: String,
    /// S3 access key used when CreateVolume carries no `access-key` secret.
    #[arg(long, env = "KELP_S3_ACCESS_KEY", hide_env_values = true, default_value = "")]
    s3_access_key: String,
    /// S3 secret key used when CreateVolume carries no `secret-key` secret.
    #[arg(long, env = "KELP_S3_SECRET_KEY", hide_env_values = true, default_value = "")]
    s3_secret_key: String,
    /// The juicefs binary.
    #[arg(long, env = "KELP_JUICEFS", default_value = "juicefs")]
    juicefs: PathBuf,
    /// Local cache directory; each volume gets a subdirectory.
    #[arg(long, env = "KELP_CACHE_DIR", default_value = "/var/lib/kelp/cache")]
    cache_dir: PathBuf,
    /// Local read cache per volume, MiB (a volume's `cache-size` context overrides it).
    #[arg(long, env = "KELP_CACHE_SIZE", default_value_t = 1024)]
    cache_size: u64,
    /// Node state and juicefs logs.
    #[arg(long, env = "KELP_STATE_DIR", default_value = "/var/lib/kelp")]
    state_dir: PathBuf,
    /// Most volumes this node may hold (0: no limit).
    #[arg(long, env = "KELP_MAX_VOLUMES", default_value_t = 0)]
    max_volumes: i64,
    /// Seconds a staged volume may stay unpublished before the node releases it.
    #[arg(long, env = "KELP_IDLE_RELEASE", default_value_t = 60)]
    idle_release: u64,
    /// Seconds between mount health checks.
    #[arg(long, env = "KELP_REPAIR_INTERVAL", default_value_t = 5)]
    repair_interval: u64,
    /// Seconds a volume's juicefs may leave even its own files (`.config`, served
    /// without the metadata server) unanswered before the node ends it; a new one
    /// resumes the held FUSE connection. Long enough for a daemon busy collecting
    /// garbage or uploading a burst.
    #[arg(long, env = "KELP_STUCK_DAEMON_AFTER", default_value_t = 60)]
    stuck_daemon_after: u64,
    /// Seconds a staged mount may answer nothing (its root no stat, or requests wait
    /// on its FUSE connection while juicefs completes none) while its metadata
    /// master answers, before the node ends its juicefs; a new one answers the stuck
    /// requests with EINTR on the held FUSE connection. 0: never.
    #[arg(long, env = "KELP_WEDGED_AFTER", default_value_t = 30)]
    wedged_after: u64,
    /// MiB a volume's juicefs or FUSE holder log may reach before the node rotates it
    /// (one previous file is kept, as `<log>.1`).
    #[arg(long, env = "KELP_LOG_MAX_MIB", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    log_max_mib: u64,
    /// Seconds that I/O waits through an outage of the metadata server before it
    /// fails with EIO, like an NFS hard mount (set through juicefs's --io-retries,
    /// which also paces retried uploads while SeaweedFS is unreachable).
    #[arg(long, env = "KELP_META_OUTAGE_WAIT", default_value_t = 300)]
    meta_outage_wait: u64,
    /// The largest read or write one FUSE request carries (juicefs --max-fuse-io).
    /// juicefs's own 128K: 1M read large files up to 1.2x faster, but after a
    /// 512 MiB stream untar and rm -rf ran 1.4x slower (BENCHMARKS.md, datapath).
    #[arg(long, env = "KELP_FUSE_MAX_IO", default_value = "128K")]
    fuse_max_io: String,
    /// GOMEMLIMIT of each volume's juicefs, MiB (0: the Go runtime's default). A soft
    /// limit: the daemon collects garbage harder near it and returns memory to the
    /// system, but never fails an allocation for it.
    #[arg(long, env = "KELP_JUICEFS_MEM_LIMIT", default_value_t = 0)]
    juicefs_mem_limit: u64,
    /// Seconds the mount of a single-node writer keeps attributes, names and directory
    /// listings cached in the kernel (0: juicefs's 1 s). Only for single-node writers:
    /// no other client changes their file system while they hold it. Off by default:
    /// it speeds up repeated walks, and one pair of runs showed a slower untar with it.
    #[arg(long, env = "KELP_SOLE_WRITER_CACHE", default_value_t = 0)]
    sole_writer_cache: u64,
    /// Seconds a JuiceFS mount may take to become ready.
    #[arg(long, env = "KELP_MOUNT_TIMEOUT", default_value_t = 12)]
    mount_timeout: u64,
    /// Directories below which the orchestrator's staging and target paths may be,
    /// comma-separated (Swarm's are below /data in the plugin). Paths elsewhere, with
    /// `..`, or through a symbolic link are refused.
    #[arg(long, env = "KELP_ALLOWED_ROOTS", value_delimiter = ',', default_value = "/data,/var/lib/kelp")]
    allowed_roots: Vec<PathBuf>,
    /// Where to serve Prometheus metrics (`/metrics`), host:port; empty: nowhere.
    /// The plugin serves them on 0.0.0.0:9469 (it uses the host network).
    #[arg(long, env = "KELP_METRICS_ADDR", default_value = "")]
    metrics_addr: String,
    /// Log filter, e.g. info or kelp=debug.
    #[arg(long, env = "KELP_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log format.
    #[arg(long, env = "KELP_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

pub fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
    }
}

pub async fn run(a: ServeArgs) -> Result<()> {
    let endpoint = Endpoint::parse(&a.endpoint)?;
    if let Some(bad) = a.allowed_roots.iter().find(|r| !r.is_absolute()) {
        return Err(Error::Refused(format!("--allowed-roots: {bad:?} is not an absolute path")));
    }
    let node_id = match a.node_id.clone().filter(|n| !n.is_empty()) {
        Some(n) => n,
        None => nix::unistd::gethostname()
            .map_err(|e| Error::Refused(format!("no --node-id and no host name: {e}")))?
            .to_string_lossy()
            .into_owned(),
    };
    let url = MetaUrl::parse(&a.meta_url)?.with_password(a.meta_password.as_deref());
    let meta = MetaServer::new(url.clone());
    // Empty values (as a plugin's unset settings arrive) mean "not set".
    let advertise = match a.meta_advertise.as_deref().filter(|s| !s.is_empty()) {
        Some(u) => MetaUrl::parse(u)?,
        None => url.clone(),
    };
    let registry = match a.registry_url.as_deref().filter(|s| !s.is_empty()) {
        Some(u) => MetaServer::new(MetaUrl::parse(u)?.with_password(a.meta_password.as_deref())),
        None => meta.clone(),
    };
    let controller = a.services != Services::Node;
    let node = a.services != Services::Controller;
    let filer = if controller { Some(Filer::new(&a.filer)?) } else { None };

    let identity = IdentityService::new(controller, meta.clone(), filer.clone());
    let mut router = tonic::transport::Server::builder()
        // A client that vanished without closing (a killed CO, a dropped TCP peer)
        // is noticed and its connection closed instead of being kept forever.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .layer(RpcLogLayer)
        .add_service(IdentityServer::new(identity));
    let mut sources = Vec::new();
    if let Some(filer) = filer {
        let backends = Backends {
            meta: meta.clone(),
            filer,
            s3_endpoint: a.s3_endpoint.clone(),
            s3_access_key: a.s3_access_key.clone(),
            s3_secret_key: a.s3_secret_key.clone(),
            databases: a.databases,
            home_meta: advertise.public_url(),
            snapshot_max_entries: a.snapshot_max_entries,
        };
        tokio::spawn(kelp::controller::generations::watch(backends.clone()));
        sources.push(kelp::controller::generations::metrics_source(backends.clone()));
        let schedule = kelp::controller::backup::Schedule {
            interval: a.backup_interval,
            keep: kelp::backup::policy::Retention {
                hourly: a.backup_keep_hourly,
                daily: a.backup_keep_daily,
            },
            owner: node_id.clone(),
        };
        tokio::spawn(kelp::controller::backup::run(backends.clone(), schedule));
        sources.push(kelp::controller::backup::metrics_source(backends.clone(), a.backup_interval));
        router = router.add_service(ControllerServer::new(ControllerService::new(backends)));
    }
    if node {
        let cfg = NodeConfig {
            node_id: node_id.clone(),
            max_volumes: a.max_volumes,
            juicefs: JuicefsConfig {
                binary: a.juicefs.clone(),
                cache_dir: a.cache_dir.clone(),
                cache_size_mib: a.cache_size,
                log_dir: a.state_dir.join("logs"),
                ready_timeout: Duration::from_secs(a.mount_timeout),
                outage_wait: Duration::from_secs(a.meta_outage_wait),
                max_fuse_io: a.fuse_max_io.clone(),
                go_mem_limit_mib: (a.juicefs_mem_limit > 0).then_some(a.juicefs_mem_limit),
                sole_writer_cache: Duration::from_secs(a.sole_writer_cache),
            },
            state_dir: a.state_dir.clone(),
            idle_release: Duration::from_secs(a.idle_release),
            repair_interval: Duration::from_secs(a.repair_interval.max(1)),
            stuck_daemon_after: Duration::from_secs(a.stuck_daemon_after.max(1)),
            wedged_after: (a.wedged_after > 0).then(|| Duration::from_secs(a.wedged_after)),
            fence_wait: Duration::from_secs(a.fence_wait),
            advertise: advertise.public_url(),
            paths: PathPolicy::new(a.allowed_roots.clone()),
            log_cap: a.log_max_mib << 20,
            backup_interval: a.backup_interval,
        };
        let core =
            Arc::new(NodeCore::new(cfg, meta.clone(), registry).map_err(super::io("reading node state"))?);
        // Announce the node, re-adopt, repair or clean what a previous run left, and
        // keep doing so; in the background, so the socket listens at once.
        tokio::spawn(repair::run(core.clone()));
        // Renew this node's lease and fence leased writers when it lapses.
        tokio::spawn(kelp::node::lease::run(core.clone()));
        sources.push(core.metrics_source());
        router = router.add_service(NodeServer::new(NodeService::new(core)));
    }
    if !a.metrics_addr.is_empty() {
        let addr: std::net::SocketAddr = a.metrics_addr.parse().map_err(|e| {
            super::Error::Refused(format!("--metrics-addr {:?} is not host:port ({e})", a.metrics_addr))
        })?;
        // Bound here, so a taken port fails the start instead of going unnoticed.
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(super::io(format!("serving metrics on {addr}")))?;
        tokio::spawn(async move {
            if let Err(e) = kelp::metrics::serve(listener, sources).await {
                tracing::error!(error = %e, "the metrics endpoint stopped");
            }
        });
    }
    info!(node_id, meta = %url, controller, node, version = env!("CARGO_PKG_VERSION"), "kelp starting");
    server::serve(router, &endpoint).await.map_err(super::io(format!("serving {endpoint}")))
}
