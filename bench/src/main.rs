//! `kelp-bench`: measurements of a running kelp driver against a baseline run in the
//! same process, reported as ratios. Never assertions: the numbers go in
//! BENCHMARKS.md, the tests stay untimed. `scripts/bench.sh` starts the servers and
//! the driver and runs it. A crate of its own so that the driver binary ships only
//! what runs in production.
//!
//! - `provision`, `node`, `durability` ([`baseline`]): against by-hand juicefs.
//! - `datapath` ([`datapath`]): kelp against a raw juicefs mount, a `weed mount` and
//!   local disk, workload by workload.
//! - `snapshot` ([`snapshot`]): the tree copy under snapshots and clones against
//!   `juicefs sync`.
//!
//! Modules depend downwards only: `main` on the measurements, the measurements on
//! `common`, `procs`, `args` and `error`.

mod args;
mod baseline;
mod common;
mod datapath;
mod error;
mod procs;
mod snapshot;

use args::{BenchArgs, BenchWhat};
use clap::Parser;
use error::Result;
use std::time::Duration;

async fn run(a: BenchArgs) -> Result<()> {
    let ch = kelp::endpoint::connect(&a.endpoint).await?;
    std::fs::create_dir_all(&a.dir).map_err(error::io(a.dir.display()))?;
    match a.what {
        BenchWhat::Provision { count, baseline_db } => baseline::provision(&a, ch, count, baseline_db).await,
        BenchWhat::Node { kelp_pid, volumes, seq_mib, files, ref metrics_addr, scrape_every } => {
            let scraping = metrics_addr.clone().map(|addr| (addr, Duration::from_secs(scrape_every.max(1))));
            baseline::node(&a, ch, kelp_pid, volumes, seq_mib, files, scraping).await
        }
        BenchWhat::Durability { rounds, files, seq_mib } => {
            baseline::durability(&a, ch, rounds, files, seq_mib).await
        }
        BenchWhat::Snapshot { files, data_mib, rounds } => {
            snapshot::run(&a, ch, files, data_mib, rounds).await
        }
        BenchWhat::Datapath { ref weed_filer, rounds, seq_mib, files, ref metrics_addr } => {
            datapath::run(&a, ch, weed_filer, rounds, seq_mib, files, metrics_addr.as_deref()).await
        }
    }
}

fn main() -> std::process::ExitCode {
    let a = BenchArgs::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(a)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kelp-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
