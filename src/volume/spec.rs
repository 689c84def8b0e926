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
    /// The UUID naming a tree-layout volume's directory (`/.kelp/v/<first 8 hex>`);
    /// `None` for root-layout volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
}

impl Spec {
    /// The spec of a registry record.
    pub fn of(record: &VolumeRecord) -> Result<Spec> {
        serde_json::from_str(&record.spec)
            .map_err(|e| Error::Internal(format!("registry entry of {} is unreadable: {e}", record.fs_name)))
    }

    /// The volume's id, given its database and file-system name.
    pub fn id(&self, db: u32, fs_name: &str) -> super::VolumeId {
        super::VolumeId::new(db, &self.uuid, fs_name).with_member(self.member.as_deref())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a spec always serialises")
    }
}
