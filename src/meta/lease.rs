//! Node leases, kept in the registry on the controller's own server and stamped with
//! that server's clock and identity. A holder that cannot reach this one server
//! cannot renew, whatever its own master still accepts, so a partition shows here as
//! silence; and because both the renewal and the controller's judgement read the
//! same server's clock, no two machines' clocks are ever compared.

use super::{MetaServer, Result};
use crate::pinning::Lease;

const LEASES: &str = "kelp:leases";

// Stamp `node`'s lease with this server's time (ms) and run id, which a restarted or
// different server does not share. KEYS: leases hash. ARGV: node id.
const RENEW: &str = r#"
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d %s', ms, run))
return run
"#;

// How long ago `node` last renewed at this very server. A lease this server never
// stamped (the server restarted since, or the node never renewed) is stamped now, so
// its silence is counted from now: never shorter than the truth. Returns -1 then.
// KEYS: leases hash. ARGV: node id, 1 to stamp (0: only look).
const SILENCE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
local v = redis.call('HGET', KEYS[1], ARGV[1])
local ms, r = nil, nil
if v then ms, r = string.match(v, '(%d+) (%w+)') end
if r ~= run then
  if ARGV[2] == '1' then redis.call('HSET', KEYS[1], ARGV[1], string.format('%d %s', now, run)) end
  return -1
end
return math.max(0, now - tonumber(ms))
"#;

const RUN_ID: &str = r#"return string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')"#;

impl MetaServer {
    /// Renews `node`'s lease at this server; returns the server's run id.
    pub async fn renew_lease(&self, node: &str) -> Result<String> {
        let script = redis::Script::new(RENEW);
        self.registry(|mut c| {
            let mut inv = script.key(LEASES);
            inv.arg(node);
            async move { inv.invoke_async(&mut c).await }
        })
        .await
    }

    /// This server's run id: it changes when the server restarts, and no other
    /// server shares it.
    pub async fn run_id(&self) -> Result<String> {
        let script = redis::Script::new(RUN_ID);
        self.registry(|mut c| {
            let inv = script.prepare_invoke();
            async move { inv.invoke_async(&mut c).await }
        })
        .await
    }

    /// `node`'s lease as this server saw it renewed; `NotHere` when its silence is
    /// only counted from now on (`stamp`) or not known (without).
    pub async fn lease(&self, node: &str, stamp: bool) -> Result<Lease> {
        let script = redis::Script::new(SILENCE);
        let ms: i64 = self
            .registry(|mut c| {
                let mut inv = script.key(LEASES);
                inv.arg(node).arg(stamp as u8);
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        Ok(if ms >= 0 { Lease::SilentFor(ms) } else { Lease::NotHere })
    }
}
