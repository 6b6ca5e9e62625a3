//! Hardening of the HTTP side against the real binary: the connection cap and the timeouts,
//! the local publisher token instead of loopback trust, and notify's bounded sockets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::*;

/// Open file descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// One `GET path` on a fresh connection; the status code.
fn get(port: u16, path: &str, timeout: Duration) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(("::1", port))?;
    s.set_read_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    buf.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {buf:?}")))
}

#[test]
fn idle_connections_beyond_the_cap_wait_and_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        &dir.path().join("data"),
        &["--max-connections", "4", "--http-timeout-secs", "1"],
    );
    // Settled: one request served (the runtime's lazily opened descriptors exist).
    assert_eq!(get(server.http_port, "/healthz", Duration::from_secs(10)).unwrap(), 200);
    let before = open_fds(server.pid());
    // 40 idle connections: the kernel accepts them all (backlog), the server only 4 at a time.
    let idle: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(("::1", server.http_port)).unwrap())
        .collect();
    // The server holds at most 4 of them (plus what it had), never one descriptor each.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let now = open_fds(server.pid());
        assert!(
            now <= before + 4 + 2,
            "{now} open fds, {before} before 40 idle connections"
        );
        std::thread::yield_now();
    }
    // A fresh client is served once the idle ones have timed out (1 s each, 4 at a time).
    let code = get(server.http_port, "/healthz", Duration::from_secs(60)).unwrap();
    assert_eq!(code, 200);
    drop(idle);
}

#[test]
fn a_slowloris_client_is_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &["--http-timeout-secs", "1"]);
    let mut s = TcpStream::connect(("::1", server.http_port)).unwrap();
    let mut reader = s.try_clone().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Whatever comes (a 408 or nothing), the server closes the connection.
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink);
        let _ = tx.send(sink);
    });
    s.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    let start = Instant::now();
    let mut lines = 0;
    loop {
        // One header line at a time, never the end of the head.
        if let Ok(answer) = rx.recv_timeout(Duration::from_millis(250)) {
            let text = String::from_utf8_lossy(&answer);
            assert!(!text.contains(" 200 "), "served: {text}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "still connected after {lines} header lines"
        );
        if s.write_all(format!("X-Slow-{lines}: 1\r\n").as_bytes()).is_err() {
            break; // closed by the server
        }
        lines += 1;
    }
}

#[test]
fn mutations_need_the_token_even_from_loopback() {
    if !require("curl", "--version", "Debian: apt-get install curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let f = dir.path().join("a.bin");
    std::fs::write(&f, b"firmware").unwrap();
    let url = format!("{}/publish", server.http());
    let curl = |extra: &[&str]| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-F", "publish_id=x"])
            .arg("-F")
            .arg(format!("a.bin=@{}", f.display()))
            .args(extra)
            .arg(&url)
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    // No token configured by the user, a loopback client: 401, proxied or not.
    assert_eq!(curl(&[]), "401");
    assert_eq!(curl(&["-H", "X-Forwarded-For: 127.0.0.1"]), "401");
    assert_eq!(
        curl(&["-H", "X-Forwarded-For: ::1", "-H", "Forwarded: for=127.0.0.1"]),
        "401"
    );
    // The token the server wrote to its data directory (mode 0600) publishes.
    let file = server.data.join("local-publisher.token");
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let auth = format!("Authorization: Bearer {}", server.token());
    assert_eq!(curl(&["-H", &auth]), "200");
    // The CLI finds the file by itself in $SUITCASE_DATA (the README's flow uses
    // ./suitcase-data), with no --token and no SUITCASE_TOKEN.
    let out = server
        .publish_command("y", &f)
        .env_remove("SUITCASE_TOKEN")
        .env("SUITCASE_DATA", &server.data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = server
        .publish_command("z", &f)
        .env_remove("SUITCASE_TOKEN")
        .env_remove("SUITCASE_DATA")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "no token file in ./suitcase-data here");
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}

#[test]
fn notifying_a_thousand_silent_devices_costs_a_handful_of_fds() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        &dir.path().join("data"),
        &["--notify-ack-timeout-ms", "300", "--notify-max-retransmit", "2"],
    );
    let f = dir.path().join("a.bin");
    std::fs::write(&f, b"firmware").unwrap();
    server.publish("n", &f, &[]);
    // 1,000 devices that never answer, behind 8 loopback sockets.
    let silent: Vec<std::net::UdpSocket> = (0..8).map(|_| std::net::UdpSocket::bind("[::1]:0").unwrap()).collect();
    let devices: Vec<String> = (0..1000)
        .map(|i| format!("coap://[::1]:{}/t/{i}", silent[i % 8].local_addr().unwrap().port()))
        .collect();
    let before = open_fds(server.pid());
    let mut cmd = server.command();
    cmd.args(["notify", "--server", &server.http(), "--publish-id", "n"])
        .args(&devices);
    let notify = std::thread::spawn(move || cmd.output().unwrap());
    let (mut max, mut published) = (before, false);
    while !notify.is_finished() {
        max = max.max(open_fds(server.pid()));
        if !published {
            // A publish while the notify is in flight succeeds.
            server.publish("p", &f, &[]);
            published = true;
        }
        std::thread::yield_now();
    }
    let out = notify.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches(" timeout ").count(), 1000, "{text}");
    assert!(published);
    assert!(max <= before + 6, "{max} open fds during the notify, {before} before");
    // The triggers really went out while we watched: every device got its request.
    let mut got = 0;
    for s in &silent {
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 1500];
        while s.recv_from(&mut buf).is_ok() {
            got += 1;
        }
    }
    assert!(got >= 1000, "{got} datagrams");
}
