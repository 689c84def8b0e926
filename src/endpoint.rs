//! Where a kelp driver listens and how its clients (`kelp client`, `kelp-bench`, the
//! tests) reach it: a unix socket or a TCP address.

use std::path::PathBuf;
use tonic::transport::Channel;

#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("endpoint {0:?} must be unix:///absolute/path or tcp://host:port")]
    Bad(String),
    #[error("cannot reach kelp at {endpoint}: {source}; check that `kelp serve` runs there")]
    Unreachable { endpoint: String, source: tonic::transport::Error },
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Endpoint, Error> {
        if let Some(p) = s.strip_prefix("unix://") {
            let p = PathBuf::from(p);
            if !p.is_absolute() {
                return Err(Error::Bad(s.into()));
            }
            Ok(Endpoint::Unix(p))
        } else if let Some(a) = s.strip_prefix("tcp://") {
            Ok(Endpoint::Tcp(a.to_string()))
        } else if s.starts_with('/') {
            Ok(Endpoint::Unix(PathBuf::from(s)))
        } else {
            Err(Error::Bad(s.into()))
        }
    }

    /// Opens a gRPC channel to the driver.
    pub async fn connect(&self) -> Result<Channel, Error> {
        let err = |source| Error::Unreachable { endpoint: self.to_string(), source };
        match self {
            Endpoint::Unix(path) => {
                let path = path.clone();
                // The URI is required by tonic and never dialled: the connector is.
                tonic::transport::Endpoint::from_static("http://kelp.invalid")
                    .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                        let path = path.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                        }
                    }))
                    .await
                    .map_err(err)
            }
            Endpoint::Tcp(addr) => tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .map_err(err)?
                .tcp_nodelay(true)
                .connect()
                .await
                .map_err(err),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// Connects to the driver at `endpoint` (`unix:///path` or `tcp://host:port`).
pub async fn connect(endpoint: &str) -> Result<Channel, Error> {
    Endpoint::parse(endpoint)?.connect().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(Endpoint::parse("unix:///run/k.sock").unwrap(), Endpoint::Unix("/run/k.sock".into()));
        assert_eq!(Endpoint::parse("tcp://127.0.0.1:1").unwrap(), Endpoint::Tcp("127.0.0.1:1".into()));
        assert_eq!(Endpoint::parse("/run/k.sock").unwrap().to_string(), "unix:///run/k.sock");
        assert!(Endpoint::parse("unix://rel").is_err());
        assert!(Endpoint::parse("http://x").is_err());
    }
}
