//! The names of kelp's own keys in the registry (database 0), in one place: what
//! the registry stores and what the generations and other modules read of it all
//! name their keys here, so two modules never spell one key twice.

/// Every volume's name (a set).
pub(super) const VOLUMES: &str = "kelp:volumes";
/// Databases in use (a set).
pub(super) const DATABASES: &str = "kelp:dbs";
/// Every node that registered (a set).
pub(super) const NODES: &str = "kelp:nodes";
/// Databases held back from reuse while a JuiceFS client still writes to them.
pub(super) const QUARANTINE: &str = "kelp:quarantine";
/// Volumes that have old metadata generations (see `generation`).
pub(super) const GENERATIONS: &str = "kelp:generations";

/// A volume's metadata generations (hash: database -> generation).
pub(super) fn generations_key(fs_name: &str) -> String {
    format!("kelp:gens:{fs_name}")
}

/// Which node holds a single-writer volume, in which database and epoch.
pub(super) fn holder_key(fs_name: &str) -> String {
    format!("kelp:holder:{fs_name}")
}

/// A volume's record.
pub(super) fn volume_key(fs_name: &str) -> String {
    format!("kelp:vol:{fs_name}")
}
