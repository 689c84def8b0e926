//! The fence: a value a releasing writer leaves in the volume's own database, through
//! its own master. Because it is written after everything the writer committed, a
//! master that has replicated the fence has replicated all of that too (Redis-protocol
//! replication keeps the order of one source's writes), whichever server replicates.

use super::{MetaServer, Result};

/// Key in the volume's database; JuiceFS ignores keys it does not know.
pub const FENCE_KEY: &str = "kelp:fence";

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

    /// Why a fence read here cannot yet prove the writes before it, or `None` when
    /// it can: the server has loaded its data, takes no full copy from a peer, and
    /// every replication link is up. A fence arrives in order after the writes before
    /// it over any one link, but a full copy is loaded key by key, and a restarted
    /// KeyDB takes one from every peer while it already answers. A link that is down
    /// is a peer that is gone or restarting: when it comes back it sends a full copy
    /// that KeyDB merges key by key, so nothing is handed over until it is back. A
    /// master that crashed must not come back with its own files at all (it would
    /// merge its stale keys over newer ones): deploy/swarm/kelp-keydb.sh makes it
    /// rejoin empty, unreachable until every peer's copy is in (docs/pinning.md, "When a master crashes").
    pub async fn unsettled(&self) -> Result<Option<String>> {
        let info: String =
            self.registry(|mut c| async move { redis::cmd("INFO").query_async(&mut c).await }).await?;
        Ok(unsettled_info(&info))
    }
    /// The fence this server holds for the volume in `db` (0 when none).
    pub async fn fence(&self, db: u32) -> Result<u64> {
        let mut c = self.database(db).await?;
        let v: Option<u64> =
            redis::cmd("GET").arg(FENCE_KEY).query_async(&mut c).await.map_err(|e| self.err(e))?;
        Ok(v.unwrap_or(0))
    }
}

/// [`MetaServer::unsettled`] from `INFO` output. KeyDB names a multi-master's links
/// `master_link_status`, `master_1_link_status`, ... (and `master_1_host`), plus a
/// `master_global_link_status` summary.
fn unsettled_info(info: &str) -> Option<String> {
    let fields: Vec<(&str, &str)> = info.lines().filter_map(|l| l.trim().split_once(':')).collect();
    let field = |k: &str| fields.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    let mut why = Vec::new();
    for (k, v) in &fields {
        match *k {
            "loading" | "async_loading" if *v != "0" => why.push("it is still loading its data".to_string()),
            _ if k.starts_with("master") && k.ends_with("sync_in_progress") && *v != "0" => {
                let host = field(&k.replace("sync_in_progress", "host")).unwrap_or("?");
                why.push(format!("it is taking a full copy from {host}"));
            }
            _ if k.starts_with("master")
                && k.ends_with("link_status")
                && *k != "master_global_link_status"
                && *v != "up" =>
            {
                let host = field(&k.replace("link_status", "host")).unwrap_or("?");
                let port = field(&k.replace("link_status", "port")).unwrap_or("?");
                why.push(format!("its replication link to {host}:{port} is {v}"));
            }
            _ => {}
        }
    }
    (!why.is_empty()).then(|| why.join(", "))
}

#[cfg(test)]
mod tests {
    use super::unsettled_info;

    #[test]
    fn a_master_is_settled_once_loaded_with_every_link_up_and_no_full_copy_coming_in() {
        let plain = "# Persistence\r\nloading:0\r\n# Replication\r\nrole:master\r\nconnected_slaves:0\r\n";
        assert_eq!(unsettled_info(plain), None);
        assert_eq!(
            unsettled_info("loading:1\r\nrole:master\r\n").as_deref(),
            Some("it is still loading its data")
        );
        let two = |l1: &str, s1: &str| {
            format!(
                "loading:0\r\nrole:active-replica\r\nmaster_global_link_status:{l1}\r\nmaster_host:10.0.0.2\r\nmaster_port:6379\r\nmaster_link_status:up\r\nmaster_sync_in_progress:0\r\nmaster_1_host:10.0.0.3\r\nmaster_1_port:6379\r\nmaster_1_link_status:{l1}\r\nmaster_1_sync_in_progress:{s1}\r\n"
            )
        };
        assert_eq!(unsettled_info(&two("up", "0")), None);
        assert_eq!(
            unsettled_info(&two("down", "0")).as_deref(),
            Some("its replication link to 10.0.0.3:6379 is down"),
            "a peer that is gone or restarting will merge a full copy when it is back"
        );
        assert_eq!(
            unsettled_info(&two("up", "1")).as_deref(),
            Some("it is taking a full copy from 10.0.0.3")
        );
    }
}
