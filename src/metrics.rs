//! Prometheus metrics: one scrape target per node (`--metrics-addr`, `/metrics`),
//! covering kelp's RPCs, every staged volume and the juicefs daemons behind them.
//!
//! Counters of events live in [`metrics()`] for the process's life. What describes
//! the present (mount health, usage, lease and heartbeat age, backend reachability) is
//! measured when Prometheus asks, by the sources the services register, so a scrape
//! never shows a value older than itself. Each volume's juicefs serves its own
//! metrics on a loopback port; they are fetched at scrape time and passed on with the
//! volume's name added as the label `kelp_volume`. Labels carry names, ids and roles,
//! never a URL or a credential.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tracing::{info, warn};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

/// A volume as a node serves it: `master` is `local` or `home`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VolumeLabels {
    pub volume: String,
    pub volume_id: String,
    pub node: String,
    pub master: String,
}

impl VolumeLabels {
    pub fn new(id: &crate::volume::VolumeId, node: &str, home: bool) -> VolumeLabels {
        VolumeLabels {
            volume: id.fs_name.clone(),
            volume_id: id.to_string(),
            node: node.into(),
            master: if home { "home" } else { "local" }.into(),
        }
    }
}

/// A volume event with its kind (e.g. a fence's cause, a publish's decision).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub volume: String,
    pub volume_id: String,
    pub node: String,
    pub kind: String,
}

/// What the node's reaper ended: `holder`, `juicefs` or `mount`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

type Seconds = Counter<f64, AtomicU64>;

/// The process's event counters.
pub struct Metrics {
    registry: Registry,
    pub rpcs: Family<RpcLabels, Counter>,
    pub rpc_seconds: Family<MethodLabels, Histogram, fn() -> Histogram>,
    pub remounts: Family<VolumeLabels, Counter>,
    pub wedges_healed: Family<VolumeLabels, Counter>,
    pub fence_waits: Family<VolumeLabels, Counter>,
    pub fence_wait_seconds: Family<VolumeLabels, Seconds>,
    pub fences: Family<EventLabels, Counter>,
    pub publishes: Family<EventLabels, Counter>,
    pub reaped: Family<KindLabels, Counter>,
}

fn rpc_histogram() -> Histogram {
    // 1 ms to about 33 s: a NodeStage that mounts takes about half a second.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process's counters, registered on first use.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(|| {
        let mut registry = Registry::with_prefix("kelp");
        let m = Metrics {
            rpcs: Family::default(),
            rpc_seconds: Family::new_with_constructor(rpc_histogram as fn() -> Histogram),
            remounts: Family::default(),
            wedges_healed: Family::default(),
            fence_waits: Family::default(),
            fence_wait_seconds: Family::default(),
            fences: Family::default(),
            publishes: Family::default(),
            reaped: Family::default(),
            registry: Registry::default(),
        };
        registry.register("rpc_requests", "CSI RPCs served, by method and gRPC code", m.rpcs.clone());
        registry.register("rpc_duration_seconds", "Time to serve a CSI RPC", m.rpc_seconds.clone());
        registry.register(
            "volume_remounts",
            "Dead or missing staged mounts this node mounted again (or resumed on their held FUSE connection)",
            m.remounts.clone(),
        );
        registry.register(
            "volume_wedges_healed",
            "Wedged staged mounts (the metadata master answers, the mount answered nothing for --wedged-after) whose juicefs this node ended, so a new one answers the stuck requests",
            m.wedges_healed.clone(),
        );
        registry.register(
            "volume_fence_waits",
            "Stages that waited for the previous single writer's fence to replicate",
            m.fence_waits.clone(),
        );
        registry.register(
            "volume_fence_wait_seconds",
            "Time stages spent waiting for the previous writer's fence",
            m.fence_wait_seconds.clone(),
        );
        registry.register(
            "volume_fences",
            "Times this node fenced a leased writer: kind lease_lapsed (I/O stopped) or taken_over (cut off)",
            m.fences.clone(),
        );
        registry.register(
            "volume_publishes",
            "Single-writer publishes decided by the controller: kind grant, handover, takeover or refused",
            m.publishes.clone(),
        );
        registry.register(
            "node_reaped",
            "FUSE holders, juicefs daemons and JuiceFS mounts of this node's that no staged volume owned, ended by the node: kind holder, juicefs or mount",
            m.reaped.clone(),
        );
        Metrics { registry, ..m }
    })
}

impl Metrics {
    pub fn rpc(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        let code = format!("{code:?}");
        self.rpcs.get_or_create(&RpcLabels { method: method.into(), code }).inc();
        self.rpc_seconds
            .get_or_create(&MethodLabels { method: method.into() })
            .observe(elapsed.as_secs_f64());
    }
}

/// Gauges measured at scrape time, into a registry made for that scrape.
pub struct Snapshot {
    pub registry: Registry,
}

impl Default for Snapshot {
    fn default() -> Snapshot {
        Snapshot { registry: Registry::with_prefix("kelp") }
    }
}

impl Snapshot {
    /// A gauge family registered in this snapshot.
    pub fn family<L>(&mut self, name: &str, help: &str) -> Family<L, Gauge<f64, AtomicU64>>
    where
        L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
    {
        let f = Family::<L, Gauge<f64, AtomicU64>>::default();
        self.registry.register(name, help, f.clone());
        f
    }

    /// A gauge without labels registered in this snapshot.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        let g = Gauge::<f64, AtomicU64>::default();
        g.set(value);
        self.registry.register(name, help, g);
    }
}

/// Produces a part of the scrape (text format) when Prometheus asks.
pub type Source = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

/// Encodes a registry, without the OpenMetrics end marker: the parts of a scrape are
/// joined, and served as the text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode_registry(&mut out, registry) {
        warn!(error = %e, "cannot encode metrics");
    }
    out
}

/// The whole scrape: the counters, then every source.
pub async fn scrape(sources: &[Source]) -> String {
    let mut out = encode(&metrics().registry);
    let mut build = Snapshot::default();
    let info = Family::<Vec<(String, String)>, Gauge>::default();
    info.get_or_create(&vec![("version".into(), env!("CARGO_PKG_VERSION").into())]).set(1);
    build.registry.register("build_info", "The running kelp's version", info);
    out.push_str(&encode(&build.registry));
    for s in sources {
        out.push_str(&s().await);
    }
    out
}

/// Serves `/metrics` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, sources: Vec<Source>) -> std::io::Result<()> {
    use axum::http::header::CONTENT_TYPE;
    let sources = Arc::new(sources);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let sources = sources.clone();
            async move {
                // The text format, which Prometheus parses leniently: the juicefs parts
                // are not OpenMetrics, and one strict violation would fail the scrape.
                ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], scrape(&sources).await)
            }
        }),
    );
    info!(addr = %listener.local_addr()?, "serving Prometheus metrics at /metrics");
    axum::serve(listener, app).await
}

/// Fetches a juicefs daemon's metrics from `addr` (its `--metrics` listener) and
/// returns them with the labels `kelp_volume="<volume>"` and `kelp_volume_id` added
/// to every sample; `None` when it does not answer within `timeout`.
pub async fn juicefs_metrics(
    addr: SocketAddr,
    labels: &[(&str, &str)],
    timeout: Duration,
) -> Option<Vec<ForeignFamily>> {
    let body = tokio::time::timeout(timeout, http_get(addr, "/metrics")).await.ok()??;
    Some(relabel(&body, labels))
}

/// The text of a juicefs scrape at `addr`, as it is.
pub async fn scrape_text(addr: SocketAddr, timeout: Duration) -> Option<String> {
    tokio::time::timeout(timeout, http_get(addr, "/metrics")).await.ok()?
}

/// One metric family of a foreign scrape: its HELP and TYPE lines, and its samples.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ForeignFamily {
    pub name: String,
    pub meta: Vec<String>,
    pub samples: Vec<String>,
}

async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let ok = head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200");
    ok.then(|| body.to_string())
}

/// Splits a text-format scrape into families and adds `labels` (`kelp_volume`, and
/// `kelp_volume_id` since the members of a family share the volume name) to each
/// sample.
pub fn relabel(text: &str, labels: &[(&str, &str)]) -> Vec<ForeignFamily> {
    let escaped: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))
        })
        .collect();
    let escaped = escaped.join(",");
    let mut families: Vec<ForeignFamily> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE ")) {
            let name = rest.split(' ').next().unwrap_or_default();
            match families.last_mut() {
                Some(f) if f.name == name => f.meta.push(line.to_string()),
                _ => families.push(ForeignFamily {
                    name: name.into(),
                    meta: vec![line.into()],
                    samples: Vec::new(),
                }),
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.find('{') {
            Some(open) => {
                let close = line.rfind('}').unwrap_or(line.len());
                let inner = &line[open + 1..close];
                let sep = if inner.is_empty() { "" } else { "," };
                (format!("{}{{{escaped}{sep}{inner}}}", &line[..open]), &line[close + 1..])
            }
            None => {
                let (name, value) = line.split_once(' ').unwrap_or((line, ""));
                (format!("{name}{{{escaped}}}"), value)
            }
        };
        let sample = format!("{series} {}", value.trim());
        match families.last_mut() {
            Some(f) => f.samples.push(sample),
            None => {
                families.push(ForeignFamily { name: String::new(), meta: Vec::new(), samples: vec![sample] })
            }
        }
    }
    families
}

/// Joins the families of several scrapes: each family's HELP and TYPE once, then all
/// its samples, as the text format requires.
pub fn merge(parts: Vec<Vec<ForeignFamily>>) -> String {
    let mut merged: Vec<ForeignFamily> = Vec::new();
    for f in parts.into_iter().flatten() {
        match merged.iter_mut().find(|m| m.name == f.name) {
            Some(m) => m.samples.extend(f.samples),
            None => merged.push(f),
        }
    }
    let mut out = String::new();
    for f in merged {
        for l in f.meta.iter().chain(&f.samples) {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_families_get_the_volume_label_and_merge_once() {
        let a = "# HELP juicefs_uptime Total running time.\n# TYPE juicefs_uptime gauge\njuicefs_uptime{mp=\"/x\",vol_name=\"v\"} 12.5\n# HELP juicefs_used_space x\n# TYPE juicefs_used_space gauge\njuicefs_used_space 4096\n";
        let b = "# HELP juicefs_uptime Total running time.\n# TYPE juicefs_uptime gauge\njuicefs_uptime{mp=\"/y\",vol_name=\"w\"} 3\n";
        let out = merge(vec![relabel(a, &[("kelp_volume", "v\"1")]), relabel(b, &[("kelp_volume", "w")])]);
        assert_eq!(out.matches("# TYPE juicefs_uptime gauge").count(), 1, "{out}");
        assert!(
            out.contains("juicefs_uptime{kelp_volume=\"v\\\"1\",mp=\"/x\",vol_name=\"v\"} 12.5"),
            "{out}"
        );
        assert!(out.contains("juicefs_uptime{kelp_volume=\"w\",mp=\"/y\",vol_name=\"w\"} 3"), "{out}");
        assert!(out.contains("juicefs_used_space{kelp_volume=\"v\\\"1\"} 4096"), "{out}");
        let uptime = out.find("juicefs_uptime{kelp_volume=\"w\"").unwrap();
        assert!(
            uptime < out.find("# HELP juicefs_used_space").unwrap(),
            "a family's samples stay together:\n{out}"
        );
    }
}
