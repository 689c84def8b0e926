//! The `kelp` command: `serve` runs the CSI driver; the other subcommands are small
//! clients of a running driver for operators and scripts (see `cli`).

mod cli;

use clap::{Parser, Subcommand};
use tracing::error;

#[derive(Parser)]
#[command(
    name = "kelp",
    version,
    about = "CSI driver for Docker Swarm: distributed POSIX volumes (JuiceFS on SeaweedFS, metadata on the node-local KeyDB master)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the CSI driver (Identity plus the Controller and/or Node service).
    Serve(Box<cli::serve::ServeArgs>),
    /// Talk to a running driver over its endpoint (create, list, mount, ...).
    Client(cli::client::ClientArgs),
    /// Create the kelp cluster volumes a stack file describes (`docker stack deploy` does not).
    Stack(cli::stack::StackArgs),
    /// Read kelp's registry from a metadata server (volumes, writers, fences).
    Admin(cli::admin::AdminArgs),
    /// Measure a running driver against a by-hand juicefs baseline (see scripts/bench.sh).
    Bench(cli::bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = match cli.command {
        Command::Serve(args) => {
            cli::serve::init_logging(&args.log_level, args.log_format);
            rt.block_on(cli::serve::run(*args))
        }
        Command::Client(args) => rt.block_on(cli::client::run(args)),
        Command::Bench(args) => rt.block_on(cli::bench::run(args)),
        Command::Admin(args) => rt.block_on(cli::admin::run(args)),
        Command::Stack(args) => rt.block_on(cli::stack::run(args)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("kelp: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
