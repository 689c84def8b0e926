//! Capacity rules shared by CreateVolume, its idempotent repeat and expansion.

use crate::error::{Error, Result};
use crate::proto::csi::CapacityRange;

/// Chooses the capacity for a new volume: the required size if given, else the
/// limit, else unlimited (0).
pub fn capacity_for(range: Option<&CapacityRange>) -> Result<u64> {
    let Some(r) = range else { return Ok(0) };
    if r.required_bytes < 0 || r.limit_bytes < 0 {
        return Err(Error::OutOfRange("capacity must not be negative".into()));
    }
    if r.limit_bytes > 0 && r.required_bytes > r.limit_bytes {
        return Err(Error::OutOfRange(format!(
            "required_bytes {} is above limit_bytes {}",
            r.required_bytes, r.limit_bytes
        )));
    }
    Ok(if r.required_bytes > 0 { r.required_bytes } else { r.limit_bytes } as u64)
}

/// A capacity smaller than one JuiceFS block cannot hold a single full block: every
/// write past the first bytes would fail, so such a size is refused up front.
pub fn check_capacity_for_blocks(capacity: u64, block_size_kib: u32) -> Result<()> {
    let block = u64::from(block_size_kib) * 1024;
    if capacity != 0 && capacity < block {
        return Err(Error::OutOfRange(format!(
            "a capacity of {capacity} bytes is smaller than one JuiceFS block ({block} bytes); ask for at least that much, or set a smaller block-size"
        )));
    }
    Ok(())
}

/// Whether an existing volume of `capacity` (0 = unlimited) satisfies `range`.
pub fn capacity_fits(capacity: u64, range: Option<&CapacityRange>) -> bool {
    let Some(r) = range else { return true };
    let required = r.required_bytes.max(0) as u64;
    let limit = r.limit_bytes.max(0) as u64;
    if capacity == 0 {
        return required == 0 && limit == 0;
    }
    capacity >= required && (limit == 0 || capacity <= limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_rules() {
        let r = |req, lim| CapacityRange { required_bytes: req, limit_bytes: lim };
        assert_eq!(capacity_for(None).unwrap(), 0);
        assert_eq!(capacity_for(Some(&r(10, 20))).unwrap(), 10);
        assert_eq!(capacity_for(Some(&r(0, 20))).unwrap(), 20);
        assert!(capacity_for(Some(&r(30, 20))).is_err());
        assert!(capacity_fits(10, Some(&r(10, 10))));
        assert!(!capacity_fits(10, Some(&r(20, 0))));
        assert!(!capacity_fits(0, Some(&r(20, 0))));
        assert!(capacity_fits(0, None));
        assert!(check_capacity_for_blocks(0, 4096).is_ok());
        assert!(check_capacity_for_blocks(4 << 20, 4096).is_ok());
        assert!(matches!(check_capacity_for_blocks(1, 4096), Err(Error::OutOfRange(_))));
    }
}
