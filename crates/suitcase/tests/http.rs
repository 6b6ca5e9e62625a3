//! The HTTP side over a real socket: HTTPS with a certificate made by openssl, publisher and
//! device tokens made with `suitcase token`, and the ESP contracts, driven by curl.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use support::*;

/// curl with the test's CA; returns (status, headers+body as text, body bytes).
fn curl(args: &[&str]) -> (u16, String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "-o"])
        .arg(&body)
        .args(args)
        .output()
        .expect("curl");
    let head = String::from_utf8_lossy(&out.stdout).to_string();
    let status = head
        .lines()
        .rev()
        .find(|l| l.starts_with("HTTP/"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head, std::fs::read(&body).unwrap_or_default())
}

#[test]
fn https_tokens_and_esp_update() {
    if !require("curl", "--version", "Debian: apt-get install curl") {
        return;
    }
    if !require("openssl", "version", "Debian: apt-get install openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cert, key) = (d.join("cert.pem"), d.join("key.pem"));
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
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=IP:::1,DNS:localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(ok.status.success(), "{ok:?}");
    let data = d.join("data");
    let server = TestServer::start(
        &data,
        &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()],
    );
    // No publisher token existed: the server made one, wrote it to a file only its owner can
    // read, and logs where the file is, never the token.
    let local = server.token();
    let said = (0..50).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        server.log().iter().any(|l| l.contains("local-publisher.token"))
    });
    assert!(said, "the log names the local token file");
    assert!(
        !server.log().iter().any(|l| l.contains(&local)),
        "the token is never logged"
    );
    let base = format!("https://[::1]:{}", server.http_port);
    let ca = cert.to_str().unwrap();

    // A certificate the client trusts: HTTPS works; plain HTTP on that port does not.
    let (s, _, b) = curl(&["--cacert", ca, &format!("{base}/healthz")]);
    assert_eq!((s, b.as_slice()), (200, &b"ok"[..]));
    let (s, _, _) = curl(&[&format!("http://[::1]:{}/healthz", server.http_port)]);
    assert_ne!(s, 200);

    // Publisher token: always required, from loopback too.
    let token = suitcase(&["token", "create", "ci", "--data", data.to_str().unwrap()])
        .trim()
        .to_string();
    let image: Vec<u8> = std::iter::once(0xE9u8).chain(random_bytes(40_000, 5)).collect();
    let img = d.join("lamp_v2.1.0.bin");
    std::fs::write(&img, &image).unwrap();
    let form = format!("image=@{}", img.display());
    let (s, _, b) = curl(&["--cacert", ca, "-X", "PUT", "-F", &form, &format!("{base}/images")]);
    assert_eq!(s, 401, "{}", String::from_utf8_lossy(&b));
    let (s, _, b) = curl(&[
        "--cacert",
        ca,
        "-X",
        "PUT",
        "-H",
        "Authorization: Bearer nope",
        "-F",
        &form,
        &format!("{base}/images"),
    ]);
    assert_eq!(s, 401, "{}", String::from_utf8_lossy(&b));
    let auth = format!("Authorization: Bearer {token}");
    // Made by another process: in force once the server's watcher read the file (a guarded
    // request with that token then gets past the guard to the handler's 422).
    wait_for_status(
        &[
            "--cacert",
            ca,
            "-X",
            "POST",
            "-H",
            &auth,
            "-H",
            "content-type: application/json",
            "-d",
            "{}",
            &format!("{base}/remove"),
        ],
        422,
    );
    let (s, _, b) = curl(&[
        "--cacert",
        ca,
        "-X",
        "PUT",
        "-H",
        &auth,
        "-F",
        &form,
        &format!("{base}/images"),
    ]);
    assert_eq!(s, 201, "{}", String::from_utf8_lossy(&b));
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["url"], format!("{base}/images/lamp/lamp_v2.1.0.bin"));

    // ESP8266httpUpdate: 304 when current, 200 + x-MD5 otherwise, 400 without the header.
    let fw = format!("{base}/firmware/lamp");
    assert_eq!(curl(&["--cacert", ca, "-H", "x-ESP8266-version: 2.1.0", &fw]).0, 304);
    assert_eq!(curl(&["--cacert", ca, &fw]).0, 400);
    let (s, head, body) = curl(&["--cacert", ca, "-H", "x-ESP32-version: 2.0.9", &fw]);
    assert_eq!(s, 200);
    assert!(body == image);
    let md5 = head
        .lines()
        .find_map(|l| l.strip_prefix("x-md5: "))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(md5.len(), 32);

    // esp32FOTA manifest.
    let (s, _, b) = curl(&[
        "--cacert",
        ca,
        &format!("{base}/images/images.json?type=lamp&vers=2.0.0"),
    ]);
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v[0]["version"], "2.1.0");

    // Device tokens close downloads to everyone else (once the server's token watcher has
    // read the file another process changed: within about half a second).
    let dev = suitcase(&["token", "create", "lamps", "--device", "--data", data.to_str().unwrap()])
        .trim()
        .to_string();
    wait_for_status(&["--cacert", ca, "-H", "x-ESP32-version: 1.0", &fw], 403);
    let dev_auth = format!("Authorization: token {dev}");
    assert_eq!(
        curl(&["--cacert", ca, "-H", "x-ESP32-version: 1.0", "-H", &dev_auth, &fw]).0,
        200
    );
    // Revoked: refused again.
    suitcase(&["token", "revoke", "lamps", "--data", data.to_str().unwrap()]);
    suitcase(&[
        "token",
        "create",
        "other-device",
        "--device",
        "--data",
        data.to_str().unwrap(),
    ]);
    wait_for_status(
        &["--cacert", ca, "-H", "x-ESP32-version: 1.0", "-H", &dev_auth, &fw],
        403,
    );
}

/// Repeat a curl call until it answers `status` (the server re-reads tokens.json in the
/// background), for at most 10 s.
fn wait_for_status(args: &[&str], status: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (s, _, b) = curl(args);
        if s == status {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {s} instead of {status}: {}",
            String::from_utf8_lossy(&b)
        );
    }
}
