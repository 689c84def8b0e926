//! The metadata servers: one small typed client over a Redis-protocol server.
//!
//! Database 0 of the controller's server holds kelp's own registry (volumes, database
//! allocation, known nodes); every volume's JuiceFS metadata lives alone in a database
//! of its own, so destroying a volume is one `FLUSHDB` and nothing else is touched.

mod backup;
mod checks;
pub mod dump;
mod family;
mod fence;
mod generation;
mod keys;
mod lease;
mod mounts;
mod registry;
mod trees;
mod url;

pub use backup::{BackupRecord, Dump, SETTING};
pub use checks::{findings, Finding, MasterConfig};
pub use family::{Claim, SnapshotRecord};
pub use fence::FENCE_KEY;
pub use generation::{inode_of_key, Generation, Tail, TailFile, COUNTER_JUMP, TAIL_FILES};
pub use mounts::local_mounts_key;
pub use registry::{NodeRecord, Reservation, VolumeRecord, VolumeState};
pub use trees::{Copied, Refusal};
pub use url::{redact, MetaUrl};

use redis::aio::{ConnectionManager, MultiplexedConnection};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// Errors of the metadata layer. Messages name the server (password redacted) and
/// never carry a credential.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("metadata server {server} is unreachable ({detail}); check that it runs and that --meta-url and the password are right")]
    Unreachable { server: String, detail: String },
    #[error("metadata server {server} failed: {detail}")]
    Command { server: String, detail: String },
    /// The server answers but takes no writes for a moment: loading its data, or
    /// quiesced while a master joins its peers (deploy/swarm/kelp-keydb.sh).
    #[error("metadata server {server} takes no writes for now ({detail}); a master is loading or joining its peers, retry in a few seconds")]
    Busy { server: String, detail: String },
    #[error("metadata server {server} has no free database for a new volume (it has {databases}); raise `databases` in its configuration")]
    NoFreeDatabase { server: String, databases: u32 },
    #[error("metadata server {server} has no database {db}; the volume id names a database the server was never configured with")]
    NoSuchDatabase { server: String, db: u32 },
    /// The message never repeats the URL: it may hold a password.
    #[error("bad metadata URL: {why} (expected redis://[user@]host:port)")]
    BadUrl { why: String },
    #[error("registry entry {key} is unreadable: {detail}")]
    Corrupt { key: String, detail: String },
    /// A write that would have replaced data it must not; nothing was written.
    #[error("metadata server {server}: database {db} was left untouched: {detail}")]
    WouldOverwrite { server: String, db: u32, detail: String },
    /// A tree operation refused before it wrote anything; `what` names it.
    #[error("{what}: {why}")]
    TreeRefused { what: String, why: Refusal },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Connection timeout: a metadata server that does not answer within this is
/// reported unreachable instead of stalling an RPC past Swarm's 15 s deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// One Redis-protocol server; cheap to clone.
///
/// Nothing connects until first use: the driver must listen on its socket at once
/// (Docker disables a plugin whose socket is missing), even while the metadata
/// server is still starting; until it answers, RPCs and Probe say so.
#[derive(Clone)]
pub struct MetaServer {
    url: MetaUrl,
    registry: Arc<OnceCell<ConnectionManager>>,
    databases: Arc<OnceCell<u32>>,
}

impl MetaServer {
    pub fn new(url: MetaUrl) -> MetaServer {
        MetaServer { url, registry: Default::default(), databases: Default::default() }
    }

    /// The reconnecting connection to database 0 (the registry), made on first use.
    async fn manager(&self) -> Result<ConnectionManager> {
        let url = &self.url;
        self.registry
            .get_or_try_init(|| async {
                let client = redis::Client::open(url.connection_info(0)).map_err(|e| unreachable(url, e))?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(2);
                ConnectionManager::new_with_config(client, config).await.map_err(|e| unreachable(url, e))
            })
            .await
            .cloned()
    }

    pub fn url(&self) -> &MetaUrl {
        &self.url
    }

    /// Another master of the same set, at `url` as the registry or a publish context
    /// names it (never with a password), reached with this server's password.
    pub fn peer(&self, url: &str) -> Result<MetaServer> {
        Ok(MetaServer::new(MetaUrl::parse(url)?.with_password(self.url.password())))
    }

    /// Runs a registry operation, once more after a dropped connection: the manager
    /// reconnects only after a failure, and a restarted server must not fail an RPC.
    /// Every registry operation is idempotent, so a repeat is safe.
    pub(crate) async fn registry<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let manager = self.manager().await?;
        match op(manager.clone()).await {
            Ok(v) => Ok(v),
            Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                op(manager).await.map_err(|e| self.err(e))
            }
            Err(e) => Err(self.err(e)),
        }
    }

    /// A fresh connection to one volume's database. Volume operations are rare
    /// (provisioning, stats), so a short-lived connection is simpler than a pool.
    pub async fn database(&self, db: u32) -> Result<MultiplexedConnection> {
        let client =
            redis::Client::open(self.url.connection_info(db)).map_err(|e| unreachable(&self.url, e))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        client.get_multiplexed_async_connection_with_config(&config).await.map_err(|e| {
            // The SELECT of the handshake fails for a number the server does not have:
            // that volume cannot exist there (and retrying will not change it).
            if e.to_string().contains("DB index is out of range") {
                Error::NoSuchDatabase { server: self.url.to_string(), db }
            } else {
                unreachable(&self.url, e)
            }
        })
    }

    pub async fn ping(&self) -> Result<()> {
        self.registry(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await }).await?;
        Ok(())
    }

    /// How many logical databases the server offers (`databases` in its config),
    /// asked once. Servers that refuse CONFIG (managed offerings) are assumed to have
    /// the default 16.
    pub async fn database_count(&self) -> Result<u32> {
        self.databases
            .get_or_try_init(|| async {
                let reply: Vec<String> = match self
                    .registry(|mut c| async move {
                        redis::cmd("CONFIG").arg("GET").arg("databases").query_async(&mut c).await
                    })
                    .await
                {
                    Ok(v) => v,
                    Err(Error::Command { .. }) => Vec::new(),
                    Err(e) => return Err(e),
                };
                // Too few is reported by the node's start-up checks (`checks`).
                Ok(reply.get(1).and_then(|n| n.parse().ok()).unwrap_or(16))
            })
            .await
            .copied()
    }

    /// How many keys database `db` holds.
    pub async fn database_size(&self, db: u32) -> Result<u64> {
        let mut c = self.database(db).await?;
        redis::cmd("DBSIZE").query_async(&mut c).await.map_err(|e| self.err(e))
    }

    /// Empties one volume's database. Idempotent.
    pub async fn flush_database(&self, db: u32) -> Result<()> {
        debug_assert!(db != 0, "database 0 is the registry");
        let mut c = self.database(db).await?;
        redis::cmd("FLUSHDB").query_async::<()>(&mut c).await.map_err(|e| self.err(e))
    }

    pub(crate) fn err(&self, e: redis::RedisError) -> Error {
        if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() || e.is_connection_dropped() {
            unreachable(&self.url, e)
        } else if is_busy(&e) {
            Error::Busy { server: self.url.to_string(), detail: e.to_string() }
        } else {
            Error::Command { server: self.url.to_string(), detail: e.to_string() }
        }
    }
}

/// A refusal that passes by itself: `READONLY` (a join's quiesce), `LOADING`, and the
/// same inside a script's error (`-READONLY` in its message).
fn is_busy(e: &redis::RedisError) -> bool {
    matches!(e.code(), Some("READONLY" | "LOADING" | "TRYAGAIN" | "MASTERDOWN")) || {
        let s = e.to_string();
        s.contains("READONLY ") || s.contains("LOADING ")
    }
}

pub(crate) fn unreachable(url: &MetaUrl, e: redis::RedisError) -> Error {
    Error::Unreachable { server: url.to_string(), detail: e.to_string() }
}
