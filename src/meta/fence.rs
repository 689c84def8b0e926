//! The fence: a value a releasing writer leaves in the volume's own database, through
//! its own master. Because it is written after everything the writer committed, a
//! master that has replicated the fence has replicated all of that too (Redis-protocol
//! replication keeps the order of one source's writes), whichever server replicates.

use super::{MetaServer, Result};

/// Key in the volume's database; JuiceFS ignores keys it does not know.
const FENCE_KEY: &str = "kelp:fence";

// Raise the fence to ARGV[1], never lower it.
const RAISE: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return redis.call('GET', KEYS[1])
"#;

impl MetaServer {
    /// Raises the fence of the volume in `db` to `epoch`.
    pub async fn raise_fence(&self, db: u32, epoch: u64) -> Result<()> {
        let mut c = self.database(db).await?;
        let _: Option<String> = redis::Script::new(RAISE)
            .key(FENCE_KEY)
            .arg(epoch)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The fence this server holds for the volume in `db` (0 when none).
    pub async fn fence(&self, db: u32) -> Result<u64> {
        let mut c = self.database(db).await?;
        let v: Option<u64> =
            redis::cmd("GET").arg(FENCE_KEY).query_async(&mut c).await.map_err(|e| self.err(e))?;
        Ok(v.unwrap_or(0))
    }
}
