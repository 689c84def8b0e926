//! The cluster's shape as the SeaweedFS master sees it, so a replication code is
//! checked when a volume is created instead of at its first write: a bucket whose
//! replication the cluster cannot place makes every upload wait for a volume that is
//! never grown ("no writable volumes ... volume growth in progress"), and the
//! application's writes hang.

use super::{Error, Filer, Result};
use crate::proto::filer::GetFilerConfigurationRequest;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Servers per rack, racks per data center.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Topology {
    pub data_centers: Vec<Vec<usize>>,
}

/// A SeaweedFS replication code `xyz`: copies in x other data centres, y other racks,
/// z other servers of the same rack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replication {
    pub other_dcs: usize,
    pub other_racks: usize,
    pub other_servers: usize,
}

impl Replication {
    /// SeaweedFS's own rule (checked against weed 4.48): three digits, and at most 2
    /// other data centres ("unexpected replication type" otherwise).
    pub fn parse(code: &str) -> Option<Replication> {
        let d: Vec<usize> = code.bytes().map(|b| b.wrapping_sub(b'0') as usize).collect();
        (d.len() == 3 && d.iter().all(|&x| x <= 9) && d[0] <= 2).then(|| Replication {
            other_dcs: d[0],
            other_racks: d[1],
            other_servers: d[2],
        })
    }
}

impl Topology {
    /// Whether one copy can go to a server of its own in the places the code asks for.
    pub fn can_place(&self, r: Replication) -> bool {
        self.data_centers.len() > r.other_dcs
            && self.data_centers.iter().any(|racks| {
                racks.iter().filter(|&&servers| servers > 0).count() > r.other_racks
                    && racks.iter().any(|&servers| servers > r.other_servers)
            })
    }

    pub fn describe(&self) -> String {
        let racks: usize = self.data_centers.iter().map(Vec::len).sum();
        let servers: usize = self.data_centers.iter().flatten().sum();
        let most = self.data_centers.iter().flatten().max().copied().unwrap_or(0);
        format!(
            "{} data centre(s), {racks} rack(s), {servers} volume server(s), at most {most} in one rack",
            self.data_centers.len()
        )
    }

    fn from_status(json: &serde_json::Value) -> Option<Topology> {
        let dcs = json.get("Topology")?.get("DataCenters")?.as_array()?;
        let data_centers = dcs
            .iter()
            .map(|dc| {
                let racks = dc.get("Racks").and_then(|r| r.as_array()).cloned().unwrap_or_default();
                racks
                    .iter()
                    .map(|r| r.get("DataNodes").and_then(|n| n.as_array()).map_or(0, Vec::len))
                    .collect()
            })
            .collect();
        Some(Topology { data_centers })
    }
}

impl Filer {
    /// The topology of the filer's cluster, from its master's `/dir/status`.
    pub async fn topology(&self) -> Result<Topology> {
        let conf = self
            .client
            .clone()
            .get_filer_configuration(GetFilerConfigurationRequest {})
            .await
            .map_err(|s| self.status("read configuration", s))?
            .into_inner();
        let mut last = self.refused("read topology", "the filer names no master".into());
        for master in &conf.masters {
            // Masters are listed as host:port, or host:port.grpcport.
            let addr = master_http_addr(master);
            match get_json(addr, "/dir/status").await {
                Ok(json) => {
                    return Topology::from_status(&json).ok_or_else(|| {
                        self.refused("read topology", format!("master {addr}: unexpected /dir/status"))
                    })
                }
                Err(e) => {
                    last =
                        Error::Unreachable { filer: self.addr.clone(), detail: format!("master {addr}: {e}") }
                }
            }
        }
        Err(last)
    }
}

/// `host:port` of a master listed as `host:port` or `host:port.grpcport`.
fn master_http_addr(master: &str) -> &str {
    let port_start = master.rfind(':').map_or(0, |i| i + 1);
    match master[port_start..].split_once('.') {
        Some((port, _)) => &master[..port_start + port.len()],
        None => master,
    }
}

/// A plain HTTP/1.0 GET of a small JSON document (the master's status pages): a whole
/// HTTP client is not worth it for this.
async fn get_json(addr: &str, path: &str) -> std::io::Result<serde_json::Value> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut body = Vec::new();
        s.take(16 << 20).read_to_end(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), io).await.map_err(std::io::Error::other)??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) =
        text.split_once("\r\n\r\n").ok_or_else(|| std::io::Error::other("no HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(std::io::Error::other(head.lines().next().unwrap_or_default().to_string()));
    }
    serde_json::from_str(body).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_seaweedfs_rules() {
        assert!(Replication::parse("010").is_some());
        assert!(Replication::parse("200").is_some());
        for bad in ["300", "999", "01", "0100", "x10", ""] {
            assert_eq!(Replication::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn master_addresses() {
        assert_eq!(master_http_addr("127.0.0.1:9333.19333"), "127.0.0.1:9333");
        assert_eq!(master_http_addr("master.local:9333"), "master.local:9333");
        assert_eq!(master_http_addr("[::1]:9333.1"), "[::1]:9333");
    }

    #[test]
    fn placement_needs_enough_dcs_racks_and_servers() {
        let one = Topology { data_centers: vec![vec![1]] };
        let rep = |c| Replication::parse(c).unwrap();
        assert!(one.can_place(rep("000")));
        for c in ["001", "010", "100"] {
            assert!(!one.can_place(rep(c)), "{c}");
        }
        // Three nodes, one rack each: a Swarm of three that keeps writing with one node down.
        let three = Topology { data_centers: vec![vec![1, 1, 1]] };
        assert!(three.can_place(rep("010")) && three.can_place(rep("020")));
        assert!(!three.can_place(rep("030")) && !three.can_place(rep("001")));
        let json = serde_json::json!({"Topology": {"DataCenters": [{"Id": "dc1", "Racks": [{"Id": "r", "DataNodes": [{}, {}]}]}]}});
        assert_eq!(Topology::from_status(&json), Some(Topology { data_centers: vec![vec![2]] }));
    }
}
