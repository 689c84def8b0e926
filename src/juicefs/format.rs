//! The JuiceFS `setting` document and the two inode records that `juicefs format`
//! writes, produced here so that provisioning needs no subprocess.
//!
//! The output is byte-for-byte what juicefs 1.4 writes for an S3 volume (same field
//! order, same one-level-per-line JSON layout, same 72-byte attribute records), so a
//! volume made by kelp cannot be told apart from one made by hand; the integration
//! tests compare the two on a real server.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use base64::Engine;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Inode number of the root directory.
pub const ROOT_INODE: u64 = 1;
/// Inode number of the trash directory (0x7FFFFFFF10000000), present when TrashDays > 0.
pub const TRASH_INODE: u64 = 0x7FFF_FFFF_1000_0000;

/// File-system settings, field order exactly as juicefs serialises them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Setting {
    pub name: String,
    #[serde(rename = "UUID")]
    pub uuid: String,
    pub storage: String,
    #[serde(default)]
    pub tiers: BTreeMap<String, Tier>,
    pub bucket: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub access_key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_key: String,
    pub block_size: u32,
    pub compression: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub capacity: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inodes: u64,
    #[serde(default)]
    pub encrypt_algo: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub key_encrypted: bool,
    pub trash_days: u32,
    pub meta_version: u32,
    pub min_client_version: String,
    pub dir_stats: bool,
    #[serde(rename = "EnableACL")]
    pub enable_acl: bool,
}

/// Storage tier record; juicefs 1.4 always writes tier "0" with empty values.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Tier {
    #[serde(rename = "ID")]
    pub id: u32,
    pub storage_class: String,
    pub tag: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}

/// What a caller chooses about a new file system; everything else is fixed by format.
#[derive(Debug, Clone)]
pub struct FormatSpec {
    pub name: String,
    pub uuid: String,
    /// Full bucket URL, e.g. `http://127.0.0.1:8333/kelp-media`.
    pub bucket_url: String,
    pub access_key: String,
    pub secret_key: String,
    pub block_size_kib: u32,
    pub compression: String,
    pub capacity_bytes: u64,
    pub inodes: u64,
    pub trash_days: u32,
}

impl Setting {
    /// Builds the setting as `juicefs format` would, with the secret key encrypted
    /// (`KeyEncrypted`) so that a dump of the database does not reveal it.
    pub fn new(spec: &FormatSpec) -> Setting {
        let mut tiers = BTreeMap::new();
        tiers.insert("0".to_string(), Tier::default());
        let (secret_key, key_encrypted) = if spec.secret_key.is_empty() {
            (String::new(), false)
        } else {
            (encrypt_secret(&spec.uuid, &spec.secret_key), true)
        };
        Setting {
            name: spec.name.clone(),
            uuid: spec.uuid.clone(),
            storage: "s3".into(),
            tiers,
            bucket: spec.bucket_url.clone(),
            access_key: spec.access_key.clone(),
            secret_key,
            block_size: spec.block_size_kib,
            compression: spec.compression.clone(),
            capacity: spec.capacity_bytes,
            inodes: spec.inodes,
            encrypt_algo: "aes256gcm-rsa".into(),
            key_encrypted,
            trash_days: spec.trash_days,
            meta_version: 1,
            min_client_version: "1.1.0-A".into(),
            dir_stats: true,
            enable_acl: false,
        }
    }

    /// Serialises with Go's `json.MarshalIndent(v, "", "")` layout.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(512);
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        self.serialize(&mut ser).expect("setting serialises");
        String::from_utf8(out).expect("utf-8 json")
    }

    pub fn from_json(s: &str) -> Result<Setting, serde_json::Error> {
        serde_json::from_str(s)
    }
}

/// Encrypts an object-store secret the way juicefs does: AES-128-GCM keyed by
/// md5(UUID), random 12-byte nonce, base64(nonce || ciphertext || tag).
pub fn encrypt_secret(uuid: &str, plain: &str) -> String {
    let key = Md5::digest(uuid.as_bytes());
    let cipher = Aes128Gcm::new_from_slice(&key).expect("16-byte key");
    let nonce_bytes: [u8; 12] = rand::random();
    let sealed = cipher
        .encrypt(Nonce::from_slice(&nonce_bytes), plain.as_bytes())
        .expect("in-memory AES-GCM cannot fail");
    let mut buf = nonce_bytes.to_vec();
    buf.extend_from_slice(&sealed);
    base64::engine::general_purpose::STANDARD.encode(buf)
}

/// Inverse of [`encrypt_secret`]; `None` when the value was not sealed with this UUID.
pub fn decrypt_secret(uuid: &str, sealed: &str) -> Option<String> {
    let raw = base64::engine::general_purpose::STANDARD.decode(sealed).ok()?;
    if raw.len() < 12 + 16 {
        return None;
    }
    let key = Md5::digest(uuid.as_bytes());
    let cipher = Aes128Gcm::new_from_slice(&key).ok()?;
    let plain = cipher.decrypt(Nonce::from_slice(&raw[..12]), &raw[12..]).ok()?;
    String::from_utf8(plain).ok()
}

/// The 72-byte big-endian attribute record of a directory owned by root.
pub fn dir_attr(perm: u16, now_secs: i64) -> [u8; 72] {
    let mut b = [0u8; 72];
    let mut w = Writer { buf: &mut b, pos: 0 };
    w.u8(0); // flags
    w.u16((2 << 12) | (perm & 0o7777)); // type directory
    w.u32(0); // uid
    w.u32(0); // gid
    for _ in 0..3 {
        w.i64(now_secs); // atime, mtime, ctime
        w.u32(0); // nanoseconds
    }
    w.u32(2); // nlink
    w.u64(4096); // length
    w.u32(0); // rdev
    w.u64(ROOT_INODE); // parent
    w.u8(0);
    debug_assert_eq!(w.pos, 72);
    b
}

/// Root directory: 0777 (mode 0x21FF).
pub fn root_attr(now_secs: i64) -> [u8; 72] {
    dir_attr(0o777, now_secs)
}

/// Trash directory: 0555 (mode 0x216D).
pub fn trash_attr(now_secs: i64) -> [u8; 72] {
    dir_attr(0o555, now_secs)
}

struct Writer<'a> {
    buf: &'a mut [u8; 72],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }
    fn u8(&mut self, v: u8) {
        self.put(&[v]);
    }
    fn u16(&mut self, v: u16) {
        self.put(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.put(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.put(&v.to_be_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.put(&v.to_be_bytes());
    }
}

/// Redis key of an inode's attribute record.
pub fn inode_key(ino: u64) -> String {
    format!("i{ino}")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written by `juicefs format` 1.4.2 (`--access-key AKIDKELP --secret-key s3cr3tKELP`).
    const REAL_UUID: &str = "b8c67aae-34a3-4130-a190-6eaf970385c3";
    const REAL_SEALED: &str = "EOM1ZdFbi9gou6DXIN/nTjuOhSkTWW19merHSxIhOL8bzKe/FUM=";
    const REAL_ROOT: &[u8] = b"\x00!\xff\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00k\x02\xc9\xe1\x00\x00\x00\x00\x00\x00\x00\x00k\x02\xc9\xe1\x00\x00\x00\x00\x00\x00\x00\x00k\x02\xc9\xe1\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x10\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00";
    const REAL_SETTING: &str = "{\n\"Name\": \"s3vol\",\n\"UUID\": \"b8c67aae-34a3-4130-a190-6eaf970385c3\",\n\"Storage\": \"s3\",\n\"Tiers\": {\n\"0\": {\n\"ID\": 0,\n\"StorageClass\": \"\",\n\"Tag\": \"\"\n}\n},\n\"Bucket\": \"http://127.0.0.1:18333/jfsb\",\n\"AccessKey\": \"AKIDKELP\",\n\"SecretKey\": \"EOM1ZdFbi9gou6DXIN/nTjuOhSkTWW19merHSxIhOL8bzKe/FUM=\",\n\"BlockSize\": 4096,\n\"Compression\": \"none\",\n\"EncryptAlgo\": \"aes256gcm-rsa\",\n\"KeyEncrypted\": true,\n\"TrashDays\": 1,\n\"MetaVersion\": 1,\n\"MinClientVersion\": \"1.1.0-A\",\n\"DirStats\": true,\n\"EnableACL\": false\n}";

    #[test]
    fn decrypts_a_secret_sealed_by_juicefs() {
        assert_eq!(decrypt_secret(REAL_UUID, REAL_SEALED).as_deref(), Some("s3cr3tKELP"));
        assert_eq!(decrypt_secret("other-uuid", REAL_SEALED), None);
    }

    #[test]
    fn secret_round_trips_and_is_not_plain() {
        let sealed = encrypt_secret(REAL_UUID, "hunter2");
        assert!(!sealed.contains("hunter2"));
        assert_eq!(decrypt_secret(REAL_UUID, &sealed).as_deref(), Some("hunter2"));
    }

    #[test]
    fn root_attr_matches_juicefs_bytes() {
        assert_eq!(&root_attr(0x6b02_c9e1)[..], REAL_ROOT);
        let trash = trash_attr(0x6b02_c9e1);
        assert_eq!(&trash[1..3], &[0x21, 0x6d]);
    }

    #[test]
    fn setting_json_is_byte_identical_to_juicefs() {
        let spec = FormatSpec {
            name: "s3vol".into(),
            uuid: REAL_UUID.into(),
            bucket_url: "http://127.0.0.1:18333/jfsb".into(),
            access_key: "AKIDKELP".into(),
            secret_key: "s3cr3tKELP".into(),
            block_size_kib: 4096,
            compression: "none".into(),
            capacity_bytes: 0,
            inodes: 0,
            trash_days: 1,
        };
        let mut s = Setting::new(&spec);
        // The nonce is random; pin it to the one juicefs chose to compare bytes.
        s.secret_key = REAL_SEALED.into();
        assert_eq!(s.to_json(), REAL_SETTING);
        assert_eq!(Setting::from_json(REAL_SETTING).unwrap(), s);
    }
}
