//! What a node checks about its own metadata master. A master can be configured so
//! that kelp works in every test and still loses or corrupts metadata later: evicted
//! keys, a second of acknowledged commits gone on power loss, a peer that silently
//! drops writes to databases it does not have. None of these is an error on any
//! request, so the node looks once at start and at every heartbeat, logs each
//! problem when it appears, and announces them so `kelp admin nodes` shows them.

use super::{MetaServer, Result};

/// Fewer logical databases than this is "few": kelp uses one per volume.
const FEW_DATABASES: u32 = 16;

/// One thing wrong with a master's configuration, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub setting: &'static str,
    pub problem: String,
}

impl Finding {
    /// The master at `url` does not answer: down, or rejoining after a crash.
    pub fn unreachable(url: &str) -> Finding {
        Finding {
            setting: "master",
            problem: format!("{url} does not answer: it is down, or rejoining its peers after a crash (it opens its port once every peer's copy is in); nothing mounts against it until then"),
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.setting, self.problem)
    }
}

/// The settings the checks read; `None` where the server refused CONFIG GET (a
/// managed offering): those checks are skipped rather than guessed.
#[derive(Debug, Default, Clone)]
pub struct MasterConfig {
    pub databases: Option<u32>,
    pub appendonly: Option<String>,
    pub appendfsync: Option<String>,
    pub save: Option<String>,
    pub maxmemory_policy: Option<String>,
    pub replica_read_only: Option<String>,
    /// `INFO replication`, as `key:value` lines.
    pub replication: String,
}

impl MetaServer {
    /// Reads what [`findings`] needs from the server.
    pub async fn master_config(&self) -> Result<MasterConfig> {
        let mut c = MasterConfig::default();
        for (name, slot) in [
            ("appendonly", &mut c.appendonly),
            ("appendfsync", &mut c.appendfsync),
            ("save", &mut c.save),
            ("maxmemory-policy", &mut c.maxmemory_policy),
            ("replica-read-only", &mut c.replica_read_only),
        ] {
            *slot = self.config_get(name).await?;
        }
        c.databases = self.config_get("databases").await?.and_then(|n| n.parse().ok());
        c.replication = match self
            .registry(|mut c| async move { redis::cmd("INFO").arg("replication").query_async(&mut c).await })
            .await
        {
            Ok(info) => info,
            Err(super::Error::Command { .. }) => String::new(),
            Err(e) => return Err(e),
        };
        Ok(c)
    }

    /// One setting, or `None` if the server does not tell.
    async fn config_get(&self, name: &'static str) -> Result<Option<String>> {
        let reply: Vec<String> = match self
            .registry(
                |mut c| async move { redis::cmd("CONFIG").arg("GET").arg(name).query_async(&mut c).await },
            )
            .await
        {
            Ok(v) => v,
            Err(super::Error::Command { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(reply.get(1).cloned())
    }
}

/// Everything wrong with `c` for a kelp master, most harmful first.
pub fn findings(c: &MasterConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |setting, problem: String| out.push(Finding { setting, problem });
    if let Some(p) = c.maxmemory_policy.as_deref().filter(|p| *p != "noeviction") {
        add(
            "maxmemory-policy",
            format!("is {p}: under memory pressure the server deletes file system metadata; set maxmemory-policy noeviction"),
        );
    }
    match (c.appendonly.as_deref(), c.save.as_deref()) {
        (Some("no"), Some("")) => add(
            "appendonly",
            "no persistence at all (appendonly no, no save points): a restart loses every volume's metadata; set appendonly yes and appendfsync always".into(),
        ),
        (Some("no"), Some(_)) => add(
            "appendonly",
            "only RDB snapshots: a crash loses every metadata change since the last one; set appendonly yes and appendfsync always".into(),
        ),
        _ => {}
    }
    if c.appendonly.as_deref() == Some("yes") {
        if let Some(f) = c.appendfsync.as_deref().filter(|f| *f != "always") {
            add(
                "appendfsync",
                format!("is {f}: a power loss can lose acknowledged metadata commits (up to about a second with everysec); set appendfsync always"),
            );
        }
    }
    if let Some(n) = c.databases.filter(|n| *n <= FEW_DATABASES) {
        add(
            "databases",
            format!("is {n} and kelp uses one per volume, so at most {} volumes fit; set databases to e.g. 1024 (the same on every multi-master peer)", n.saturating_sub(1)),
        );
    }
    let info: Vec<(&str, &str)> = c.replication.lines().filter_map(|l| l.trim().split_once(':')).collect();
    let field = |k: &str| info.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    if field("role") == Some("slave") && c.replica_read_only.as_deref() != Some("no") {
        add(
            "replica-read-only",
            "this node's master is a read-only replica: every mount on this node would fail to write; point --meta-url at a writable master (KeyDB active-replica)".into(),
        );
    }
    // KeyDB multi-master lists `master_*` for its first master and `master_N_*` for
    // the others (plus a `master_global_link_status` summary); plain replicas one.
    let links = info.iter().filter(|(k, _)| k.ends_with("link_status") && *k != "master_global_link_status");
    for (key, value) in links.filter(|(_, v)| *v != "up") {
        let host_key = key.replace("link_status", "host");
        let host = field(&host_key).unwrap_or("?");
        add(
            "replicaof",
            format!("the replication link to {host} ({key}) is {value}: metadata written there does not reach this node; check that peer and the network"),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> MasterConfig {
        MasterConfig {
            databases: Some(1024),
            appendonly: Some("yes".into()),
            appendfsync: Some("always".into()),
            save: Some(String::new()),
            maxmemory_policy: Some("noeviction".into()),
            replica_read_only: Some("yes".into()),
            replication: "# Replication\r\nrole:master\r\nconnected_slaves:0\r\n".into(),
        }
    }

    #[test]
    fn a_good_master_has_no_findings_and_each_problem_is_named() {
        assert!(findings(&good()).is_empty());
        let settings = |c: &MasterConfig| findings(c).iter().map(|f| f.setting).collect::<Vec<_>>();
        assert_eq!(
            settings(&MasterConfig { appendfsync: Some("everysec".into()), ..good() }),
            ["appendfsync"]
        );
        assert_eq!(settings(&MasterConfig { appendonly: Some("no".into()), ..good() }), ["appendonly"]);
        assert_eq!(
            settings(&MasterConfig { maxmemory_policy: Some("allkeys-lru".into()), ..good() }),
            ["maxmemory-policy"]
        );
        assert_eq!(settings(&MasterConfig { databases: Some(16), ..good() }), ["databases"]);
        // A server that refuses CONFIG is not guessed at.
        assert!(findings(&MasterConfig { replication: String::new(), ..Default::default() }).is_empty());
    }

    #[test]
    fn replication_links_that_are_down_are_named_with_their_peer() {
        // As KeyDB 6.3.4 prints it.
        let keydb = "role:active-replica\r\nmaster_global_link_status:down\r\nconnected_masters:1\r\n\
                     master_host:10.0.0.2\r\nmaster_port:6379\r\nmaster_link_status:up\r\n\
                     master_1_host:10.0.0.3\r\nmaster_1_port:6379\r\nmaster_1_link_status:down\r\n";
        let f = findings(&MasterConfig { replication: keydb.into(), ..good() });
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].problem.contains("10.0.0.3"), "{}", f[0]);
        let read_only = "role:slave\r\nmaster_host:10.0.0.1\r\nmaster_link_status:up\r\n";
        let f = findings(&MasterConfig { replication: read_only.into(), ..good() });
        assert_eq!(f.iter().map(|f| f.setting).collect::<Vec<_>>(), ["replica-read-only"]);
    }
}
