//! What the registry stores about a volume besides its database, and the one place it
//! is read and written.

use super::Params;
use crate::error::{Error, Result};
use crate::meta::VolumeRecord;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    pub name: String,
    pub uuid: String,
    pub capacity_bytes: u64,
    pub params: Params,
    pub created_unix: i64,
    /// The volume's home master (no password): where shared writers send metadata.
    #[serde(default)]
    pub home_meta: String,
}

impl Spec {
    /// The spec of a registry record.
    pub fn of(record: &VolumeRecord) -> Result<Spec> {
        serde_json::from_str(&record.spec)
            .map_err(|e| Error::Internal(format!("registry entry of {} is unreadable: {e}", record.fs_name)))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a spec always serialises")
    }
}
