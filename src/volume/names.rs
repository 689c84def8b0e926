//! Mapping a free-form Swarm volume name to valid JuiceFS and bucket names.

use crate::error::{require, Result};
use sha2::{Digest, Sha256};

/// Every bucket kelp makes carries this prefix, so kelp never adopts or deletes a
/// bucket it did not make.
pub const BUCKET_PREFIX: &str = "kelp-";
/// Longest JuiceFS name that still leaves room for the prefix in a 63-byte bucket name.
const MAX_FS_NAME: usize = 63 - BUCKET_PREFIX.len();
const MAX_NAME: usize = 1024;

pub fn bucket_for(fs_name: &str) -> String {
    format!("{BUCKET_PREFIX}{fs_name}")
}

/// JuiceFS's name rule, further limited so the bucket name fits too.
pub fn is_valid_fs_name(s: &str) -> bool {
    let b = s.as_bytes();
    (3..=MAX_FS_NAME).contains(&b.len())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Maps any volume name to a valid file-system name, deterministically. Valid names
/// are kept; others are lower-cased, stripped to `[a-z0-9-]`, shortened, and given
/// a hash of the original so that `Media` and `media` stay two volumes.
pub fn fs_name_for(name: &str) -> String {
    if is_valid_fs_name(name) {
        return name.to_string();
    }
    let mut base = String::with_capacity(name.len());
    for c in name.chars().flat_map(char::to_lowercase) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' };
        if !(c == '-' && (base.is_empty() || base.ends_with('-'))) {
            base.push(c);
        }
    }
    base.truncate(MAX_FS_NAME - 9);
    let base = base.trim_end_matches('-');
    let hash = Sha256::digest(name.as_bytes());
    let suffix: String = hash[..4].iter().map(|b| format!("{b:02x}")).collect();
    if base.is_empty() {
        format!("vol-{suffix}")
    } else {
        format!("{base}-{suffix}")
    }
}

/// Checks the volume name the CO chose.
pub fn validate_name(name: &str) -> Result<()> {
    require(!name.is_empty(), "volume name is required")?;
    require(
        name.len() <= MAX_NAME,
        format!("volume name is {} bytes; at most {MAX_NAME} are accepted", name.len()),
    )?;
    require(!name.chars().any(char::is_control), "volume name contains control characters")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_deterministically_to_valid_names() {
        assert_eq!(fs_name_for("media"), "media");
        for name in ["Media", "my_vol", "x", "---", "ÜberVolume", &"a".repeat(300), "a b/c:d"] {
            let fs = fs_name_for(name);
            assert!(is_valid_fs_name(&fs), "{name:?} -> {fs:?}");
            assert_eq!(fs, fs_name_for(name));
            assert!(bucket_for(&fs).len() <= 63);
        }
        assert_ne!(fs_name_for("Media"), fs_name_for("media"));
        assert_ne!(fs_name_for("a_b"), fs_name_for("a.b"));
    }
}
