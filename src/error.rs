//! The CSI layer's one error type and its one mapping to `tonic::Status`.
//!
//! Backend errors keep their own types; they enter here by `From` and leave as a gRPC
//! code chosen in exactly one place, so the code a client sees for a given failure
//! never depends on which RPC met it.

use crate::{juicefs, meta, node::mount, seaweedfs};
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    Unimplemented(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<meta::Error> for Error {
    fn from(e: meta::Error) -> Error {
        match e {
            meta::Error::Unreachable { .. } | meta::Error::Busy { .. } => Error::Unavailable(e.to_string()),
            meta::Error::NoFreeDatabase { .. } => Error::ResourceExhausted(e.to_string()),
            meta::Error::BadUrl { .. } => Error::InvalidArgument(e.to_string()),
            meta::Error::NoSuchDatabase { .. } => Error::NotFound(e.to_string()),
            meta::Error::Command { .. } | meta::Error::Corrupt { .. } => Error::Internal(e.to_string()),
            meta::Error::WouldOverwrite { .. } => Error::FailedPrecondition(e.to_string()),
            meta::Error::TreeRefused { ref why, .. } => match why {
                meta::Refusal::NoSource => Error::NotFound(e.to_string()),
                meta::Refusal::Exists => Error::AlreadyExists(e.to_string()),
                meta::Refusal::TooMany(_) => Error::ResourceExhausted(e.to_string()),
                meta::Refusal::NotADirectory | meta::Refusal::InsideSource => {
                    Error::FailedPrecondition(e.to_string())
                }
            },
        }
    }
}

impl From<seaweedfs::Error> for Error {
    fn from(e: seaweedfs::Error) -> Error {
        match e {
            seaweedfs::Error::Unreachable { .. } => Error::Unavailable(e.to_string()),
            seaweedfs::Error::Refused { .. } => Error::Internal(e.to_string()),
        }
    }
}

impl From<juicefs::Error> for Error {
    fn from(e: juicefs::Error) -> Error {
        match e {
            juicefs::Error::Meta(m) => m.into(),
            juicefs::Error::Missing { .. } => Error::NotFound(e.to_string()),
            juicefs::Error::Foreign { .. } | juicefs::Error::BadSetting { .. } => {
                Error::FailedPrecondition(e.to_string())
            }
        }
    }
}

impl From<mount::Error> for Error {
    fn from(e: mount::Error) -> Error {
        match e {
            mount::Error::Timeout { .. } => Error::Unavailable(e.to_string()),
            mount::Error::Foreign { .. } => Error::FailedPrecondition(e.to_string()),
            _ => Error::Internal(e.to_string()),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = match &e {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::Aborted(_) => Code::Aborted,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Internal(_) => Code::Internal,
            Error::Unimplemented(_) => Code::Unimplemented,
        };
        Status::new(code, e.to_string())
    }
}

/// Shorthand for the argument checks every RPC starts with.
pub fn require(cond: bool, msg: impl Into<String>) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(Error::InvalidArgument(msg.into()))
    }
}
