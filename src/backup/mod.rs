//! Metadata backups: a point-in-time copy of one volume family's whole database and
//! the registry records that bring it back, written as one object into the family's
//! own bucket, and the way back from it (docs/operations.md, "Metadata backups").
//!
//! - [`format`]: the object's bytes; [`policy`]: when, what to keep, names (pure);
//! - [`take`]: one backup of one family; [`restore`]: into the metadata servers, in
//!   place or as a new database after a wipe;
//! - the schedule that calls [`take`] runs in the controller (`controller::backup`).

pub mod clone;
/// The object's bytes live with the metadata client that reads and writes the keys.
pub use crate::meta::dump as format;
pub mod policy;
pub mod restore;
pub mod take;
pub mod tree;

/// Errors of backups and restores; mapped to a gRPC code once, in `crate::error`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Meta(#[from] crate::meta::Error),
    #[error(transparent)]
    Filer(#[from] crate::seaweedfs::Error),
    #[error("backup {object} of volume {family}: {why}")]
    Bad { family: String, object: String, why: format::BadBackup },
    #[error("{0}")]
    NotFound(String),
    /// The operation would do harm as asked; nothing was written. The message says
    /// what to do instead.
    #[error("{0}")]
    Refused(String),
}

impl From<crate::error::Error> for Error {
    /// The controller's lookups (`writer_master`) speak the CSI error; a backup only
    /// reports them.
    fn from(e: crate::error::Error) -> Error {
        Error::Refused(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;
