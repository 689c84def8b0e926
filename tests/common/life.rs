//! What the node tests and the soak share: kelp's own scrape, a volume's I/O coming
//! back, its processes, and its orderly end.

use super::csi::Clients;
use super::*;
use std::path::Path;
use std::time::Duration;
use tonic::Code;

pub fn sample(text: &str, family: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) || l.starts_with(&format!("{family} ")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

pub fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Retries a write/read until it works or `within` passes (recovery is asynchronous).
pub async fn eventually_io(path: &Path, within: Duration) {
    let probe = path.join(format!("probe-{}", std::process::id()));
    let back = poll_until_async(within, Duration::from_millis(300), || {
        let probe = probe.clone();
        async move {
            // Until the target is a JuiceFS mount again, a write would land in the bare directory.
            if !fs_type_at(path).is_some_and(|t| t.starts_with("fuse.juicefs")) {
                return None;
            }
            let io = tokio::task::spawn_blocking(move || {
                std::fs::write(&probe, b"alive").is_ok()
                    && std::fs::read(&probe).map(|d| d == b"alive").unwrap_or(false)
            });
            let ok = tokio::time::timeout(Duration::from_secs(5), io).await.ok().and_then(|r| r.ok());
            ok.unwrap_or(false).then_some(())
        }
    })
    .await;
    assert!(back.is_some(), "I/O at {} did not come back", path.display());
}

/// The juicefs daemons of the volumes of file system `fs_name` (their logs are
/// `logs/<fs name>[.<member>].log`).
pub fn juicefs_pids(fs_name: &str) -> Vec<i32> {
    juicefs_pids_with(&format!("logs/{fs_name}."))
}

/// The FUSE holders of a kelp with `state_dir` (their socket lies below it).
pub fn holder_pids(state_dir: &Path) -> Vec<i32> {
    pids_with_cmdline(&format!("hold-fuse --socket {}/fuse/", state_dir.display()))
}

pub async fn cleanup(c: &mut Clients, id: &str, staging: &Path, targets: &[&Path]) {
    for t in targets {
        c.unpublish(id, &s(t)).await.unwrap();
    }
    c.unstage(id, &s(staging)).await.unwrap();
    // A juicefs killed by a test leaves its session until two heartbeats have passed;
    // until then DeleteVolume refuses, and a CO retries, as this does.
    let deleted = poll_until_async(Duration::from_secs(60), Duration::from_secs(1), || {
        let (mut c, id) = (c.clone(), id.to_string());
        async move {
            match c.delete(&id).await {
                Err(e) if e.code() == Code::FailedPrecondition => None,
                done => Some(done),
            }
        }
    })
    .await;
    match deleted {
        Some(done) => done.unwrap(),
        None => c.delete(id).await.unwrap(), // still refused: fails with kelp's reason
    }
}

/// The last `n` lines of `text`, for failure messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
