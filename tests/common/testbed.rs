//! Simulated nodes: network namespaces joined by a bridge in the root namespace, and a
//! TCP proxy that injects one-way delay (this kernel has no netem qdisc). Addresses
//! are from TEST-NET-2 (198.51.100.0/24) and exist only inside this machine; everything
//! made here is removed on drop.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct NodeNs {
    pub name: String,
    pub ip: Ipv4Addr,
}

pub struct Bed {
    bridge: String,
    nodes: Vec<NodeNs>,
    /// Host ends of the veth pairs; deleting one deletes its peer too.
    veths: Vec<String>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip (apt-get install iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl Bed {
    /// A bridge with 198.51.100.1/24 and `n` namespaces at 198.51.100.11, .12, ...
    /// The namespaces get no default route and the host does not forward, so nothing
    /// sent there can leave the machine.
    pub fn new(n: usize) -> Bed {
        // Names must be unique per test (tests of one binary run in parallel) and at
        // most 15 bytes as interface names.
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let tag = format!("{:x}{}", std::process::id() % 0xffff, SEQ.fetch_add(1, Ordering::Relaxed));
        let bridge = format!("kb{tag}");
        // Never shadow a network this machine really uses.
        let addrs = Command::new("ip").args(["-o", "addr"]).output().expect("ip").stdout;
        assert!(
            !String::from_utf8_lossy(&addrs).contains(" 198.51.100."),
            "198.51.100.0/24 is already in use here (another test bed still up?)"
        );
        let mut bed = Bed { bridge: bridge.clone(), nodes: Vec::new(), veths: Vec::new() };
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["addr", "add", "198.51.100.1/24", "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        // A host firewall (e.g. Docker's FORWARD policy DROP, applied to bridged
        // traffic by br_netfilter) would cut the nodes off each other: let this
        // bridge's own traffic through, for the bed's lifetime only.
        let _ = Command::new("iptables").args(forward_rule("-I", &bridge)).output();
        for i in 0..n {
            let name = format!("kelp-{tag}-{i}");
            let (host, peer) = (format!("kv{tag}{i}"), format!("kp{tag}{i}"));
            ip(&["netns", "add", &name]);
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer]);
            bed.veths.push(host.clone());
            ip(&["link", "set", &peer, "netns", &name]);
            ip(&["link", "set", &host, "master", &bridge]);
            ip(&["link", "set", &host, "up"]);
            let addr = Ipv4Addr::new(198, 51, 100, 11 + i as u8);
            ip(&["-n", &name, "addr", "add", &format!("{addr}/24"), "dev", &peer]);
            ip(&["-n", &name, "link", "set", &peer, "up"]);
            ip(&["-n", &name, "link", "set", "lo", "up"]);
            bed.nodes.push(NodeNs { name, ip: addr });
        }
        bed
    }

    pub fn bridge_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 51, 100, 1)
    }

    pub fn nodes(&self) -> &[NodeNs] {
        &self.nodes
    }

    /// Runs `program` in node `i`'s network namespace only: unlike `ip netns exec`,
    /// `nsenter --net` keeps the mount namespace, so FUSE and bind mounts made there
    /// are visible to the test.
    pub fn command(&self, i: usize, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.nodes[i].name)).arg("--").arg(program);
        c
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        // A namespace outlives `ip netns del` while anything still refers to it, and
        // its veth with it: delete the pairs explicitly.
        for v in &self.veths {
            let _ = Command::new("ip").args(["link", "del", v]).output();
        }
        for n in &self.nodes {
            let _ = Command::new("ip").args(["netns", "del", &n.name]).output();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).output();
        let _ = Command::new("iptables").args(forward_rule("-D", &self.bridge)).output();
    }
}

fn forward_rule(op: &str, bridge: &str) -> Vec<String> {
    [op, "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"].iter().map(|s| s.to_string()).collect()
}

/// A TCP proxy that delays every chunk by a one-way delay in each direction. It adds
/// latency without limiting throughput, and keeps the order of bytes.
pub struct DelayProxy {
    pub addr: SocketAddr,
    delay_us: Arc<AtomicU64>,
    paused: Arc<AtomicBool>,
    cut: Arc<AtomicBool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DelayProxy {
    pub fn start(listen: SocketAddr, target: SocketAddr, delay: Duration) -> DelayProxy {
        let delay_us = Arc::new(AtomicU64::new(delay.as_micros() as u64));
        let paused = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(AtomicBool::new(false));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (d, p, k) = (delay_us.clone(), paused.clone(), cut.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen).await.expect("proxy bind");
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let accept = async {
                    loop {
                        let Ok((client, _)) = listener.accept().await else { continue };
                        if k.load(Ordering::Relaxed) {
                            // Cut: the connection is closed at once.
                            continue;
                        }
                        let (d, p, k) = (d.clone(), p.clone(), k.clone());
                        tokio::spawn(async move {
                            let Ok(server) = tokio::net::TcpStream::connect(target).await else { return };
                            let _ = client.set_nodelay(true);
                            let _ = server.set_nodelay(true);
                            let (cr, cw) = client.into_split();
                            let (sr, sw) = server.into_split();
                            // A side that fails (peer gone) just ends its connection.
                            let _ = tokio::join!(
                                pipe(cr, sw, d.clone(), p.clone(), k.clone()),
                                pipe(sr, cw, d, p, k)
                            );
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stop_rx => {}
                }
            });
        });
        let addr = addr_rx.recv().expect("proxy address");
        DelayProxy { addr, delay_us, paused, cut, stop: Some(stop_tx), thread: Some(thread) }
    }

    pub fn set_delay(&self, delay: Duration) {
        self.delay_us.store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// While paused nothing is delivered and connections are held open; resuming
    /// delivers everything, in order.
    pub fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    /// While cut, every connection through the proxy is closed (within 100 ms) and
    /// new ones are closed as they come: a link that drops rather than holds.
    pub fn cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Relaxed);
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay_us: Arc<AtomicU64>,
    paused: Arc<AtomicBool>,
    cut: Arc<AtomicBool>,
) -> io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let closed = || io::Error::new(io::ErrorKind::ConnectionAborted, "link cut");
    let cut_r = cut.clone();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = tokio::select! {
                r = from.read(&mut buf) => r?,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if cut_r.load(Ordering::Relaxed) {
                        return Err(closed());
                    }
                    continue;
                }
            };
            let due = tokio::time::Instant::now() + Duration::from_micros(delay_us.load(Ordering::Relaxed));
            if tx.send((due, buf[..n].to_vec())).is_err() || n == 0 {
                return Ok::<_, io::Error>(());
            }
        }
    };
    let writer = async move {
        while let Some((due, data)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            while paused.load(Ordering::Relaxed) && !cut.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if cut.load(Ordering::Relaxed) {
                return Err(closed());
            }
            if data.is_empty() {
                to.shutdown().await?;
                return Ok(());
            }
            to.write_all(&data).await?;
        }
        Ok::<_, io::Error>(())
    };
    let (a, b) = tokio::join!(reader, writer);
    a.and(b)
}
