//! How many of a node's volumes are mounted against its own master, kept in that
//! master. A master run as a Swarm service is stopped together with the tasks when
//! its node is drained, but a writer's release (unmount, then the fence) needs it
//! afterwards: stopped first, the release cannot finish and the task can move
//! nowhere. So the master's stop hook (deploy/swarm/kelp-keydb.sh) waits, bounded,
//! until this count is zero. The key names the node because every master of a
//! multi-master set holds every other node's count too.

use super::{MetaServer, Result};

/// The key of `node`'s count, in database 0.
pub fn local_mounts_key(node: &str) -> String {
    format!("kelp:node:{node}:local-mounts")
}

impl MetaServer {
    /// Records that `node` has `count` volumes mounted against this server.
    pub async fn set_local_mounts(&self, node: &str, count: usize) -> Result<()> {
        let key = local_mounts_key(node);
        self.registry(|mut c| {
            let key = key.clone();
            async move { redis::cmd("SET").arg(key).arg(count).query_async::<()>(&mut c).await }
        })
        .await
    }
}
