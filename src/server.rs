//! The gRPC server: endpoint handling (unix socket or TCP), one log line per RPC with
//! a request id, method, volume and outcome, and a graceful drain on SIGTERM.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::server::Router;
use tracing::{field, info, info_span, warn, Instrument, Span};

/// Where the server listens.
#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        if let Some(p) = s.strip_prefix("unix://") {
            let p = PathBuf::from(p);
            if !p.is_absolute() {
                return Err(format!("unix endpoint {s:?} needs an absolute path (unix:///run/kelp.sock)"));
            }
            Ok(Endpoint::Unix(p))
        } else if let Some(a) = s.strip_prefix("tcp://") {
            Ok(Endpoint::Tcp(a.to_string()))
        } else if s.starts_with('/') {
            Ok(Endpoint::Unix(PathBuf::from(s)))
        } else {
            Err(format!("endpoint {s:?} must be unix:///path or tcp://host:port"))
        }
    }
}

/// Records the volume an RPC is about in the RPC's log span.
pub fn record_volume(volume: &str) {
    Span::current().record("volume", volume);
}

/// Serves `router` on `endpoint` until SIGTERM or SIGINT, then lets in-flight RPCs
/// finish before returning.
pub async fn serve(
    router: Router<tower::layer::util::Stack<RpcLogLayer, tower::layer::util::Identity>>,
    endpoint: &Endpoint,
) -> std::io::Result<()> {
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        info!("shutting down: draining in-flight RPCs");
    };
    let result = match endpoint {
        Endpoint::Unix(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            // A socket left by a killed process would make bind fail.
            match std::fs::remove_file(path) {
                Ok(()) => info!(path = %path.display(), "replaced stale socket"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let listener = tokio::net::UnixListener::bind(path)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
            info!(endpoint = %path.display(), "listening");
            router.serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown).await
        }
        Endpoint::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            info!(endpoint = %listener.local_addr()?, "listening");
            // Small RPCs over HTTP/2 stall on Nagle's algorithm without this.
            let incoming = tokio_stream::StreamExt::map(TcpListenerStream::new(listener), |s| {
                s.inspect(|s| {
                    let _ = s.set_nodelay(true);
                })
            });
            router.serve_with_incoming_shutdown(incoming, shutdown).await
        }
    };
    if let Endpoint::Unix(path) = endpoint {
        let _ = std::fs::remove_file(path);
    }
    result.map_err(std::io::Error::other)
}

/// Tower layer that wraps every RPC in a span and logs its outcome.
#[derive(Clone, Default)]
pub struct RpcLogLayer;

impl<S> tower::Layer<S> for RpcLogLayer {
    type Service = RpcLog<S>;
    fn layer(&self, inner: S) -> RpcLog<S> {
        RpcLog { inner }
    }
}

#[derive(Clone)]
pub struct RpcLog<S> {
    inner: S,
}

static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

impl<S, B, RB> tower::Service<http::Request<B>> for RpcLog<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().rsplit('/').next().unwrap_or_default().to_string();
        let id = NEXT_REQUEST.fetch_add(1, Ordering::Relaxed);
        let span = info_span!("rpc", request_id = id, method = %method, volume = field::Empty);
        // The clone that was made ready must serve this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(
            async move {
                let start = Instant::now();
                let resp = inner.call(req).await;
                let ms = start.elapsed().as_secs_f64() * 1000.0;
                if let Ok(r) = &resp {
                    // Errors travel as trailers-only responses: grpc-status in the headers.
                    match r.headers().get("grpc-status").and_then(|v| v.to_str().ok()) {
                        None | Some("0") => info!(ms, outcome = "OK", "rpc"),
                        Some(code) => {
                            let code = tonic::Code::from_i32(code.parse().unwrap_or(2));
                            let msg = r
                                .headers()
                                .get("grpc-message")
                                .and_then(|v| v.to_str().ok())
                                .map(|m| percent_decode(m))
                                .unwrap_or_default();
                            warn!(ms, outcome = ?code, message = %msg, "rpc")
                        }
                    }
                }
                resp
            }
            .instrument(span),
        )
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() + 1 {
            if let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..(i + 3).min(b.len())]).unwrap_or(""), 16)
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Opens a channel to a unix or TCP endpoint.
pub async fn connect(endpoint: &str) -> Result<tonic::transport::Channel, String> {
    let err = |e: tonic::transport::Error| format!("cannot reach kelp at {endpoint}: {e}");
    if let Some(path) = endpoint.strip_prefix("unix://") {
        let path = PathBuf::from(path);
        tonic::transport::Endpoint::try_from("http://kelp.invalid")
            .map_err(err)?
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .map_err(err)
    } else {
        let addr = endpoint.strip_prefix("tcp://").unwrap_or(endpoint);
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(err)?
            .connect()
            .await
            .map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(Endpoint::parse("unix:///run/k.sock").unwrap(), Endpoint::Unix("/run/k.sock".into()));
        assert_eq!(Endpoint::parse("tcp://127.0.0.1:1").unwrap(), Endpoint::Tcp("127.0.0.1:1".into()));
        assert!(Endpoint::parse("unix://rel").is_err());
        assert!(Endpoint::parse("http://x").is_err());
        assert_eq!(percent_decode("a%20b%"), "a b%");
    }
}
