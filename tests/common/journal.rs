//! `tests/fixtures/journal_writer.py` writing into a volume, its acknowledgements
//! journalled outside the volume with their times, and the check that every
//! acknowledged step is on the volume.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct JournalWriter {
    child: std::process::Child,
    volume: PathBuf,
    journal: PathBuf,
    stop: PathBuf,
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Ack { seq: u64, at: f64 },
    Error { seq: u64, errno: String, at: f64 },
}

/// Seconds since the Unix epoch, as the writer stamps its journal.
pub fn unix_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

impl JournalWriter {
    /// Starts the writer on `volume` (created if needed); its journal lives in `dir`.
    /// `private_ns`: in its own mount namespace, as a container is.
    pub fn start(volume: &Path, dir: &Path, private_ns: bool) -> JournalWriter {
        std::fs::create_dir_all(volume).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let (journal, stop) = (dir.join("journal"), dir.join("stop"));
        let mut cmd = if private_ns {
            let mut c = std::process::Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "python3"]);
            c
        } else {
            std::process::Command::new("python3")
        };
        let child = cmd
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/journal_writer.py"))
            .args([volume, &journal, &stop])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 (and unshare)");
        JournalWriter { child, volume: volume.to_path_buf(), journal, stop }
    }

    pub fn entries(&self) -> Vec<Entry> {
        std::fs::read_to_string(&self.journal)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                match f.as_slice() {
                    ["ack", seq, at] => Some(Entry::Ack { seq: seq.parse().ok()?, at: at.parse().ok()? }),
                    ["error", seq, errno, at] => Some(Entry::Error {
                        seq: seq.parse().ok()?,
                        errno: errno.to_string(),
                        at: at.parse().ok()?,
                    }),
                    _ => None,
                }
            })
            .collect()
    }

    /// Acknowledged steps with their times.
    pub fn acked(&self) -> Vec<(u64, f64)> {
        self.entries()
            .into_iter()
            .filter_map(|e| match e {
                Entry::Ack { seq, at } => Some((seq, at)),
                _ => None,
            })
            .collect()
    }

    /// Where the writer's process waits in the kernel (its `wchan` and stack), for
    /// a report on a writer that stopped acknowledging.
    pub fn kernel_wait(&self) -> String {
        let pid = self.child.id();
        let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
        let stack = std::fs::read_to_string(format!("/proc/{pid}/stack")).unwrap_or_default();
        format!("wchan {wchan}; stack:\n{stack}")
    }

    /// Steps acknowledged so far.
    pub fn acks(&self) -> usize {
        self.acked().len()
    }

    /// Errors with their times.
    pub fn errors(&self) -> Vec<(String, f64)> {
        self.entries()
            .into_iter()
            .filter_map(|e| match e {
                Entry::Error { errno, at, .. } => Some((errno, at)),
                _ => None,
            })
            .collect()
    }

    /// Stops the writer (killing it if it has not ended within `within`, e.g. stuck on
    /// a fenced mount, and then not waiting for it) and returns its summary line, if it
    /// printed one.
    pub fn stop(mut self, within: Duration) -> Option<String> {
        std::fs::write(&self.stop, b"").unwrap();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let mut out = String::new();
                use std::io::Read;
                self.child.stdout.take()?.read_to_string(&mut out).ok()?;
                eprintln!("journal writer: {out}");
                return Some(out);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        // A writer blocked in a request to a stopped (fenced) juicefs cannot die until
        // that request ends, and it ends only when the mount is cleaned up: never wait
        // for it here.
        let gone = Instant::now() + Duration::from_secs(5);
        while Instant::now() < gone && !matches!(self.child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Stops the writer, checks that every step it acknowledged is on the volume, and
    /// returns its summary (steps, errors by errno, longest stall), parsed and as text.
    pub fn finish(self) -> (serde_json::Value, String) {
        let (volume, journal) = (self.volume.clone(), self.journal.clone());
        let summary = self.stop(Duration::from_secs(120)).expect("the writer ends when asked");
        let acked = acked_in(&journal);
        let missing = check_steps(&volume, acked.iter().map(|(n, _)| *n), true);
        assert!(missing.is_empty(), "acknowledged steps missing: {missing:?}");
        (serde_json::from_str(summary.trim()).expect("writer summary"), summary)
    }
}

impl Drop for JournalWriter {
    /// A test that fails half-way leaves no writer running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
    }
}

fn acked_in(journal: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(journal)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            match f.as_slice() {
                ["ack", seq, at] => Some((seq.parse().ok()?, at.parse().ok()?)),
                _ => None,
            }
        })
        .collect()
}

/// Checks the steps `seqs` of a writer whose volume directory is `volume` (which may
/// be another node's view of it): a step present must be whole (its record in
/// log.txt and its file with the right bytes); with `required`, it must be present.
/// Returns the steps that are absent. Panics on a step present but wrong.
pub fn check_steps(volume: &Path, seqs: impl IntoIterator<Item = u64>, required: bool) -> Vec<u64> {
    let log = std::fs::read_to_string(volume.join("log.txt")).unwrap_or_default();
    let mut missing = Vec::new();
    for n in seqs {
        let in_log = log.contains(&format!("record {n}\n"));
        match std::fs::read(volume.join(format!("f{n}"))) {
            Ok(f) => {
                assert_eq!(f, format!("file {n}\n").into_bytes(), "step {n}'s file f{n} holds other bytes");
                assert!(in_log || !required, "step {n}: its file is there but its log record is not");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push(n),
            Err(e) => panic!("reading f{n}: {e}"),
        }
        if required && !in_log && !missing.contains(&n) {
            missing.push(n);
        }
    }
    missing
}
