//! coaps:// against real DTLS clients: libcoap's coap-client built on OpenSSL and on GnuTLS,
//! with pre-shared keys and with certificates whose keys are pinned to devices, at 64- and
//! 1024-byte blocks; wrong keys, unknown identities and unpinned keys refused; plain CoAP
//! reduced to discovery by --coap-require-dtls; and a ClientHello flood that leaves the
//! server's memory and session table bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

/// GET `url` with a coap-client binary and credential arguments; the bytes it wrote, if any.
fn fetch(client: &str, creds: &[&str], url: &str, block: u32, out: &Path) -> Option<Vec<u8>> {
    fetch_within(client, creds, url, block, out, 20)
}

fn fetch_within(client: &str, creds: &[&str], url: &str, block: u32, out: &Path, secs: u32) -> Option<Vec<u8>> {
    let _ = std::fs::remove_file(out);
    let o = Command::new(client)
        .args(["-m", "get", "-B", &secs.to_string(), "-b", &block.to_string(), "-o"])
        .arg(out)
        .args(creds)
        .arg(url)
        .output()
        .expect(client);
    let got = std::fs::read(out).ok();
    if got.is_none() {
        eprintln!("{client} {creds:?}: {}", String::from_utf8_lossy(&o.stderr).trim());
    }
    got
}

/// A self-signed P-256 certificate and key made with the openssl command (as a device
/// maker would).
fn device_cert(dir: &Path, name: &str) -> (String, String) {
    let (crt, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "30",
        ])
        .args(["-subj", &format!("/CN={name}"), "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    (crt.display().to_string(), key.display().to_string())
}

fn metric(server: &TestServer, name: &str) -> f64 {
    let (_, text) = curl_text(&format!("{}/metrics", server.http()), &[]);
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in\n{text}"))
}

fn tools() -> bool {
    require("coap-client-openssl", "-h", "apt-get install libcoap3-bin")
        && require("coap-client-gnutls", "-h", "apt-get install libcoap3-bin")
        && require("openssl", "version", "apt-get install openssl")
}

#[test]
fn libcoap_on_openssl_and_gnutls_downloads_with_psk_and_pinned_keys() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start(&data, &["--coaps", "[::1]:0", "--coap-require-dtls"]);
    let port = server.coaps_port().expect("coaps port in the log");
    let d = data.display().to_string();
    let psk = server.cli(&["token", "create", "sensor-1", "--device", "--psk", "--data", &d]);
    let key = psk
        .lines()
        .find_map(|l| l.strip_prefix("psk-key: "))
        .unwrap()
        .to_string();
    assert_eq!(
        psk.lines().find_map(|l| l.strip_prefix("psk-identity: ")),
        Some("sensor-1")
    );
    let (crt, crt_key) = device_cert(dir.path(), "board-7");
    server.cli(&[
        "token",
        "create",
        "board-7",
        "--device",
        "--public-key",
        &crt,
        "--data",
        &d,
    ]);
    let (other_crt, other_key) = device_cert(dir.path(), "stranger");
    // The token file's snapshot is refreshed every 500 ms.
    std::thread::sleep(Duration::from_millis(1200));
    let image = random_bytes(150_000, 18);
    let f = dir.path().join("app.bin");
    std::fs::write(&f, &image).unwrap();
    server.publish("fw/secure", &f, &[]);
    let url = format!("coaps://[::1]:{port}/fw/secure/app.bin");
    let out = dir.path().join("got");

    let psk_args = ["-u", "sensor-1", "-k", key.as_str()];
    let cert_args = ["-c", crt.as_str(), "-j", crt_key.as_str()];
    for client in ["coap-client-openssl", "coap-client-gnutls"] {
        for (what, creds) in [("psk", &psk_args[..]), ("certificate", &cert_args[..])] {
            for block in [64, 1024] {
                let got = fetch(client, creds, &url, block, &out);
                assert!(
                    got.as_deref() == Some(&image[..]),
                    "{client} with a {what} at {block}-byte blocks got {:?} bytes",
                    got.map(|g| g.len())
                );
            }
        }
        // Refused: a wrong key, an unknown identity, a key pinned to nobody.
        let refused: [&[&str]; 3] = [
            &["-u", "sensor-1", "-k", "not-the-key"],
            &["-u", "nobody", "-k", key.as_str()],
            &["-c", other_crt.as_str(), "-j", other_key.as_str()],
        ];
        for creds in refused {
            let got = fetch_within(client, creds, &url, 1024, &out, 4);
            assert!(got.is_none_or(|g| g.is_empty()), "{client} {creds:?} was served");
        }
    }
    // The manifest too, over DTLS.
    let manifest = fetch(
        "coap-client-openssl",
        &psk_args,
        &format!("coaps://[::1]:{port}/fw/secure/manifest"),
        1024,
        &out,
    );
    assert!(manifest.is_some_and(|m| !m.is_empty()));

    // Plain CoAP: discovery only.
    let plain = Command::new("coap-client-notls")
        .args(["-m", "get", "-B", "5"])
        .arg(server.coap("fw/secure/app.bin"))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&plain.stdout),
        String::from_utf8_lossy(&plain.stderr)
    );
    assert!(said.contains("4.04"), "{plain:?}");
    let wk = coap_get(&server.coap(".well-known/core"), None, &dir.path().join("wk"));
    assert!(String::from_utf8_lossy(&wk).contains("</fw/secure/app.bin>"));

    // The fleet knows the devices by their credentials' names.
    std::thread::sleep(Duration::from_millis(1500));
    for id in ["sensor-1", "board-7"] {
        let (status, body) = curl_text(
            &format!("{}/api/v1/devices/{id}", server.http()),
            &["-H", &format!("Authorization: Bearer {}", server.token())],
        );
        assert_eq!(status, 200, "{id}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(v["peer"].as_str().is_some_and(|p| p.starts_with("[::1]:")), "{v}");
    }
    assert!(metric(&server, "suitcase_dtls_handshakes_total") >= 8.0);
    assert!(metric(&server, "suitcase_dtls_handshake_failures_total") >= 2.0);
    assert!(metric(&server, "suitcase_dtls_hello_verify_total") >= 8.0);
    // The key never reaches the log.
    assert!(!server.log().iter().any(|l| l.contains(&key)));
}

/// A ClientHello as a client would send it first (no cookie).
fn client_hello() -> Vec<u8> {
    let ctx = suitcase_dtls::ClientConfig::psk(b"x", b"y").context().unwrap();
    let mut c = suitcase_dtls::Client::connect(&ctx, "[::1]:1".parse().unwrap()).unwrap();
    let mut hello = Vec::new();
    c.drain(|d| hello = d.to_vec());
    hello
}

#[test]
fn a_client_hello_flood_leaves_the_server_bounded() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start(&data, &["--coaps", "[::1]:0", "--coaps-max-sessions", "64"]);
    let port = server.coaps_port().unwrap();
    let target: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let d = data.display().to_string();
    let psk = server.cli(&[
        "token",
        "create",
        "dev",
        "--device",
        "--psk",
        "--psk-key",
        "k3y",
        "--data",
        &d,
    ]);
    assert!(psk.contains("psk-key: k3y"));
    let f = dir.path().join("app.bin");
    let image = random_bytes(20_000, 4);
    std::fs::write(&f, &image).unwrap();
    server.publish("fw/flood", &f, &[]);
    let rss_before = server.rss();

    // 1. Cookie-less ClientHellos from 2,000 source ports, 10 each: answered, never kept.
    let hello = client_hello();
    let mut sockets: Vec<UdpSocket> = (0..2000).map(|_| UdpSocket::bind("[::1]:0").unwrap()).collect();
    let mut answered = 0usize;
    for round in 0..10 {
        for s in &sockets {
            let _ = s.send_to(&hello, target);
        }
        if round == 9 {
            std::thread::sleep(Duration::from_millis(300));
            for s in &sockets {
                s.set_nonblocking(true).unwrap();
                let mut buf = [0u8; 1500];
                while let Ok(n) = s.recv(&mut buf) {
                    assert!(n <= hello.len(), "a HelloVerifyRequest larger than the ClientHello");
                    answered += 1;
                }
            }
        }
    }
    assert!(answered > 1000, "only {answered} HelloVerifyRequests");
    assert_eq!(metric(&server, "suitcase_dtls_sessions"), 0.0);

    // 2. 1,000 peers that return their cookie and stall: at most 16 (a quarter of 64) held.
    sockets.truncate(1000);
    let ctx = suitcase_dtls::ClientConfig::psk(b"dev", b"wrong").context().unwrap();
    for s in &sockets {
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut c = suitcase_dtls::Client::connect(&ctx, target).unwrap();
        c.drain(|d| {
            let _ = s.send_to(d, target);
        });
        let mut buf = [0u8; 1500];
        let Ok(n) = s.recv(&mut buf) else { continue };
        c.handle_datagram(&buf[..n]).unwrap();
        c.drain(|d| {
            let _ = s.send_to(d, target);
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    let sessions = metric(&server, "suitcase_dtls_sessions");
    assert!(sessions <= 16.0, "{sessions} sessions held");
    assert!(metric(&server, "suitcase_dtls_handshakes_evicted_total") >= 900.0);
    let rss_after = server.rss();
    assert!(
        rss_after < rss_before + 32 * 1024 * 1024,
        "RSS grew from {rss_before} to {rss_after}"
    );

    // 3. A real device still gets in and downloads.
    let start = Instant::now();
    let got = fetch(
        "coap-client-openssl",
        &["-u", "dev", "-k", "k3y"],
        &format!("coaps://[::1]:{port}/fw/flood/app.bin"),
        1024,
        &dir.path().join("got"),
    );
    assert!(got.as_deref() == Some(&image[..]), "download after the flood failed");
    eprintln!(
        "flood: {answered} HelloVerifyRequests, {sessions} sessions held, RSS {} → {} KiB, download after it {:?}",
        rss_before / 1024,
        rss_after / 1024,
        start.elapsed()
    );
}

/// A free UDP port pair on IPv6 loopback (libcoap's coap-server takes coaps on port + 1).
fn free_pair() -> u16 {
    loop {
        let a = UdpSocket::bind("[::1]:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p < 65000 && UdpSocket::bind(format!("[::1]:{}", p + 1)).is_ok() {
            return p;
        }
    }
}

#[test]
fn triggers_reach_coaps_devices_with_their_own_key() {
    if !tools() || !require("coap-server-openssl", "-h", "apt-get install libcoap3-bin") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start(
        &data,
        &["--notify-ack-timeout-ms", "300", "--notify-max-retransmit", "2"],
    );
    let d = data.display().to_string();
    // A DTLS device: libcoap's server with a PSK, creating resources on POST (-d), so what
    // the trigger carried can be read back.
    let port = free_pair();
    let mut device = Command::new("coap-server-openssl")
        .args(["-A", "::1", "-p", &port.to_string(), "-k", "dev1ce-key", "-d", "4"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("coaps://[::1]:{}", port + 1);
    server.cli(&["device", "add", "dtls-dev", "--coap", &addr]);
    server.cli(&[
        "token",
        "create",
        "dtls-dev",
        "--device",
        "--psk",
        "--psk-key",
        "dev1ce-key",
        "--data",
        &d,
    ]);
    // One with the wrong key, one with none.
    server.cli(&["device", "add", "wrong-key", "--coap", &format!("{addr}/other")]);
    server.cli(&[
        "token",
        "create",
        "wrong-key",
        "--device",
        "--psk",
        "--psk-key",
        "nope",
        "--data",
        &d,
    ]);
    server.cli(&["device", "add", "no-key", "--coap", &format!("{addr}/third")]);
    std::thread::sleep(Duration::from_millis(1200));
    let f = dir.path().join("app.bin");
    std::fs::write(&f, random_bytes(1000, 2)).unwrap();
    server.publish("fw/dtls", &f, &[]);
    std::thread::sleep(Duration::from_millis(300));
    // Some devices fail: the command says so with its exit status, the JSON says which.
    let out = server
        .command()
        .args([
            "notify",
            "--publish-id",
            "fw/dtls",
            "dtls-dev",
            "wrong-key",
            "no-key",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = v["results"].as_array().unwrap();
    let by = |id: &str| {
        results
            .iter()
            .find(|r| r["device"] == id)
            .unwrap_or_else(|| panic!("{id}: {v}"))
    };
    assert_eq!(by("dtls-dev")["result"], "ok", "{v}");
    assert_eq!(by("dtls-dev")["code"], "2.01", "{v}");
    assert_ne!(by("wrong-key")["result"], "ok", "{v}");
    assert!(by("no-key")["message"].as_str().unwrap().contains("no DTLS key"), "{v}");
    // The device holds the manifest URL the trigger carried (read back over DTLS).
    let got = fetch(
        "coap-client-openssl",
        &["-u", "x", "-k", "dev1ce-key"],
        &format!("{addr}/suit/trigger"),
        1024,
        &dir.path().join("trig"),
    )
    .unwrap();
    let url = String::from_utf8_lossy(&got);
    assert!(url.trim_end_matches('\0').ends_with("/fw/dtls/manifest"), "{url:?}");
    let _ = device.kill();
    let _ = device.wait();
}
