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

    /// Whether a fence read here can prove the writes before it: the server is not
    /// loading its own data and takes no full copy from a peer. A fence arrives in
    /// order after the writes before it over any one replication link, but a full
    /// copy is loaded key by key, and a restarted KeyDB takes one from every peer
    /// while it already answers. Links that are down do not matter: the fence came
    /// over one that is up. This does not catch a restarted master that merged its
    /// own older copy over newer writes (docs/notes.md): the fence key itself is new
    /// then; deploy/swarm/keydb.yml keeps that from happening after a clean stop.
    pub async fn settled(&self) -> Result<bool> {
        let info: String =
            self.registry(|mut c| async move { redis::cmd("INFO").query_async(&mut c).await }).await?;
        Ok(settled_info(&info))
    }

    /// The fence this server holds for the volume in `db` (0 when none).
    pub async fn fence(&self, db: u32) -> Result<u64> {
        let mut c = self.database(db).await?;
        let v: Option<u64> =
            redis::cmd("GET").arg(FENCE_KEY).query_async(&mut c).await.map_err(|e| self.err(e))?;
        Ok(v.unwrap_or(0))
    }
}

/// [`MetaServer::settled`] from `INFO` output. KeyDB names a multi-master's links
/// `master_sync_in_progress`, `master_1_sync_in_progress`, ...
fn settled_info(info: &str) -> bool {
    info.lines().filter_map(|l| l.trim().split_once(':')).all(|(k, v)| match k {
        "loading" | "async_loading" => v == "0",
        _ if k.starts_with("master") && k.ends_with("sync_in_progress") => v == "0",
        _ => true,
    })
}

#[cfg(test)]
mod tests {
    use super::settled_info;

    #[test]
    fn a_master_is_settled_once_loaded_with_no_full_copy_coming_in() {
        let plain = "# Persistence\r\nloading:0\r\n# Replication\r\nrole:master\r\nconnected_slaves:0\r\n";
        assert!(settled_info(plain));
        assert!(!settled_info("loading:1\r\nrole:master\r\n"));
        let two = |l1: &str, s1: &str| {
            format!(
                "loading:0\r\nrole:active-replica\r\nmaster_global_link_status:{l1}\r\nmaster_link_status:up\r\nmaster_sync_in_progress:0\r\nmaster_1_link_status:{l1}\r\nmaster_1_sync_in_progress:{s1}\r\n"
            )
        };
        assert!(settled_info(&two("up", "0")));
        assert!(settled_info(&two("down", "0")), "a peer it cannot reach does not matter");
        assert!(!settled_info(&two("up", "1")), "a full copy still coming in");
    }
}
