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
    /// PID 1 of the managed plugin: `kelp init -- serve ARGS` runs `kelp serve ARGS` and restarts it when it
    /// dies, so its crash never takes the node's FUSE mounts down.
    Init(cli::init::InitArgs),
    /// Holds one staged volume's FUSE connection so a new juicefs can resume it
    /// (started by `kelp serve`; see src/node/fuse_fd.rs).
    #[command(hide = true)]
    HoldFuse {
        /// The socket juicefs finds through JFS_SUPER_COMM.
        #[arg(long)]
        socket: std::path::PathBuf,
        /// The staging path of the mount it holds: not read by the holder, it names
        /// that mount for the node's reaper.
        #[arg(long)]
        mount_point: Option<std::path::PathBuf>,
    },
    /// Talk to a running driver over its endpoint (create, list, mount, ...).
    Client(cli::client::ClientArgs),
    /// Create the kelp cluster volumes a stack file describes (`docker stack deploy` does not).
    Stack(cli::stack::StackArgs),
    /// Snapshots over CSI, on a manager: create, list, delete (Swarm has no snapshot command).
    Snapshot(cli::snapshot::SnapshotArgs),
    /// Make a new Swarm volume from a snapshot, with its source volume's settings.
    Restore(cli::snapshot::RestoreArgs),
    /// Read kelp's registry from a metadata server (volumes, writers, fences).
    Admin(cli::admin::AdminArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // No runtime for init or the FUSE holder: they must stay small and cannot fail.
    let cli = match cli.command {
        Command::Init(args) => return cli::init::run(args),
        Command::HoldFuse { socket, .. } => {
            return match kelp::node::fuse_fd::hold(&socket) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("kelp hold-fuse {}: {e}", socket.display());
                    std::process::ExitCode::FAILURE
                }
            }
        }
        command => Cli { command },
    };
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
        Command::Admin(args) => rt.block_on(cli::admin::run(args)),
        Command::Stack(args) => rt.block_on(cli::stack::run(args)),
        Command::Snapshot(args) => rt.block_on(cli::snapshot::run(args)),
        Command::Restore(args) => rt.block_on(cli::snapshot::restore(args)),
        Command::Init(_) | Command::HoldFuse { .. } => unreachable!("handled before the runtime starts"),
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
