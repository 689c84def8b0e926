//! What a kelp volume is, independent of any RPC: its id, its names, its parameters,
//! its capacity, the capabilities it serves, the contexts it travels with, and the
//! spec the registry keeps.

mod capability;
mod capacity;
mod context;
mod id;
mod names;
mod params;
mod spec;

pub use capability::{
    create_request, is_reader_mode, mode, mount_capability, required_capability, unsupported_capability,
    validate_capabilities,
};
pub use capacity::{capacity_fits, capacity_for, check_capacity_for_blocks};
pub use context::{context_keys, publish_keys, volume_context, PublishContext};
pub use id::{SnapshotId, VolumeId, MEMBERS_DIR};
pub use names::{bucket_for, fs_name_for, is_valid_fs_name, validate_name, BUCKET_PREFIX};
pub use params::{Layout, Params, PARAM_KEYS};
pub use spec::Spec;
