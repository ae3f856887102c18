//! Helpers for end-to-end tests: start real `fabric up` processes in temp
//! data directories on loopback, run the real `fabric` CLI against them.
//!
//! Guests must be built first (`scripts/build-guests.sh`; the test script
//! does it), and the `fabric` binary next to the test executable (the test
//! script builds it; `FABRIC_BIN` overrides).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The `fabric` binary under test.
pub fn fabric_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("FABRIC_BIN") {
        return bin.into();
    }
    // target/<profile>/deps/e2e-<hash> -> target/<profile>/fabric
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe.parent().and_then(Path::parent).expect("target dir").join("fabric");
    assert!(bin.exists(), "{} is missing: build it with `cargo build --release -p fabric`", bin.display());
    bin
}

fn guest(dir: &str, name: &str) -> PathBuf {
    let path = repo_root().join(dir).join("target/wasm32-wasip2/release").join(format!("{name}.wasm"));
    assert!(path.exists(), "{} is missing: run scripts/build-guests.sh", path.display());
    path
}

/// An example's component.
pub fn example(name: &str) -> PathBuf {
    guest("examples", name)
}

/// The test guest that handles HTTP, misbehaving on request.
pub fn http_kit() -> PathBuf {
    guest("tests/guests", "http_kit")
}

/// The test guest with misbehaving and measuring tasks.
pub fn testkit() -> PathBuf {
    guest("tests/guests", "testkit")
}

/// What a CLI run printed.
#[derive(Debug)]
pub struct Out {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Out {
    /// Standard output as one JSON value.
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
}

/// The `fabric` CLI with `args`, not steered by this process's `FABRIC_*`
/// settings (a test says what it means in flags and `Up`'s environment).
pub fn fabric_command(args: &[&str]) -> Command {
    let mut command = Command::new(fabric_bin());
    command.args(args);
    for setting in ["FABRIC_DATA_DIR", "FABRIC_HOST", "FABRIC_TENANT", "FABRIC_ETCD", "FABRIC_INJECT_FAULTS"] {
        command.env_remove(setting);
    }
    command
}

/// Runs the CLI with `args`.
pub fn fabric(args: &[&str]) -> Out {
    let output = fabric_command(args).stdin(Stdio::null()).output().expect("run fabric");
    Out {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A `fabric up` (or `fabric host`) process with its own data directory on a
/// free loopback port.
pub struct Up {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Everything after `--data-dir DIR`: the subcommand and its flags.
    command: Vec<String>,
    etcd: Option<String>,
    env: Vec<(String, String)>,
}

impl Up {
    /// Starts a host.
    pub fn start() -> Up {
        Self::start_with(&[])
    }

    /// Starts a host with extra `fabric up` flags.
    pub fn start_with(extra: &[&str]) -> Up {
        let mut command: Vec<String> =
            ["up", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"].iter().map(|s| s.to_string()).collect();
        command.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(command, None)
    }

    /// Starts a `fabric host` that joins the cluster in `etcd`, with a short
    /// lease (2 s) and extra flags.
    pub fn host(etcd: &str, extra: &[&str]) -> Up {
        Self::host_with_env(etcd, extra, &[])
    }

    /// [`Up::host`] with extra environment variables.
    pub fn host_with_env(etcd: &str, extra: &[&str], env: &[(&str, &str)]) -> Up {
        let mut command: Vec<String> = ["host", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--lease-ttl", "2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        command.extend(extra.iter().map(|s| s.to_string()));
        let dir = tempfile::tempdir().expect("temp dir");
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut up = Up { dir, child: None, command, etcd: Some(etcd.to_string()), env };
        up.launch();
        up
    }

    fn spawn(command: Vec<String>, etcd: Option<String>) -> Up {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut up = Up { dir, child: None, command, etcd, env: Vec::new() };
        up.launch();
        up
    }

    /// The host process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("a running host").id()
    }

    /// The most memory the host process has had resident (VmHWM), in bytes.
    pub fn peak_memory_bytes(&self) -> u64 {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the host's /proc status");
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
        let kib: u64 = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmHWM in kB");
        kib * 1024
    }

    /// The host's id (from its start-up line).
    pub fn id(&self) -> String {
        let log = self.up_log();
        log.lines()
            .find_map(|l| l.strip_prefix("fabric: host ").and_then(|rest| rest.split_whitespace().next()))
            .unwrap_or_else(|| panic!("no host id in the log: {log}"))
            .to_string()
    }

    /// The address the host listens on.
    pub fn addr(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("host.addr")).expect("host.addr").trim().to_string()
    }

    /// Kills the host with SIGKILL: no goodbye to the cluster.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the host again on the same data directory (after a stop or a
    /// kill).
    pub fn start_again(&mut self) {
        self.kill9();
        self.launch();
    }

    /// Where the host's HTTP gateway listens.
    pub fn gateway(&self) -> std::net::SocketAddr {
        let text = std::fs::read_to_string(self.data_dir().join("http.addr")).expect("the gateway's address");
        text.trim().parse().expect("a socket address")
    }

    /// Sends one HTTP request to the host's gateway and waits for the whole
    /// answer.
    pub fn http(&self, method: &str, path: &str, body: &str) -> fabric::http::Answer {
        self.http_with(method, path, &[], body)
    }

    /// [`Up::http`] with extra headers.
    pub fn http_with(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> fabric::http::Answer {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let request = fabric::http::request(self.gateway(), method, path, headers, body.to_string());
        runtime.block_on(request).unwrap_or_else(|e| panic!("{method} {path} failed: {e:#}"))
    }

    /// The host's data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    fn launch(&mut self) {
        let addr_file = self.data_dir().join("host.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::File::create(self.data_dir().join("up.log")).expect("up log");
        let mut command = fabric_command(&[]);
        command.arg("--data-dir").arg(self.data_dir());
        if let Some(etcd) = &self.etcd {
            command.args(["--etcd", etcd]);
        }
        let child = command
            .args(&self.command)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("FABRIC_LOG", "fabric_host=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn fabric up");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !addr_file.exists() || !self.up_log().contains("listening on") {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("fabric up exited with {status}: {}", self.up_log());
            }
            assert!(Instant::now() < deadline, "fabric up did not start: {}", self.up_log());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// What `fabric up` printed.
    pub fn up_log(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("up.log")).unwrap_or_default()
    }

    /// Runs the CLI against this host (as tenant `default` unless `args` say).
    pub fn fabric(&self, args: &[&str]) -> Out {
        let dir = self.data_dir().to_string_lossy().into_owned();
        let mut all = vec!["--data-dir", dir.as_str()];
        all.extend_from_slice(args);
        fabric(&all)
    }

    /// Submits `function` of `wasm` with JSON `args` detached; the job's id.
    pub fn submit_detached(&self, wasm: &Path, function: &str, args: &str) -> String {
        let out = self.submit(wasm, &["--fn", function, "--args", args, "--detach"]);
        assert_eq!(out.code, 0, "{out:?}");
        out.json()["job"].as_str().expect("a job id").to_string()
    }

    /// `fabric submit WASM ARGS... --output json`.
    pub fn submit(&self, wasm: &Path, args: &[&str]) -> Out {
        let wasm = wasm.to_string_lossy().into_owned();
        let mut all = vec!["submit", wasm.as_str(), "--output", "json"];
        all.extend_from_slice(args);
        self.fabric(&all)
    }

    /// Stops the host now: SIGTERM, and once it is draining, SIGTERM again
    /// (stop without waiting for running work); waits for it to exit.
    pub fn stop(&mut self) {
        self.terminate();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.running() && !self.up_log().contains("draining") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.terminate();
        self.wait_exit(Duration::from_secs(20));
    }

    /// Sends SIGTERM (a graceful stop: the host drains), without waiting.
    pub fn terminate(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        }
    }

    /// Waits up to `limit` for the host to exit (then kills it); whether it
    /// exited by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let Some(mut child) = self.child.take() else { return true };
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Whether the host process is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Starts the host again on the same data directory after it exited.
    pub fn start_stopped(&mut self) {
        assert!(self.child.is_none(), "the host is still running");
        self.launch();
    }

    /// Stops and starts the host on the same data directory.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A real etcd server on loopback, in a temp data directory, for the test's
/// lifetime (Debian's `etcd-server`, installed by `scripts/setup.sh`).
pub struct Etcd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    ports: (u16, u16),
    endpoint: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

impl Etcd {
    /// Starts etcd and waits until it answers.
    pub fn start() -> Etcd {
        // A port picked free can be taken by another test before etcd binds
        // it: etcd then exits, and is started again on other ports.
        let mut etcd = Self::unstarted();
        for _ in 0..4 {
            if etcd.try_launch() {
                return etcd;
            }
            etcd = Self::unstarted();
        }
        etcd.launch();
        etcd
    }

    /// An etcd with its ports and directory chosen, not running yet
    /// ([`Etcd::restart`] starts it).
    pub fn unstarted() -> Etcd {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{}", ports.0);
        Etcd { dir, child: None, ports, endpoint }
    }

    fn launch(&mut self) {
        assert!(self.try_launch(), "etcd exited at start: {}", self.log_tail());
    }

    /// The end of etcd's log, for a failure's message.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// Starts etcd on its ports and waits until it answers; `false` if it
    /// exited first (its ports were taken).
    fn try_launch(&mut self) -> bool {
        let (client, peer) = self.ports;
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log");
        let child = Command::new("etcd")
            .args(["--name", "n1", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("n1={peer_url}")])
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd is not installed: run scripts/setup.sh");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !etcd_healthy(client) {
            if self.child.as_mut().is_some_and(|child| child.try_wait().ok().flatten().is_some()) {
                self.child = None;
                return false;
            }
            assert!(Instant::now() < deadline, "etcd did not become healthy: {}", self.log_tail());
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// Stops etcd (SIGKILL), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped (or unstarted) etcd on its ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// The client URL (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

/// Whether etcd's `/health` says so.
fn etcd_healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.contains("\"health\":\"true\"")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with
/// `what` after `limit`.
pub fn eventually<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Generous bound for membership changes (hosts run with a 2 s lease); the
/// failure-detection benchmark measures the real figure.
pub const SETTLE: Duration = Duration::from_secs(20);

/// The member ids `host` lists.
pub fn view_of(host: &Up) -> Option<std::collections::BTreeSet<String>> {
    let out = host.fabric(&["hosts", "--output", "json"]);
    if out.code != 0 {
        return None;
    }
    Some(out.json().as_array()?.iter().filter_map(|h| h["id"].as_str().map(String::from)).collect())
}

/// The ids of `hosts`.
pub fn ids(hosts: &[&Up]) -> std::collections::BTreeSet<String> {
    hosts.iter().map(|h| h.id()).collect()
}

/// Starts a `fabric host` against `etcd` for each entry of `flags` (its
/// flags) and waits until every one sees them all.
pub fn cluster<const N: usize>(etcd: &Etcd, flags: [&[&str]; N]) -> [Up; N] {
    let hosts = flags.map(|flags| Up::host(etcd.endpoint(), flags));
    let all: Vec<&Up> = hosts.iter().collect();
    all_see(&all, &ids(&all), &format!("{N} hosts to see each other"));
    hosts
}

/// Waits until every host in `observers` sees exactly `expected`.
pub fn all_see(observers: &[&Up], expected: &std::collections::BTreeSet<String>, what: &str) {
    for host in observers {
        eventually(SETTLE, what, || (view_of(host).as_ref() == Some(expected)).then_some(()));
    }
}
