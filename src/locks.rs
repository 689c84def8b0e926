//! Per-volume operation guard: RPCs for one volume run one at a time, RPCs for
//! different volumes run in parallel. A caller that cannot get the guard within the
//! wait gets `Aborted`, the code CSI reserves for "an operation is pending for this
//! volume", and the CO retries. A sweep over all volumes at once (the node's reaper)
//! takes [`VolumeLocks::try_all`]: it runs only while no operation on any volume does,
//! so it never sees a mount or process an operation has made but not yet recorded.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{
    Mutex as AsyncMutex, OwnedMutexGuard, OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock,
};

/// How long an RPC waits for another RPC on the same volume: below Swarm's 15 s
/// deadline, so the caller gets a clean `Aborted` and retries.
pub const RPC_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Default)]
pub struct VolumeLocks {
    inner: Arc<Mutex<HashMap<String, Arc<AsyncMutex<()>>>>>,
    /// Shared by every operation, exclusive for a sweep.
    all: Arc<RwLock<()>>,
}

/// Held while an operation runs; dropping it lets the next one in.
pub struct Guard {
    _guard: OwnedMutexGuard<()>,
    _all: OwnedRwLockReadGuard<()>,
    key: String,
    locks: VolumeLocks,
}

impl VolumeLocks {
    /// Waits up to [`RPC_WAIT`] for the volume's guard, on behalf of an RPC.
    pub async fn lock_rpc(&self, key: &str) -> Result<Guard> {
        self.lock(key, RPC_WAIT).await
    }

    /// Waits up to `wait` for the volume's guard.
    pub async fn lock(&self, key: &str, wait: Duration) -> Result<Guard> {
        let m = self.inner.lock().expect("lock map").entry(key.to_string()).or_default().clone();
        let both = async {
            let all = self.all.clone().read_owned().await;
            (m.lock_owned().await, all)
        };
        match tokio::time::timeout(wait, both).await {
            Ok((g, all)) => Ok(Guard { _guard: g, _all: all, key: key.to_string(), locks: self.clone() }),
            Err(_) => Err(Error::Aborted(format!(
                "another operation on volume {key} is still running; retry later"
            ))),
        }
    }

    /// Every volume at once, if no operation on any volume runs or waits now (a
    /// sweep never waits: it tries again on its next pass).
    pub fn try_all(&self) -> Option<OwnedRwLockWriteGuard<()>> {
        if !self.inner.lock().expect("lock map").is_empty() {
            return None;
        }
        self.all.clone().try_write_owned().ok()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Forget the entry when nobody else holds or waits for it, so the map does
        // not grow with every volume ever seen.
        let mut map = self.locks.inner.lock().expect("lock map");
        if let Some(m) = map.get(&self.key) {
            if Arc::strong_count(m) <= 2 {
                map.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn same_volume_serialises_other_volumes_do_not() {
        let locks = VolumeLocks::default();
        let a = locks.lock("a", Duration::from_millis(10)).await.unwrap();
        let _b = locks.lock("b", Duration::from_millis(10)).await.unwrap();
        let err = locks.lock("a", Duration::from_millis(20)).await.err().unwrap();
        assert!(matches!(err, Error::Aborted(_)));
        drop(a);
        let _a2 = locks.lock("a", Duration::from_millis(10)).await.unwrap();
    }

    #[tokio::test]
    async fn a_sweep_runs_only_while_no_operation_does() {
        let locks = VolumeLocks::default();
        let a = locks.lock("a", Duration::from_millis(10)).await.unwrap();
        assert!(locks.try_all().is_none(), "an operation runs");
        drop(a);
        let all = locks.try_all().expect("nothing runs");
        let err = locks.lock("a", Duration::from_millis(20)).await.err().unwrap();
        assert!(matches!(err, Error::Aborted(_)), "operations wait for the sweep");
        drop(all);
        let _a = locks.lock("a", Duration::from_millis(10)).await.unwrap();
    }
}
