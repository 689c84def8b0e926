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
    /// A clone's or restore's family: the file system it shares with its source
    /// (`None`: the volume founded its own). Its id names that file system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// What a clone or restore was made from (`volume:<id>` or `snapshot:<id>`), so a
    /// repeated CreateVolume with another source is told apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Spec {
    /// The spec of a registry record.
    pub fn of(record: &VolumeRecord) -> Result<Spec> {
        serde_json::from_str(&record.spec)
            .map_err(|e| Error::Internal(format!("registry entry of {} is unreadable: {e}", record.fs_name)))
    }

    /// The volume's id, given its database and the name its record is kept under
    /// (a clone's id names its family's file system instead).
    pub fn id(&self, db: u32, fs_name: &str) -> super::VolumeId {
        let fs = self.family.as_deref().unwrap_or(fs_name);
        super::VolumeId::new(db, &self.uuid, fs).with_member(self.member.as_deref())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a spec always serialises")
    }
}
