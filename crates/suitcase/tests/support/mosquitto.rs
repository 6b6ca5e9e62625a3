//! A real Mosquitto broker for tests: Debian's `mosquitto` binary with a configuration file
//! written into a temporary directory, listening on free loopback ports (plain, and TLS with a
//! CA and server certificate made by the `openssl` CLI when asked), optionally with a password
//! file made by `mosquitto_passwd` and anonymous clients refused; killed on drop. A
//! [`Subscriber`] (a rumqttc client on its own thread) receives what is published.
//!
//! Shared by the integration tests (`support::mosquitto`) and the unit tests of
//! `src/mqtt.rs` (`#[path = "../tests/support/mosquitto.rs"]`), so it uses nothing else of
//! `support`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Read as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Skip a test with a printed reason, or fail it in CI (`CI=true`), where `.ci/run` installs
/// every tool (the same rule as `support::netns::skip`).
fn skip(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("test cannot run in CI: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

/// The `mosquitto` binary: on the PATH, or Debian's /usr/sbin/mosquitto (not on a normal
/// user's PATH).
pub fn binary() -> Option<PathBuf> {
    let runs = |p: &Path| {
        Command::new(p)
            .arg("-h")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    [PathBuf::from("mosquitto"), PathBuf::from("/usr/sbin/mosquitto")]
        .into_iter()
        .find(|p| runs(p))
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|u| u.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// What the broker asks of its clients.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// One user and password; anonymous clients are then refused.
    pub credentials: Option<(String, String)>,
    /// A second listener with TLS (server certificate for IP 127.0.0.1 and DNS localhost,
    /// signed by a CA made for this broker: [`Mosquitto::ca`]).
    pub tls: bool,
}

/// One Mosquitto broker, killed on drop. [`Mosquitto::prepare`] chooses the ports and writes
/// the files without starting it, so a client can be started first.
pub struct Mosquitto {
    bin: PathBuf,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// The plain listener's port (127.0.0.1).
    pub port: u16,
    /// The TLS listener's port, with [`Options::tls`].
    pub tls_port: Option<u16>,
    /// The CA certificate (PEM) the TLS listener's certificate is signed by.
    pub ca: Option<PathBuf>,
    /// The one user, with [`Options::credentials`].
    pub credentials: Option<(String, String)>,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate signed by it (P-256), for 127.0.0.1 and localhost.
fn make_certificates(dir: &Path) {
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.crt");
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-days", "2", "-subj", "/CN=suitcase test CA"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca));
    let csr = dir.join("server.csr");
    run(Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(dir.join("server.key"))
        .arg("-out")
        .arg(&csr));
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(&ca_key)
        .args(["-CAcreateserial", "-extfile"])
        .arg(&ext)
        .arg("-out")
        .arg(dir.join("server.crt")));
}

impl Mosquitto {
    /// A running broker with anonymous access on a plain listener, or `None` (skipped with a
    /// printed reason; a failure in CI) when Mosquitto is not installed.
    pub fn start() -> Option<Mosquitto> {
        Self::start_with(&Options::default())
    }

    /// A running broker with `options` (see [`Mosquitto::start`]).
    pub fn start_with(options: &Options) -> Option<Mosquitto> {
        let mut broker = Self::prepare(options)?;
        broker.launch();
        Some(broker)
    }

    /// Ports, configuration, password file and certificates, but no process yet:
    /// [`Mosquitto::launch`] starts it. `None` as in [`Mosquitto::start`].
    pub fn prepare(options: &Options) -> Option<Mosquitto> {
        let Some(bin) = binary() else {
            skip("Mosquitto is not installed (Debian: apt-get install mosquitto)");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("suitcase-mqtt")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        let port = free_port();
        let mut conf = String::from("persistence false\nlog_dest stderr\nlog_type all\n");
        // As root, Mosquitto switches to the `mosquitto` user, which could not read the
        // files in this (root-only) directory.
        if is_root() {
            conf.push_str("user root\n");
        }
        if let Some((user, password)) = &options.credentials {
            let file = d.join("passwd");
            run(Command::new("mosquitto_passwd")
                .arg("-b")
                .arg("-c")
                .arg(&file)
                .args([user, password]));
            conf.push_str(&format!("allow_anonymous false\npassword_file {}\n", file.display()));
        } else {
            conf.push_str("allow_anonymous true\n");
        }
        conf.push_str(&format!("listener {port} 127.0.0.1\n"));
        let (mut tls_port, mut ca) = (None, None);
        if options.tls {
            make_certificates(d);
            let p = free_port();
            conf.push_str(&format!(
                "listener {p} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
                d.join("ca.crt").display(),
                d.join("server.crt").display(),
                d.join("server.key").display()
            ));
            tls_port = Some(p);
            ca = Some(d.join("ca.crt"));
        }
        std::fs::write(d.join("mosquitto.conf"), conf).unwrap();
        Some(Mosquitto {
            bin,
            child: None,
            dir,
            port,
            tls_port,
            ca,
            credentials: options.credentials.clone(),
        })
    }

    /// Start the broker (again, after [`Mosquitto::stop`]) on the same ports, and wait until
    /// every listener accepts connections.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "Mosquitto is running already");
        let log = std::fs::File::create(self.log_path()).unwrap();
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let start = Instant::now();
        let ports: Vec<u16> = std::iter::once(self.port).chain(self.tls_port).collect();
        for port in ports {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                    self.child = None;
                    panic!("mosquitto exited ({status}): {}", self.log());
                }
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "mosquitto does not listen on {port}: {}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Kill the broker (SIGKILL: connections drop at once); [`Mosquitto::launch`] restarts it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process id, while running (to SIGSTOP a broker that then never answers).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    /// What the broker logged so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.log_path()) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// `mqtt://[user:password@]127.0.0.1:<port>` (the password percent-encoded as needed).
    pub fn url(&self) -> String {
        format!("mqtt://{}127.0.0.1:{}", self.userinfo(), self.port)
    }

    /// `mqtts://[user:password@]127.0.0.1:<tls port>`, with [`Options::tls`].
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port
            .map(|p| format!("mqtts://{}127.0.0.1:{p}", self.userinfo()))
    }

    fn userinfo(&self) -> String {
        let enc = |s: &str| {
            s.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect::<String>()
        };
        match &self.credentials {
            Some((u, p)) => format!("{}:{}@", enc(u), enc(p)),
            None => String::new(),
        }
    }

    /// A subscriber to `filter` on the plain listener, with the broker's credentials;
    /// returns once the broker acknowledged the subscription.
    pub fn subscribe(&self, filter: &str) -> Subscriber {
        Subscriber::connect(self.port, self.credentials.clone(), filter)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An MQTT subscriber on its own thread (rumqttc, QoS 1), re-subscribing after a reconnect.
pub struct Subscriber {
    /// In a mutex so that a `Subscriber` can be shared with a blocking task.
    messages: std::sync::Mutex<mpsc::Receiver<(String, Vec<u8>)>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Subscriber {
    /// Connect to 127.0.0.1:`port` and subscribe to `filter`; returns once the SUBACK came
    /// (so a message published after this returns is delivered). Panics after 10 s.
    pub fn connect(port: u16, credentials: Option<(String, String)>, filter: &str) -> Subscriber {
        use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
        let id = format!("test-sub-{}-{port}", std::process::id());
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_max_packet_size(1 << 20, 1 << 20);
        if let Some((user, password)) = credentials {
            options.set_credentials(user, password);
        }
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (messages_tx, messages) = mpsc::channel();
        let (stop, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let topic_filter = filter.to_string();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (client, mut eventloop) = AsyncClient::new(options, 10);
                loop {
                    let event = tokio::select! {
                        _ = &mut stop_rx => return,
                        event = eventloop.poll() => event,
                    };
                    match event {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let _ = client.subscribe(topic_filter.as_str(), QoS::AtLeastOnce).await;
                        }
                        Ok(Event::Incoming(Packet::SubAck(ack))) => {
                            let refused = ack
                                .return_codes
                                .iter()
                                .any(|c| matches!(c, SubscribeReasonCode::Failure));
                            let _ = ready_tx.send(if refused { Err(format!("{ack:?}")) } else { Ok(()) });
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let _ = messages_tx.send((p.topic, p.payload.to_vec()));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            });
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = String::from("no answer");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match ready_rx.recv_timeout(left) {
                Ok(Ok(())) => break,
                Ok(Err(e)) => last = e,
                Err(_) => panic!("the test subscriber did not subscribe to {filter:?} within 10 s: {last}"),
            }
        }
        Subscriber {
            messages: std::sync::Mutex::new(messages),
            stop: Some(stop),
        }
    }

    /// The next message (topic, payload), or `None` after `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<(String, Vec<u8>)> {
        let messages = self.messages.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        messages.recv_timeout(timeout).ok()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
