//! Why a measurement stopped; printed as `kelp-bench: <message>`.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Endpoint(#[from] kelp::endpoint::Error),
    #[error("{:?}: {}", .0.code(), .0.message())]
    Rpc(#[from] tonic::Status),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    /// Another program refused; the message says which and why.
    #[error("{0}")]
    Refused(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Wraps an I/O error with what was being done.
pub fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.to_string();
    move |source| Error::Io { what, source }
}
