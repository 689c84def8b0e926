//! The command line: the driver and servers to measure against, and which
//! measurement to run.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "kelp-bench",
    version,
    about = "Measures a running kelp driver against its baselines (see scripts/bench.sh)"
)]
pub struct BenchArgs {
    /// The driver's endpoint.
    #[arg(long, env = "KELP_ENDPOINT", default_value = "unix:///run/kelp/csi.sock")]
    pub endpoint: String,
    /// Metadata server for the baseline (same server kelp uses): redis://host:port.
    #[arg(long, env = "KELP_META_URL")]
    pub meta_url: String,
    /// S3 endpoint for the baseline.
    #[arg(long, env = "KELP_S3_ENDPOINT")]
    pub s3_endpoint: String,
    #[arg(long, env = "KELP_S3_ACCESS_KEY", hide_env_values = true)]
    pub s3_access_key: String,
    #[arg(long, env = "KELP_S3_SECRET_KEY", hide_env_values = true)]
    pub s3_secret_key: String,
    /// Scratch directory for mounts and files.
    #[arg(long, default_value = "/tmp/kelp-bench")]
    pub dir: PathBuf,
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(Subcommand)]
pub enum BenchWhat {
    /// CreateVolume/DeleteVolume against `juicefs format`.
    Provision {
        #[arg(long, default_value_t = 200)]
        count: usize,
        /// First spare database for the baseline (must be empty; it is flushed after).
        #[arg(long, default_value_t = 512)]
        baseline_db: u32,
    },
    /// Stage time, data path and driver memory.
    Node {
        /// Pid of the `kelp serve` to measure memory of.
        #[arg(long)]
        kelp_pid: u32,
        #[arg(long, default_value_t = 20)]
        volumes: usize,
        /// MiB written and read sequentially.
        #[arg(long, default_value_t = 256)]
        seq_mib: usize,
        /// Small files created.
        #[arg(long, default_value_t = 2000)]
        files: usize,
        /// The kelp serve's metrics endpoint (host:port): each round also runs the
        /// workload through kelp while /metrics is scraped, to price it.
        #[arg(long)]
        metrics_addr: Option<String>,
        /// Seconds between those scrapes (Prometheus's default interval is 60 s,
        /// `deploy/grafana/prometheus.yml` uses 30 s; 1 is a worst case).
        #[arg(long, default_value_t = 15)]
        scrape_every: u64,
    },
    /// kelp against a raw `juicefs mount`, a `weed mount` and local disk, on the
    /// same servers: I/O, metadata, untar, stage time and mount memory.
    Datapath {
        /// The SeaweedFS filer for `weed mount`: host:port, or host:port.grpcport.
        #[arg(long, env = "KELP_BENCH_WEED_FILER")]
        weed_filer: String,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[arg(long, default_value_t = 512)]
        seq_mib: usize,
        /// Small files created, each fsync'd.
        #[arg(long, default_value_t = 2000)]
        files: usize,
        /// kelp's /metrics (host:port): with it, the table of where kelp's time went,
        /// from its juicefs's own counters.
        #[arg(long)]
        metrics_addr: Option<String>,
    },
    /// CreateSnapshot and clones through CSI, with small files and with a large file
    /// added, against `juicefs sync` of the volume into a new one.
    Snapshot {
        /// Files of 4 KiB in the volume.
        #[arg(long, default_value_t = 10_000)]
        files: usize,
        /// MiB of the large file added before the second copy.
        #[arg(long, default_value_t = 1024)]
        data_mib: usize,
        /// Snapshots and clones per measurement (the median is shown).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// The cost of kelp's durable defaults (`appendfsync always`, SeaweedFS fsync)
    /// against `everysec` and `durability=relaxed`. Changes the server's appendfsync
    /// with CONFIG SET while it runs and puts the original back.
    Durability {
        /// Rounds; each runs both settings, in alternating order.
        #[arg(long, default_value_t = 6)]
        rounds: usize,
        /// Small files created per round, each written and fsync'd.
        #[arg(long, default_value_t = 300)]
        files: usize,
        /// MiB written sequentially per round, then fsync'd.
        #[arg(long, default_value_t = 128)]
        seq_mib: usize,
    },
}
