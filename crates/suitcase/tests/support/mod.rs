//! Test harness: start the real `suitcase` binary on port 0 and talk to it over loopback.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub mod browser;
pub mod mosquitto;
pub mod netns;
pub mod postgres;
pub mod s3;
pub mod simdevice;

/// The binary under test; `SUITCASE_TEST_BIN` points the tests at another build (to check
/// that a regression test fails against the code before its fix).
pub fn bin() -> String {
    std::env::var("SUITCASE_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_suitcase").to_string())
}

/// A running server; killed on drop, its log printed if the test failed.
pub struct TestServer {
    child: Child,
    /// How clients reach it: `[::1]`, or an address in its network namespace.
    pub host: String,
    pub coap_port: u16,
    pub http_port: u16,
    pub data: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    /// The network namespace it runs in, if any (its CLI runs there too).
    netns: Option<String>,
}

/// `suitcase`, run inside network namespace `netns` when given.
fn base_command(netns: Option<&str>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin());
            c
        }
        None => Command::new(bin()),
    }
}

fn port_after(line: &str, marker: &str) -> Option<u16> {
    let rest = &line[line.find(marker)? + marker.len()..];
    // Up to a space, or the quote that ends a JSON log line's message.
    let addr = rest.split(|c: char| c.is_whitespace() || c == '"').next()?;
    addr.rsplit(':').next()?.parse().ok()
}

impl TestServer {
    pub fn start(data: &Path, extra: &[&str]) -> TestServer {
        Self::launch(None, "[::1]", ("[::1]:0", "[::1]:0"), data, extra)
    }

    /// A server on IPv4 loopback (CoAP and HTTP on 127.0.0.1), so test devices can send from
    /// other loopback addresses (127.0.0.2, …) and be told apart.
    pub fn start_v4(data: &Path, extra: &[&str]) -> TestServer {
        Self::launch(None, "127.0.0.1", ("127.0.0.1:0", "127.0.0.1:0"), data, extra)
    }

    /// Start the server inside the network namespace `ns` (`ip netns exec`), listening on
    /// `[::]` and reached at `host` (an address of the namespace, e.g. `[fd00:dead:beef::1]`).
    pub fn start_in_netns(ns: &str, host: &str, data: &Path, extra: &[&str]) -> TestServer {
        Self::launch(Some(ns), host, ("[::]:0", "[::]:0"), data, extra)
    }

    /// A server inside network namespace `ns` with CoAP on `coap` (devices that only talk to
    /// port 5683) and HTTP on the namespace's loopback, which its `cli` reaches.
    pub fn start_in(ns: &str, data: &Path, coap: &str, extra: &[&str]) -> TestServer {
        Self::launch(Some(ns), "[::1]", (coap, "[::1]:0"), data, extra)
    }

    /// A server on fixed addresses (restarts keep them: the URLs devices were given stay
    /// right).
    pub fn start_on(data: &Path, coap: &str, http: &str, extra: &[&str]) -> TestServer {
        let host = http.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h).to_string();
        Self::launch(None, &host, (coap, http), data, extra)
    }

    fn launch(netns: Option<&str>, host: &str, addrs: (&str, &str), data: &Path, extra: &[&str]) -> TestServer {
        Self::launch_env(netns, host, addrs, data, extra, &[])
    }

    /// [`TestServer::start`] with environment variables (credentials that do not belong on
    /// a command line).
    pub fn start_env(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> TestServer {
        Self::launch_env(None, "[::1]", ("[::1]:0", "[::1]:0"), data, extra, env)
    }

    /// [`TestServer::start_env`] on IPv4 loopback (devices on 127.0.x.y are told apart).
    pub fn start_env_v4(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> TestServer {
        Self::launch_env(None, "127.0.0.1", ("127.0.0.1:0", "127.0.0.1:0"), data, extra, env)
    }

    fn launch_env(
        netns: Option<&str>,
        host: &str,
        (coap, http): (&str, &str),
        data: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> TestServer {
        let mut child = base_command(netns)
            .arg("serve")
            .arg("--data")
            .arg(data)
            .args(["--coap", coap, "--http", http])
            .args(extra)
            .envs(env.iter().copied())
            .env("SUITCASE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn suitcase");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                sink.lock().unwrap().push(line);
            }
        });
        let (mut coap, mut http) = (None, None);
        while coap.is_none() || http.is_none() {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("server did not report its ports; log: {:?}", log.lock().unwrap()));
            coap = coap.or(port_after(&line, "listening for CoAP on "));
            http = http
                .or(port_after(&line, "listening for HTTP on "))
                .or(port_after(&line, "listening for HTTPS on "));
        }
        TestServer {
            child,
            host: host.to_string(),
            coap_port: coap.unwrap(),
            http_port: http.unwrap(),
            data: data.to_path_buf(),
            log,
            netns: netns.map(str::to_string),
        }
    }

    /// The coaps port, when the server listens for DTLS.
    pub fn coaps_port(&self) -> Option<u16> {
        self.log()
            .iter()
            .find_map(|l| port_after(l, "listening for coaps (DTLS 1.2) on "))
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the server, in bytes (Linux).
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    pub fn http(&self) -> String {
        format!("http://{}:{}", self.host, self.http_port)
    }

    pub fn coap(&self, path: &str) -> String {
        format!("coap://{}:{}/{path}", self.host, self.coap_port)
    }

    /// Send SIGTERM and wait up to `limit` for the exit; returns (exit code, log).
    pub fn terminate(mut self, limit: std::time::Duration) -> (Option<i32>, Vec<String>) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = std::time::Instant::now() + limit;
        let mut code = None;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                code = st.code();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        (code, self.log())
    }

    /// The `local` publisher token the server wrote into its data directory at start.
    pub fn token(&self) -> String {
        let file = self.data.join("local-publisher.token");
        std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .trim()
            .to_string()
    }

    /// `suitcase` as run on the server's host: SUITCASE_TOKEN is the local publisher token.
    pub fn command(&self) -> Command {
        let mut c = base_command(self.netns.as_deref());
        c.env("SUITCASE_TOKEN", self.token());
        c.env("SUITCASE_SERVER", self.http());
        c
    }

    /// Run `suitcase ARGS…` with the local publisher token, returning stdout; panics with
    /// stderr on failure.
    pub fn cli(&self, args: &[&str]) -> String {
        checked(self.command(), args)
    }

    /// `suitcase publish --quiet --server … --publish-id ID --publish FILE`, as run on the
    /// server's host (with its local token); more flags may be added.
    pub fn publish_command(&self, id: &str, file: &Path) -> Command {
        let mut c = self.command();
        c.args([
            "publish",
            "--quiet",
            "--server",
            &self.http(),
            "--publish-id",
            id,
            "--publish",
        ])
        .arg(file);
        c
    }

    /// [`TestServer::publish_command`] with `extra` flags, which must succeed; stdout.
    pub fn publish(&self, id: &str, file: &Path, extra: &[&str]) -> String {
        checked(self.publish_command(id, file), extra)
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- server log ---");
            for l in self.log.lock().unwrap().iter() {
                eprintln!("{l}");
            }
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), so failures are reproducible.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `curl -s URL` with extra arguments (headers, `-d BODY`, …): (status, body as text).
pub fn curl_text(url: &str, extra: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').expect("curl's status line");
    (status.trim().parse().expect("an HTTP status"), body.to_string())
}

/// Whether `program` runs here (`program ARG` starts at all).
pub fn have(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Whether a test's external tool is here; if not, the test is skipped with a printed reason
/// (a failure in CI, where `.ci/run` installs every tool: `netns::skip`).
pub fn require(program: &str, arg: &str, install: &str) -> bool {
    if have(program, arg) {
        return true;
    }
    netns::skip(&format!("{program} is not installed ({install})"));
    false
}

/// libcoap's coap-client is here (see [`require`]).
pub fn require_coap_client() -> bool {
    if ["coap-client", "coap-client-notls"].iter().any(|c| have(c, "-h")) {
        return true;
    }
    netns::skip("libcoap's coap-client is not installed (Debian: apt-get install libcoap3-bin)");
    false
}

/// Running as root (tmpfs mounts, network namespaces); see [`require`].
pub fn require_root(why: &str) -> bool {
    if netns::missing_prerequisite().is_none() {
        return true;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        == Some("0");
    if root {
        return true;
    }
    netns::skip(&format!("not root: {why}"));
    false
}

/// libcoap's command-line client: `coap-client` or Debian's `coap-client-notls`.
pub fn coap_client() -> &'static str {
    for c in ["coap-client", "coap-client-notls"] {
        if Command::new(c)
            .arg("-h")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
        {
            return c;
        }
    }
    panic!("libcoap's coap-client is not installed (Debian: apt-get install libcoap3-bin)");
}

/// GET `uri` with coap-client at block size `block` into a file; returns the bytes.
pub fn coap_get(uri: &str, block: Option<u32>, out: &Path) -> Vec<u8> {
    let _ = std::fs::remove_file(out);
    let mut cmd = Command::new(coap_client());
    cmd.args(["-m", "get", "-B", "30"]);
    if let Some(b) = block {
        cmd.args(["-b", &b.to_string()]);
    }
    let st = cmd.arg("-o").arg(out).arg(uri).output().expect("run coap-client");
    assert!(st.status.success(), "coap-client {uri}: {st:?}");
    std::fs::read(out).unwrap_or_default()
}

/// Run `suitcase ARGS…`, returning stdout; panics with stderr on failure.
pub fn suitcase(args: &[&str]) -> String {
    checked(Command::new(bin()), args)
}

/// Run `cmd ARGS…`, returning stdout; panics with stdout and stderr on failure.
fn checked(mut cmd: Command, args: &[&str]) -> String {
    let out = cmd.args(args).output().expect("run suitcase");
    assert!(
        out.status.success(),
        "suitcase {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A UDP and a TCP port on 127.0.0.1 that were free a moment ago.
pub fn free_ports_v4() -> (u16, u16) {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (udp.local_addr().unwrap().port(), tcp.local_addr().unwrap().port())
}
