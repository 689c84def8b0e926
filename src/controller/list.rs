//! ListVolumes paging. Tokens are `after:<fs name>` rather than offsets, so a token
//! stays valid while volumes are created or deleted between pages.

use super::provision::csi_volume;
use super::Backends;
use crate::error::{Error, Result};
use crate::meta::VolumeState;
use crate::proto::csi::{list_volumes_response::Entry, ListVolumesResponse};
use crate::volume::{self, Spec};

const TOKEN_PREFIX: &str = "after:";
/// Page size when the CO sets no limit.
const DEFAULT_PAGE: usize = 1000;

/// One page of ready volumes after `token`; `max_entries` 0 means the default page.
pub async fn page(b: &Backends, max_entries: i32, token: &str) -> Result<ListVolumesResponse> {
    if max_entries < 0 {
        return Err(Error::InvalidArgument("max_entries must not be negative".into()));
    }
    let after = if token.is_empty() {
        None
    } else {
        let name = token.strip_prefix(TOKEN_PREFIX).filter(|n| volume::is_valid_fs_name(n));
        Some(name.ok_or_else(|| Error::Aborted(format!("starting_token {token:?} was not issued by kelp")))?)
    };
    let page = if max_entries == 0 { DEFAULT_PAGE } else { max_entries as usize };
    // One extra name tells whether another page follows.
    let mut names = b.meta.volume_names_after(after, page + 1).await?;
    let more = names.len() > page;
    names.truncate(page);
    let mut entries = Vec::with_capacity(names.len());
    for fs_name in &names {
        let Some(rec) = b.meta.volume(fs_name).await? else { continue };
        if rec.state != VolumeState::Ready {
            continue;
        }
        let spec = Spec::of(&rec)?;
        let id = spec.id(rec.db, fs_name);
        entries.push(Entry { volume: Some(csi_volume(&id, &spec)), status: None });
    }
    let next_token = match names.last() {
        Some(last) if more => format!("{TOKEN_PREFIX}{last}"),
        _ => String::new(),
    };
    Ok(ListVolumesResponse { entries, next_token })
}
