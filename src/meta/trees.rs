//! Directory trees inside one JuiceFS file system, written natively: a volume's own
//! tree with its directory quota (tree layout), and point-in-time copies of a tree,
//! the mechanism under snapshots and clones (docs/snapshots.md).
//!
//! The copy is one Lua script on the server that holds the file system's writes, so
//! no commit can land half way through it: every write whose `fsync` returned before
//! the call is in the copy, and nothing is half renamed. It copies metadata only;
//! the copy shares the source's data objects, counted in juicefs's `sliceRef`, so
//! deleting files on either side frees an object only when neither still uses it.

use super::{Error, MetaServer, Result};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const COPY: &str = concat!(include_str!("lua/records.lua"), include_str!("lua/tree_copy.lua"));
const IMPORT: &str = concat!(include_str!("lua/records.lua"), include_str!("lua/tree_import.lua"));
const QUOTA: &str = concat!(include_str!("lua/records.lua"), include_str!("lua/tree_quota.lua"));

/// A walk of this many entries is already seconds of a server doing nothing else; a
/// copy gets that long to answer before the caller gives up waiting (the script
/// itself runs to its end either way).
const COPY_TIMEOUT: Duration = Duration::from_secs(120);

/// What a copy made: the new tree's top inode and how many entries it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    pub inode: u64,
    pub entries: u64,
}

/// Why a copy was refused; nothing was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NoSource,
    NotADirectory,
    Exists,
    InsideSource,
    TooMany(u64),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoSource => f.write_str("the source directory does not exist"),
            Refusal::NotADirectory => f.write_str("a path component is not a directory"),
            Refusal::Exists => f.write_str("the destination already exists"),
            Refusal::InsideSource => f.write_str("the destination lies inside the source"),
            Refusal::TooMany(max) => write!(
                f,
                "the source holds more than {max} entries; copying it would stall its metadata server; \
                 raise --snapshot-max-entries if a pause of that length is acceptable"
            ),
        }
    }
}

/// The refusal a script error names. The redis client renders a one-word error and
/// one with a detail differently, so the code is found in the text rather than taken
/// from either form.
fn refusal(text: &str) -> Option<Refusal> {
    let at = text.find("KELP_")?;
    let code: String = text[at..].chars().take_while(|c| c.is_ascii_uppercase() || *c == '_').collect();
    let rest = &text[at + code.len()..];
    let limit: String =
        rest.chars().skip_while(|c| !c.is_ascii_digit()).take_while(char::is_ascii_digit).collect();
    Some(match code.as_str() {
        "KELP_NO_SOURCE" => Refusal::NoSource,
        "KELP_NOT_A_DIRECTORY" | "KELP_BAD_DESTINATION" => Refusal::NotADirectory,
        "KELP_EXISTS" => Refusal::Exists,
        "KELP_INSIDE_SOURCE" => Refusal::InsideSource,
        "KELP_TOO_MANY" => Refusal::TooMany(limit.parse().unwrap_or(0)),
        _ => return None,
    })
}

impl MetaServer {
    /// Copies the directory at path `from` (components below the root) of the file
    /// system in `db` to the new path `to`, making missing directories on the way.
    /// Refuses, writing nothing, when the source holds more than `max_entries`.
    pub async fn copy_tree(&self, db: u32, from: &[&str], to: &[&str], max_entries: u64) -> Result<Copied> {
        let mut c = self.database(db).await?;
        let script = redis::Script::new(COPY);
        let mut invocation = script.prepare_invoke();
        invocation.arg(max_entries).arg(now_secs()).arg(from.len()).arg(from).arg(to.len()).arg(to);
        let run = invocation.invoke_async::<(String, u64)>(&mut c);
        let (inode, entries) = match tokio::time::timeout(COPY_TIMEOUT, run).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                return Err(
                    self.script_err(e, || format!("cannot copy /{} to /{}", from.join("/"), to.join("/")))
                )
            }
            Err(_) => {
                return Err(Error::Command {
                    server: self.url().to_string(),
                    detail: format!("copy of /{} did not answer within {COPY_TIMEOUT:?}", from.join("/")),
                })
            }
        };
        let inode = inode.parse().map_err(|_| Error::Corrupt {
            key: "nextinode".into(),
            detail: format!("the copy returned inode {inode:?}"),
        })?;
        Ok(Copied { inode, entries })
    }

    /// Writes a tree read from a backup (`tree`: the import script's arguments after
    /// its destination) at the new path `to` of the file system in `db`.
    pub async fn import_tree(&self, db: u32, to: &[&str], tree: &[Vec<u8>]) -> Result<Copied> {
        let mut c = self.database(db).await?;
        let script = redis::Script::new(IMPORT);
        let mut invocation = script.prepare_invoke();
        invocation.arg(now_secs()).arg(to.len()).arg(to).arg(tree);
        let run = invocation.invoke_async::<(String, u64)>(&mut c);
        let (inode, entries) = match tokio::time::timeout(COPY_TIMEOUT, run).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                return Err(self.script_err(e, || format!("cannot import a tree to /{}", to.join("/"))))
            }
            Err(_) => {
                return Err(Error::Command {
                    server: self.url().to_string(),
                    detail: format!("the import to /{} did not answer within {COPY_TIMEOUT:?}", to.join("/")),
                })
            }
        };
        let inode = inode.parse().map_err(|_| Error::Corrupt {
            key: "nextinode".into(),
            detail: format!("the import returned inode {inode:?}"),
        })?;
        Ok(Copied { inode, entries })
    }

    /// Makes the directory at `path` (and any missing parent) in the file system in
    /// `db` and sets its quota (0: no limit); on an existing directory, sets only the
    /// quota. Returns the directory's inode.
    pub async fn tree_with_quota(
        &self,
        db: u32,
        path: &[&str],
        max_bytes: u64,
        max_inodes: u64,
    ) -> Result<u64> {
        let mut c = self.database(db).await?;
        let script = redis::Script::new(QUOTA);
        let mut invocation = script.prepare_invoke();
        invocation.arg(now_secs()).arg(max_bytes).arg(max_inodes).arg(path.len()).arg(path);
        let inode: String = invocation
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.script_err(e, || format!("cannot make /{}", path.join("/"))))?;
        inode.parse().map_err(|_| Error::Corrupt {
            key: format!("d{}", path.join("/")),
            detail: format!("the tree's inode reads {inode:?}"),
        })
    }

    /// The inode of the directory at `path` in the file system in `db`, if there is
    /// one. A node asks before it mounts a tree-layout volume: `juicefs mount
    /// --subdir` makes a missing directory, which would hide a volume that is gone
    /// (or not yet replicated to this master) behind an empty one.
    pub async fn tree_inode(&self, db: u32, path: &[&str]) -> Result<Option<u64>> {
        let mut c = self.database(db).await?;
        let mut ino = 1u64;
        for name in path {
            let entry: Option<Vec<u8>> = redis::cmd("HGET")
                .arg(format!("d{ino}"))
                .arg(name)
                .query_async(&mut c)
                .await
                .map_err(|e| self.err(e))?;
            // An entry is the type (2: directory) and the inode, big-endian.
            match entry.as_deref() {
                Some([2, rest @ ..]) if rest.len() == 8 => {
                    ino = u64::from_be_bytes(rest.try_into().expect("eight bytes"));
                }
                _ => return Ok(None),
            }
        }
        Ok(Some(ino))
    }

    /// A tree script's error: the refusal it names (`what` says which operation), or
    /// the server's own failure.
    fn script_err(&self, e: redis::RedisError, what: impl FnOnce() -> String) -> Error {
        match refusal(&e.to_string()) {
            Some(why) => Error::TreeRefused { what: what(), why },
            None => self.err(e),
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_read_from_the_script_error() {
        assert_eq!(refusal("ResponseError: KELP_EXISTS"), Some(Refusal::Exists));
        assert_eq!(refusal("\"KELP_TOO_MANY\": 1000000"), Some(Refusal::TooMany(1_000_000)));
        assert_eq!(refusal("OOM command not allowed"), None);
    }
}
