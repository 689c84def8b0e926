//! A family database's dump as kelp stores it (the backup object's bytes; `backup`
//! stores and restores it, this client reads and writes its keys): a manifest
//! (JSON) and every key of one volume family's database, each with its type and
//! elements as commands read them, then a SHA-256 of everything before it. Typed elements rather than `DUMP` payloads, because a
//! `DUMP` payload carries its server's RDB version and `RESTORE` refuses one from a
//! newer server: a backup taken on Valkey 8 must load into KeyDB 6 and back.
//!
//! Layout (all lengths u32 big-endian):
//! `KELPBAK1\n`, manifest length, manifest JSON, key count (u64), then per key: type
//! byte, key, element count, elements (each length + bytes), then the 32-byte digest.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const MAGIC: &[u8] = b"KELPBAK1\n";

/// A key's type as Redis names it, one byte in the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One element: the value.
    String,
    /// Field, value, field, value, ...
    Hash,
    /// The elements in order.
    List,
    /// The members.
    Set,
    /// Member, score (as the server prints it), member, score, ...
    ZSet,
}

impl Kind {
    pub fn from_type(t: &str) -> Option<Kind> {
        Some(match t {
            "string" => Kind::String,
            "hash" => Kind::Hash,
            "list" => Kind::List,
            "set" => Kind::Set,
            "zset" => Kind::ZSet,
            _ => return None,
        })
    }
    fn byte(self) -> u8 {
        match self {
            Kind::String => b's',
            Kind::Hash => b'h',
            Kind::List => b'l',
            Kind::Set => b'S',
            Kind::ZSet => b'z',
        }
    }
    fn from_byte(b: u8) -> Option<Kind> {
        [Kind::String, Kind::Hash, Kind::List, Kind::Set, Kind::ZSet].into_iter().find(|k| k.byte() == b)
    }
}

/// One key of the database and its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub name: Vec<u8>,
    pub kind: Kind,
    pub elements: Vec<Vec<u8>>,
}

/// A registry record of a volume of the family, as database 0 holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeEntry {
    /// The record's name key (`kelp:vol:<name>`): the founder's fs name, or a clone's.
    pub name: String,
    pub db: u32,
    pub state: String,
    pub spec: String,
    /// A clone's member tag in its family (`None` for the founder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
}

/// What a restore needs besides the keys, and what `backup list` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The family's file system (its founder's fs name, the bucket's suffix).
    pub family: String,
    /// The database the keys were read from (the family's live generation).
    pub source_db: u32,
    /// When the script ran: every write committed before it is in the backup.
    pub taken_unix: i64,
    /// The master it ran on (no password).
    pub server: String,
    pub keys: u64,
    /// Inodes (files, directories, links) in the file system.
    pub inodes: u64,
    /// `nextchunk` at the backup: every slice id above it was written after.
    pub next_chunk: u64,
    /// How long the server did nothing else (the script's run time, milliseconds).
    pub stall_ms: u64,
    /// The founder first, then the clones.
    pub volumes: Vec<VolumeEntry>,
    /// The family's snapshot records (`kelp:snaps` values), as JSON.
    pub snapshots: Vec<String>,
}

pub const FORMAT: u32 = 1;

/// Why bytes are not a backup.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadBackup {
    #[error("not a kelp backup (no KELPBAK1 header)")]
    Magic,
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("the checksum does not match: the object is damaged")]
    Checksum,
    #[error("manifest: {0}")]
    Manifest(String),
    #[error("unknown key type {0:#x}")]
    Kind(u8),
    #[error("backup format {0} is newer than this kelp reads ({FORMAT})")]
    Format(u32),
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// The object's bytes.
pub fn encode(manifest: &Manifest, keys: &[Key]) -> Vec<u8> {
    let json = serde_json::to_vec(manifest).expect("a manifest serialises");
    let size: usize =
        keys.iter().map(|k| 9 + k.name.len() + k.elements.iter().map(|e| 4 + e.len()).sum::<usize>()).sum();
    let mut out = Vec::with_capacity(MAGIC.len() + json.len() + size + 48);
    out.extend_from_slice(MAGIC);
    put_bytes(&mut out, &json);
    out.extend_from_slice(&(keys.len() as u64).to_be_bytes());
    for k in keys {
        out.push(k.kind.byte());
        put_bytes(&mut out, &k.name);
        out.extend_from_slice(&(k.elements.len() as u32).to_be_bytes());
        for e in &k.elements {
            put_bytes(&mut out, e);
        }
    }
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BadBackup> {
        let end =
            self.at.checked_add(n).filter(|&e| e <= self.b.len()).ok_or(BadBackup::Truncated(self.at))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<usize, BadBackup> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize)
    }
    fn bytes(&mut self) -> Result<&'a [u8], BadBackup> {
        let n = self.u32()?;
        self.take(n)
    }
}

/// Only the manifest, checking the header but not the digest (for listings).
pub fn manifest(bytes: &[u8]) -> Result<Manifest, BadBackup> {
    let mut r = Reader { b: bytes, at: 0 };
    if r.take(MAGIC.len()).ok() != Some(MAGIC) {
        return Err(BadBackup::Magic);
    }
    let m: Manifest = serde_json::from_slice(r.bytes()?).map_err(|e| BadBackup::Manifest(e.to_string()))?;
    if m.format > FORMAT {
        return Err(BadBackup::Format(m.format));
    }
    Ok(m)
}

/// The manifest and every key, after checking the digest.
pub fn decode(bytes: &[u8]) -> Result<(Manifest, Vec<Key>), BadBackup> {
    if bytes.len() < MAGIC.len() + 32 {
        return Err(BadBackup::Truncated(bytes.len()));
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    let m = manifest(body)?;
    if Sha256::digest(body).as_slice() != digest {
        return Err(BadBackup::Checksum);
    }
    let mut r = Reader { b: body, at: MAGIC.len() };
    r.bytes()?;
    let count = u64::from_be_bytes(r.take(8)?.try_into().expect("8 bytes"));
    let mut keys = Vec::with_capacity(count.min(1 << 24) as usize);
    for _ in 0..count {
        let t = r.take(1)?[0];
        let kind = Kind::from_byte(t).ok_or(BadBackup::Kind(t))?;
        let name = r.bytes()?.to_vec();
        let n = r.u32()?;
        let mut elements = Vec::with_capacity(n.min(1 << 20));
        for _ in 0..n {
            elements.push(r.bytes()?.to_vec());
        }
        keys.push(Key { name, kind, elements });
    }
    Ok((m, keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn manifest_for(family: &str, taken: i64) -> Manifest {
        Manifest {
            format: FORMAT,
            family: family.into(),
            source_db: 3,
            taken_unix: taken,
            server: "redis://m1:6379".into(),
            keys: 2,
            inodes: 1,
            next_chunk: 7,
            stall_ms: 1,
            volumes: vec![VolumeEntry {
                name: family.into(),
                db: 3,
                state: "ready".into(),
                spec: "{}".into(),
                member: None,
            }],
            snapshots: vec![],
        }
    }

    #[test]
    fn a_backup_reads_back_as_written_and_damage_is_found() {
        let keys = vec![
            Key { name: b"i1".to_vec(), kind: Kind::String, elements: vec![vec![0, 1, 255]] },
            Key { name: b"d1".to_vec(), kind: Kind::Hash, elements: vec![b"a".to_vec(), vec![2, 0, 0]] },
            Key { name: b"delfiles".to_vec(), kind: Kind::ZSet, elements: vec![] },
        ];
        let m = manifest_for("vol", 100);
        let bytes = encode(&m, &keys);
        assert_eq!(decode(&bytes).unwrap(), (m.clone(), keys));
        assert_eq!(manifest(&bytes).unwrap(), m);
        let mut flipped = bytes.clone();
        let mid = flipped.len() - 40;
        flipped[mid] ^= 1;
        assert_eq!(decode(&flipped).unwrap_err(), BadBackup::Checksum);
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert_eq!(decode(&[b'x'; 64]).unwrap_err(), BadBackup::Magic);
    }
}
