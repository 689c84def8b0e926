//! SeaweedFS buckets through the filer's gRPC API: a bucket is a directory under
//! `/buckets` whose data lives in the collection of the same name. Using the filer
//! rather than the S3 gateway means no request signing and a delete that drops the
//! whole collection in one call.

mod topology;

pub use topology::{Replication, Topology};

use crate::proto::filer::{
    seaweed_filer_client::SeaweedFilerClient, CreateEntryRequest, DeleteEntryRequest, Entry, FuseAttributes,
    ListEntriesRequest, LookupDirectoryEntryRequest, StatisticsRequest, UpdateEntryRequest,
};
use std::time::Duration;
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};

const BUCKETS_DIR: &str = "/buckets";
const CONF_DIR: &str = "/etc/seaweedfs";
const CONF_NAME: &str = "filer.conf";
/// The largest filer message kelp sends or accepts (SeaweedFS's own is 1 GiB).
const MAX_MESSAGE: usize = 512 << 20;
/// Go's `os.ModeDir`, which the filer expects in a directory's mode.
const MODE_DIR: u32 = 1 << 31;

/// Errors of the SeaweedFS layer; messages name the filer and say what to check.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "SeaweedFS filer {filer} is unreachable ({detail}); check that it runs and that --filer points at it"
    )]
    Unreachable { filer: String, detail: String },
    #[error("SeaweedFS filer {filer} refused {op}: {detail}")]
    Refused { filer: String, op: &'static str, detail: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// The status's message and the innermost error below it: tonic says only "tcp connect
/// error", while what an operator needs is "Connection refused", "timed out" or
/// "Cannot assign requested address".
fn with_cause(s: &tonic::Status) -> String {
    let mut cause = std::error::Error::source(s);
    let mut innermost = None;
    while let Some(e) = cause {
        innermost = Some(e.to_string());
        cause = e.source();
    }
    match innermost {
        Some(c) if !s.message().contains(&c) => format!("{}: {c}", s.message()),
        _ => s.message().to_string(),
    }
}

/// Cluster-wide space as the filer reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterSpace {
    pub total_bytes: u64,
    pub used_bytes: u64,
}

/// A filer; cheap to clone (one HTTP/2 channel shared by all clones).
#[derive(Clone)]
pub struct Filer {
    addr: String,
    client: SeaweedFilerClient<Channel>,
    /// filer.conf is read-modify-written; serialise this process's edits.
    conf_lock: std::sync::Arc<Mutex<()>>,
}

impl Filer {
    /// `grpc_addr` is `host:port` of the filer's gRPC listener (HTTP port + 10000 by
    /// default). The channel connects lazily, so a filer that starts later is fine.
    pub fn new(grpc_addr: &str) -> Result<Filer> {
        let endpoint = Endpoint::from_shared(format!("http://{grpc_addr}"))
            .map_err(|e| Error::Unreachable { filer: grpc_addr.into(), detail: e.to_string() })?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10));
        Ok(Filer {
            addr: grpc_addr.to_string(),
            // A backup object travels whole in one message (`put_small_file`), and tonic
            // refuses a reply above 4 MiB by default; SeaweedFS's own limit is 1 GiB.
            client: SeaweedFilerClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            conf_lock: Default::default(),
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn status(&self, op: &'static str, s: tonic::Status) -> Error {
        match s.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                Error::Unreachable { filer: self.addr.clone(), detail: with_cause(&s) }
            }
            _ => Error::Refused { filer: self.addr.clone(), op, detail: s.message().to_string() },
        }
    }

    fn refused(&self, op: &'static str, detail: String) -> Error {
        Error::Refused { filer: self.addr.clone(), op, detail }
    }

    /// Answers whether the filer is up (used by Probe).
    pub async fn ping(&self) -> Result<()> {
        self.lookup(BUCKETS_DIR, ".").await.map(|_| ())
    }

    async fn lookup(&self, dir: &str, name: &str) -> Result<Option<Entry>> {
        let req = LookupDirectoryEntryRequest { directory: dir.into(), name: name.into() };
        match self.client.clone().lookup_directory_entry(req).await {
            Ok(r) => Ok(r.into_inner().entry),
            Err(s) if s.code() == tonic::Code::NotFound || is_not_found(s.message()) => Ok(None),
            Err(s) => Err(self.status("lookup", s)),
        }
    }

    /// Creates the bucket or, if it exists, sets its quota. Idempotent.
    pub async fn ensure_bucket(&self, bucket: &str, quota_bytes: u64) -> Result<()> {
        let quota = quota_bytes.min(i64::MAX as u64) as i64;
        match self.lookup(BUCKETS_DIR, bucket).await? {
            Some(mut e) if e.is_directory => {
                if e.quota != quota {
                    e.quota = quota;
                    self.update(BUCKETS_DIR, e).await?;
                }
                Ok(())
            }
            Some(_) => {
                Err(self.refused("create bucket", format!("{BUCKETS_DIR}/{bucket} exists and is a file")))
            }
            None => self.create(BUCKETS_DIR, dir_entry(bucket, quota), "create bucket").await,
        }
    }

    /// Names of the buckets whose names start with `prefix`, in name order (kelp's
    /// own start with its prefix; the naming is the caller's, not the filer's).
    pub async fn buckets_with_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let mut after = String::new();
        loop {
            let req = ListEntriesRequest {
                directory: BUCKETS_DIR.into(),
                prefix: prefix.into(),
                start_from_file_name: after.clone(),
                inclusive_start_from: false,
                limit: 1000,
                ..Default::default()
            };
            let mut stream = self
                .client
                .clone()
                .list_entries(req)
                .await
                .map_err(|s| self.status("list buckets", s))?
                .into_inner();
            let before = names.len();
            while let Some(r) = stream.message().await.map_err(|s| self.status("list buckets", s))? {
                if let Some(e) = r.entry.filter(|e| e.is_directory) {
                    names.push(e.name);
                }
            }
            match names.last() {
                Some(last) if names.len() - before == 1000 => after = last.clone(),
                _ => return Ok(names),
            }
        }
    }

    /// Sets a bucket's quota (bytes, 0 = none). SeaweedFS enforces it from the S3
    /// gateway, about once a minute; JuiceFS's own Capacity is the exact limit.
    pub async fn set_quota(&self, bucket: &str, quota_bytes: u64) -> Result<()> {
        self.ensure_bucket(bucket, quota_bytes).await
    }

    /// Writes a small file whose bytes live inline in the filer entry.
    pub async fn put_small_file(&self, bucket: &str, path: &str, content: &[u8]) -> Result<()> {
        let full = format!("{BUCKETS_DIR}/{bucket}/{}", path.trim_start_matches('/'));
        let (dir, name) = full.rsplit_once('/').expect("path has a slash");
        self.create(dir, file_entry(name, content.to_vec()), "write file").await
    }

    /// The content of a file written by [`Filer::put_small_file`]; `None` when missing.
    pub async fn get_small_file(&self, bucket: &str, path: &str) -> Result<Option<Vec<u8>>> {
        let full = format!("{BUCKETS_DIR}/{bucket}/{}", path.trim_start_matches('/'));
        let (dir, name) = full.rsplit_once('/').expect("path has a slash");
        match self.lookup(dir, name).await? {
            Some(e)
                if !e.is_directory
                    && e.attributes.as_ref().is_none_or(|a| a.file_size == e.content.len() as u64) =>
            {
                Ok(Some(e.content))
            }
            Some(_) => Err(self.refused("read file", format!("{full} is a directory or stored in chunks"))),
            None => Ok(None),
        }
    }

    /// Names and sizes of the files (not directories) in `dir` of the bucket, in name
    /// order; none when the directory does not exist.
    pub async fn list_files(&self, bucket: &str, dir: &str) -> Result<Vec<(String, u64)>> {
        let all = self.list_dir(bucket, dir).await?;
        Ok(all.into_iter().filter(|(_, is_dir, _)| !is_dir).map(|(n, _, size)| (n, size)).collect())
    }

    /// Every entry of `dir` of the bucket: name, whether a directory, size; none when
    /// the directory does not exist.
    pub async fn list_dir(&self, bucket: &str, dir: &str) -> Result<Vec<(String, bool, u64)>> {
        let directory = format!("{BUCKETS_DIR}/{bucket}/{}", dir.trim_matches('/'));
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let req = ListEntriesRequest {
                directory: directory.clone(),
                start_from_file_name: after.clone(),
                inclusive_start_from: false,
                limit: 1000,
                ..Default::default()
            };
            let mut stream = match self.client.clone().list_entries(req).await {
                Ok(r) => r.into_inner(),
                Err(s) if s.code() == tonic::Code::NotFound || is_not_found(s.message()) => return Ok(out),
                Err(s) => return Err(self.status("list files", s)),
            };
            let mut got = 0;
            while let Some(r) = stream.message().await.map_err(|s| self.status("list files", s))? {
                if let Some(e) = r.entry {
                    got += 1;
                    after = e.name.clone();
                    let size = e.attributes.map_or(0, |a| a.file_size);
                    out.push((e.name, e.is_directory, size));
                }
            }
            if got < 1000 {
                return Ok(out);
            }
        }
    }

    /// Deletes one file of the bucket; a missing one is already deleted.
    pub async fn delete_file(&self, bucket: &str, path: &str) -> Result<()> {
        let full = format!("{BUCKETS_DIR}/{bucket}/{}", path.trim_start_matches('/'));
        let (dir, name) = full.rsplit_once('/').expect("path has a slash");
        let req = DeleteEntryRequest {
            directory: dir.into(),
            name: name.into(),
            is_delete_data: true,
            ..Default::default()
        };
        let resp = self.client.clone().delete_entry(req).await.map_err(|s| self.status("delete file", s))?;
        let err = resp.into_inner().error;
        if !err.is_empty() && !is_not_found(&err) {
            return Err(self.refused("delete file", err));
        }
        Ok(())
    }

    /// Deletes the bucket with every object in it; the filer drops the bucket's
    /// collection as a whole. Deleting a missing bucket succeeds.
    pub async fn delete_bucket(&self, bucket: &str) -> Result<()> {
        let req = DeleteEntryRequest {
            directory: BUCKETS_DIR.into(),
            name: bucket.into(),
            is_delete_data: true,
            is_recursive: true,
            ignore_recursive_error: false,
            ..Default::default()
        };
        let resp =
            self.client.clone().delete_entry(req).await.map_err(|s| self.status("delete bucket", s))?;
        let err = resp.into_inner().error;
        if !err.is_empty() && !is_not_found(&err) {
            return Err(self.refused("delete bucket", err));
        }
        self.set_bucket_rule(bucket, None).await
    }

    /// Sets (or with `None` removes) the bucket's rule in filer.conf, as `weed shell
    /// fs.configure` does.
    pub async fn set_bucket_rule(&self, bucket: &str, rule: Option<&BucketRule>) -> Result<()> {
        let _guard = self.conf_lock.lock().await;
        let prefix = format!("{BUCKETS_DIR}/{bucket}/");
        let current = self.lookup(CONF_DIR, CONF_NAME).await?;
        if current
            .as_ref()
            .is_some_and(|e| e.content.is_empty() && e.attributes.as_ref().is_some_and(|a| a.file_size > 0))
        {
            return Err(self.refused(
                "set the bucket rule",
                format!("{CONF_DIR}/{CONF_NAME} is stored in chunks; set the rule for {prefix} with `weed shell fs.configure`"),
            ));
        }
        let text = current.as_ref().map(|e| e.content.as_slice()).unwrap_or_default();
        let Some(updated) = edit_filer_conf(text, &prefix, rule)
            .map_err(|e| self.refused("set the bucket rule", format!("{CONF_DIR}/{CONF_NAME}: {e}")))?
        else {
            return Ok(());
        };
        self.create(CONF_DIR, file_entry(CONF_NAME, updated), "set the bucket rule").await
    }

    /// Total and used bytes of the cluster's volume servers.
    pub async fn space(&self) -> Result<ClusterSpace> {
        let r = self
            .client
            .clone()
            .statistics(StatisticsRequest::default())
            .await
            .map_err(|s| self.status("statistics", s))?
            .into_inner();
        Ok(ClusterSpace { total_bytes: r.total_size, used_bytes: r.used_size })
    }

    async fn create(&self, dir: &str, entry: Entry, op: &'static str) -> Result<()> {
        let req = CreateEntryRequest { directory: dir.into(), entry: Some(entry), ..Default::default() };
        let resp = self.client.clone().create_entry(req).await.map_err(|s| self.status(op, s))?;
        let err = resp.into_inner().error;
        if err.is_empty() {
            Ok(())
        } else {
            Err(self.refused(op, err))
        }
    }

    async fn update(&self, dir: &str, entry: Entry) -> Result<()> {
        let req = UpdateEntryRequest { directory: dir.into(), entry: Some(entry), ..Default::default() };
        self.client.clone().update_entry(req).await.map_err(|s| self.status("update entry", s))?;
        Ok(())
    }
}

/// The filer reports a missing entry in words, not codes.
fn is_not_found(msg: &str) -> bool {
    msg.contains("not found") || msg.contains("no entry is found")
}

/// A small file whose bytes live inline in the entry (no volume server involved).
fn file_entry(name: &str, content: Vec<u8>) -> Entry {
    let now = crate::unix_now();
    Entry {
        name: name.into(),
        attributes: Some(FuseAttributes {
            file_size: content.len() as u64,
            file_mode: 0o644,
            mtime: now,
            crtime: now,
            ..Default::default()
        }),
        content,
        ..Default::default()
    }
}

fn dir_entry(name: &str, quota: i64) -> Entry {
    let now = crate::unix_now();
    Entry {
        name: name.into(),
        is_directory: true,
        quota,
        attributes: Some(FuseAttributes {
            file_mode: MODE_DIR | 0o755,
            mtime: now,
            crtime: now,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Why filer.conf could not be edited.
#[derive(Debug, thiserror::Error)]
enum BadConf {
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Shape(&'static str),
}

/// Returns filer.conf (protobuf JSON) with the rule for `prefix` set to `replication`
/// or removed; `None` when nothing changes. Other rules and fields are kept as they are.
/// What kelp asks of SeaweedFS for one bucket's path (a filer.conf location rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketRule {
    /// Replication code; `None` keeps the cluster default.
    pub replication: Option<String>,
    /// Volume servers fsync each write before acknowledging it. Measured on weed 4.48:
    /// it applies to S3 PUTs too (one fsync of the volume's .dat file per object).
    pub fsync: bool,
}

impl BucketRule {
    /// The rule, or `None` when it would ask for nothing (no rule is needed).
    pub fn needed(self) -> Option<BucketRule> {
        (self.replication.is_some() || self.fsync).then_some(self)
    }
}

/// Sets (`Some`) or removes (`None`) the location rule for `prefix`, keeping every
/// other rule. `Ok(None)`: nothing to change.
fn edit_filer_conf(
    text: &[u8],
    prefix: &str,
    rule: Option<&BucketRule>,
) -> std::result::Result<Option<Vec<u8>>, BadConf> {
    use serde_json::{json, Value};
    let mut conf: Value = if text.iter().all(u8::is_ascii_whitespace) {
        json!({"version": 0, "locations": []})
    } else {
        serde_json::from_slice(text)?
    };
    let locations = conf
        .as_object_mut()
        .ok_or(BadConf::Shape("not a JSON object"))?
        .entry("locations")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .ok_or(BadConf::Shape("locations is not a list"))?;
    let pos = locations.iter().position(|l| l["locationPrefix"] == prefix);
    let wanted = rule.map(|r| {
        let mut l = json!({"locationPrefix": prefix});
        if let Some(rep) = &r.replication {
            l["replication"] = json!(rep);
        }
        if r.fsync {
            l["fsync"] = json!(true);
        }
        l
    });
    match (pos, wanted) {
        (None, None) => return Ok(None),
        (Some(i), None) => {
            locations.remove(i);
        }
        (Some(i), Some(w)) => {
            if locations[i] == w {
                return Ok(None);
            }
            locations[i] = w;
        }
        (None, Some(w)) => locations.push(w),
    }
    Ok(Some(serde_json::to_vec_pretty(&conf)?))
}

#[cfg(test)]
mod tests {
    use super::{edit_filer_conf, BucketRule};

    #[test]
    fn filer_conf_rules_are_added_changed_and_removed() {
        let rule = |r: Option<&str>, fsync| BucketRule { replication: r.map(String::from), fsync };
        let added = edit_filer_conf(b"", "/buckets/a/", Some(&rule(Some("010"), true))).unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&added).unwrap();
        assert_eq!(v["locations"][0]["replication"], "010");
        assert_eq!(v["locations"][0]["fsync"], true);
        assert!(edit_filer_conf(&added, "/buckets/a/", Some(&rule(Some("010"), true))).unwrap().is_none());
        let relaxed =
            edit_filer_conf(&added, "/buckets/a/", Some(&rule(Some("010"), false))).unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&relaxed).unwrap();
        assert!(v["locations"][0].get("fsync").is_none(), "{v}");
        let other = br#"{"version":0,"locations":[{"locationPrefix":"/x/","ttl":"1d"}]}"#;
        let both = edit_filer_conf(other, "/buckets/a/", Some(&rule(Some("001"), false))).unwrap().unwrap();
        let removed = edit_filer_conf(&both, "/buckets/a/", None).unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&removed).unwrap();
        assert_eq!(v["locations"].as_array().unwrap().len(), 1);
        assert_eq!(v["locations"][0]["ttl"], "1d");
        assert!(edit_filer_conf(b"[1]", "/b/", Some(&rule(Some("1"), true))).is_err());
        assert_eq!(rule(None, false).needed(), None);
    }
}
