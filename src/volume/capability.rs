//! Which CSI volume capabilities kelp serves: file-system (mount) volumes in any
//! access mode. Block volumes do not exist in JuiceFS.

use crate::error::{require, Error, Result};
use crate::proto::csi::{
    volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume},
    CapacityRange, CreateVolumeRequest, VolumeCapability,
};

/// Checks that every capability is one kelp serves: a mount (file system) volume, any
/// access mode, and ext-agnostic (`fs_type` empty or `juicefs`). Returns why not.
pub fn unsupported_capability(caps: &[VolumeCapability]) -> Option<String> {
    for cap in caps {
        match &cap.access_type {
            Some(AccessType::Mount(m)) => {
                if !m.fs_type.is_empty() && m.fs_type != "juicefs" {
                    return Some(format!("fs_type {:?} is not offered; kelp volumes are JuiceFS", m.fs_type));
                }
            }
            Some(AccessType::Block(_)) => {
                return Some("block access is not offered; create the volume with --type mount".into())
            }
            None => return Some("a capability has no access type".into()),
        }
        if mode(cap) == Mode::Unknown {
            return Some("a capability has no access mode".into());
        }
    }
    None
}

/// Validates the capability list of CreateVolume / ValidateVolumeCapabilities.
pub fn validate_capabilities(caps: &[VolumeCapability]) -> Result<()> {
    require(!caps.is_empty(), "volume capabilities are required")?;
    for cap in caps {
        require(cap.access_type.is_some(), "every volume capability needs an access type (mount)")?;
        require(cap.access_mode.is_some(), "every volume capability needs an access mode")?;
    }
    Ok(())
}

/// The one capability of a publish or stage request: present, well formed and served.
pub fn required_capability(cap: Option<VolumeCapability>) -> Result<VolumeCapability> {
    let cap = cap.ok_or_else(|| Error::InvalidArgument("volume_capability is required".into()))?;
    let one = std::slice::from_ref(&cap);
    validate_capabilities(one)?;
    if let Some(why) = unsupported_capability(one) {
        return Err(Error::InvalidArgument(why));
    }
    Ok(cap)
}

/// The capability's access mode (`Unknown` when absent or not one the spec knows).
pub fn mode(cap: &VolumeCapability) -> Mode {
    cap.access_mode.as_ref().and_then(|m| Mode::try_from(m.mode).ok()).unwrap_or(Mode::Unknown)
}

/// Whether the mode lets no node write.
pub fn is_reader_mode(mode: Mode) -> bool {
    matches!(mode, Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly)
}

/// A file-system capability with access mode `mode`.
pub fn mount_capability(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

/// A CreateVolume request for a file-system volume of `bytes` (0: unlimited), as
/// kelp's own clients (`kelp client`, `kelp-bench`) send it.
pub fn create_request(name: &str, bytes: i64, mode: Mode) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.to_string(),
        capacity_range: (bytes > 0).then_some(CapacityRange { required_bytes: bytes, limit_bytes: 0 }),
        volume_capabilities: vec![mount_capability(mode)],
        ..Default::default()
    }
}
