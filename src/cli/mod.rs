//! The `kelp` command's subcommands and their one error type. `serve` runs the CSI
//! driver; the others are small clients of a running driver or of its registry, for
//! operators and scripts.

pub mod admin;
pub mod backup;
pub mod client;
pub mod init;
pub mod serve;
pub mod snapshot;
pub mod stack;

/// Why a subcommand failed; printed as `kelp: <message>`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Endpoint(#[from] kelp::endpoint::Error),
    #[error(transparent)]
    Meta(#[from] kelp::meta::Error),
    #[error(transparent)]
    Filer(#[from] kelp::seaweedfs::Error),
    #[error("{}: {}", rpc_code(.0), .0.message())]
    Rpc(#[from] tonic::Status),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    /// Another program, or the input, refused; the message says which and why.
    #[error("{0}")]
    Refused(String),
}

pub type Result<T> = std::result::Result<T, Error>;

fn rpc_code(s: &tonic::Status) -> String {
    format!("{:?}", s.code())
}

/// Wraps an I/O error with what was being done.
pub fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.to_string();
    move |source| Error::Io { what, source }
}

/// Runs `docker ARGS` and returns its output, or says why it failed.
pub fn docker(args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("docker").args(args).output().map_err(io("running docker"))?;
    if !out.status.success() {
        return Err(Error::Refused(format!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
