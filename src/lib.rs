//! Kelp: a CSI driver for Docker Swarm. Each volume is a JuiceFS file system whose
//! data lives in a SeaweedFS bucket and whose metadata lives in a database of a
//! Redis-protocol server (KeyDB), mounted on every node against that node's own master.

pub mod backup;
pub mod controller;
pub mod endpoint;
pub mod error;
pub mod failpoint;
pub mod identity;
pub mod juicefs;
pub mod locks;
pub mod masters;
pub mod meta;
pub mod metrics;
pub mod node;
pub mod pinning;
pub mod proto;
pub mod seaweedfs;
pub mod server;
pub mod volume;
pub mod wait;

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
