//! Test harness: real redis-server, SeaweedFS (`weed server` with filer and S3) and kelp
//! processes on free loopback ports. Every process is recorded by pid and killed when
//! its handle drops or, for shared servers, when the test binary exits.
//!
//! - [`KelpBuilder`] starts every `kelp serve` ([`Kelp`] is its handle);
//! - [`Redis`], [`Weed`], [`shared_redis`], [`shared_weed`]: the servers;
//! - [`poll_until`] / [`poll_until_async`]: every bounded wait;
//! - [`pids_with_cmdline`], [`Proc`]: processes, killed by pid only;
//! - [`mounts_under`], [`force_cleanup`]: mounts, through the crate's mountinfo parser;
//! - [`csi`]: gRPC clients; [`testbed`]: network namespaces and a delay proxy.

// Each test binary (and benches/pinning.rs) uses a part of the harness.
#![allow(dead_code, unused_imports)]

pub mod csi;
mod driver;
pub mod journal;
pub mod life;
mod mounts;
mod procs;
mod servers;
pub mod testbed;
mod wait;

pub use driver::*;
pub use mounts::*;
pub use procs::*;
pub use servers::*;
pub use wait::*;

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const S3_ACCESS_KEY: &str = "kelptestaccess";
pub const S3_SECRET_KEY: &str = "kelp-test-secret-9f3b2c";
pub const META_PASSWORD: &str = "kelp-meta-pw-77e1";

/// Where test processes keep files; below the crate so CI's disk is used, not /tmp.
pub fn scratch(name: &str) -> PathBuf {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".kelp-test");
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::Builder::new().prefix(&format!("{name}-")).tempdir_in(base).unwrap();
    dir.keep()
}

/// Runs a command, panicking with its output on failure.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `count` files of distinct content named `<prefix>-<i>` into `dir` and
/// fsyncs each; returns their names and SHA-256s. Sizes run from 100 bytes to past
/// one 4 MiB block, so files span several slices and objects.
pub fn write_summed(dir: &Path, prefix: &str, count: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|i| {
            let name = format!("{prefix}-{i}");
            let len = 100 + i * 97_003 % (5 << 20);
            let data: Vec<u8> = (0..len).map(|j| ((j * 31 + i * 7) % 251) as u8).collect();
            let mut f = std::fs::File::create(dir.join(&name)).unwrap();
            std::io::Write::write_all(&mut f, &data).unwrap();
            f.sync_all().unwrap();
            (name, hex(&Sha256::digest(&data)))
        })
        .collect()
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The SHA-256 of a file's content; `None` when it cannot be read.
pub fn checksum(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|d| hex(&Sha256::digest(&d)))
}

/// Database number of a volume id `kelp1:<db>:<tag>:<name>`.
pub fn db_of(volume_id: &str) -> u32 {
    volume_id.split(':').nth(1).unwrap().parse().unwrap()
}

/// Data objects (not directories) below a filer path, by the filer's JSON listing.
pub fn objects_under(weed: &Weed, path: &str) -> usize {
    let out = run(Command::new("curl")
        .args(["-s", "-H", "Accept: application/json"])
        .arg(format!("http://127.0.0.1:{}{path}/?limit=100000", weed.filer_port)));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let entries = v["Entries"].as_array().cloned().unwrap_or_default();
    entries
        .iter()
        .map(|e| {
            let full = e["FullPath"].as_str().unwrap_or_default();
            let is_dir = e["Mode"].as_u64().unwrap_or(0) & (1 << 31) != 0;
            if is_dir {
                objects_under(weed, full)
            } else {
                1
            }
        })
        .sum()
}

/// A digest of one database by content, not encoding (keys, and each value in a
/// canonical order), so that two masters, or one database before and after, compare
/// equal exactly when they hold the same data. Run with `EVAL <this> 0 <db>`; returns
/// "<keys> <sha1>".
pub const CONTENT_DIGEST_LUA: &str = r#"
redis.call('SELECT', ARGV[1])
local keys = redis.call('KEYS', '*')
table.sort(keys)
local acc = ''
for _, k in ipairs(keys) do
  local t = redis.call('TYPE', k)['ok']
  local v = ''
  if t == 'string' then v = redis.call('GET', k)
  elseif t == 'hash' then
    local h = redis.call('HGETALL', k)
    local f = {}
    for j = 1, #h, 2 do f[#f + 1] = h[j] .. '=' .. h[j + 1] end
    table.sort(f)
    v = table.concat(f, '\n')
  elseif t == 'list' then v = table.concat(redis.call('LRANGE', k, 0, -1), '\n')
  elseif t == 'set' then
    local m = redis.call('SMEMBERS', k)
    table.sort(m)
    v = table.concat(m, '\n')
  elseif t == 'zset' then v = table.concat(redis.call('ZRANGE', k, 0, -1, 'WITHSCORES'), '\n')
  end
  acc = redis.sha1hex(acc .. k .. '\0' .. t .. '\0' .. v)
end
return #keys .. ' ' .. acc
"#;

/// One scrape of kelp's `/metrics` at `addr`.
pub fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("metrics endpoint");
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.") && head.contains(" 200 "), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    body.to_string()
}
