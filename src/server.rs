//! The gRPC server: listening on the endpoint (unix socket or TCP), one log line per
//! RPC with a request id, method, volume and outcome, and a graceful drain on SIGTERM.

use crate::endpoint::Endpoint;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::server::Router;
use tracing::{field, info, info_span, warn, Instrument, Span};

/// Records the volume an RPC is about in the RPC's log line. As a field, so a caller's
/// control characters are escaped and cannot forge log lines.
pub fn record_volume(volume: &dyn std::fmt::Display) {
    Span::current().record("volume", field::display(volume));
}

/// How long SIGTERM waits for in-flight RPCs: below Docker's 30 s before SIGKILL.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `router` on `endpoint` until SIGTERM or SIGINT, then lets in-flight RPCs
/// finish (for at most [`DRAIN_LIMIT`]) before returning.
pub async fn serve(
    router: Router<tower::layer::util::Stack<RpcLogLayer, tower::layer::util::Identity>>,
    endpoint: &Endpoint,
) -> std::io::Result<()> {
    let stopping = std::sync::Arc::new(tokio::sync::Notify::new());
    let shutdown = {
        let stopping = stopping.clone();
        async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            info!(limit_secs = DRAIN_LIMIT.as_secs(), "shutting down: draining in-flight RPCs");
            stopping.notify_one();
        }
    };
    // Graceful shutdown also waits for idle client connections to close, which a CO
    // may never do: the drain is bounded.
    let drain_limit = async move {
        stopping.notified().await;
        tokio::time::sleep(DRAIN_LIMIT).await;
        warn!("drain limit reached; exiting with RPCs or connections still open");
    };
    let serving: std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>>>> =
        match endpoint {
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
                Box::pin(router.serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown))
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
                Box::pin(router.serve_with_incoming_shutdown(incoming, shutdown))
            }
        };
    let result = tokio::select! {
        r = serving => r,
        () = drain_limit => Ok(()),
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
                    // Errors travel as trailers-only responses: the status is in the headers.
                    let code = match tonic::Status::from_header_map(r.headers()) {
                        None => tonic::Code::Ok,
                        Some(st) if st.code() == tonic::Code::Ok => tonic::Code::Ok,
                        Some(st) => {
                            warn!(ms, outcome = ?st.code(), message = st.message(), "rpc");
                            st.code()
                        }
                    };
                    if code == tonic::Code::Ok {
                        info!(ms, outcome = "OK", "rpc");
                    }
                    crate::metrics::metrics().rpc(&method, code, start.elapsed());
                }
                resp
            }
            .instrument(span),
        )
    }
}
