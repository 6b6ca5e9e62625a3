//! Interoperability with aiocoap (an independent CoAP stack): block-wise fetch of a large
//! image and Observe on a manifest across a publish.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::*;

fn publish(server: &TestServer, id: &str, path: &std::path::Path, extra: &[&str]) {
    server.publish(id, path, extra);
}

#[test]
fn aiocoap_client_fetches_a_large_image() {
    if !require("aiocoap-client", "--help", "pip install aiocoap") {
        return;
    }
    if !require_coap_client() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    // Over 4 MiB at 1024-byte blocks: block numbers past 4095 need 20 bits. aiocoap-client
    // sends no Block2 and keeps the size of the first reply: the publish-id chooses 1024.
    let image = random_bytes(4 * 1024 * 1024 + 3000, 99);
    let f = dir.path().join("big.bin");
    std::fs::write(&f, &image).unwrap();
    publish(&server, "fw/big", &f, &["--block-size", "1024"]);
    let out = Command::new("aiocoap-client")
        .arg(server.coap("fw/big/big.bin"))
        .output()
        .expect("aiocoap-client (pip install aiocoap)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == image, "aiocoap-client got {} bytes", out.stdout.len());
    // libcoap at 1024-byte blocks too.
    let got = coap_get(&server.coap("fw/big/big.bin"), Some(1024), &dir.path().join("got"));
    assert!(got == image, "coap-client got {} bytes", got.len());
}

#[test]
fn aiocoap_observes_a_manifest_across_a_publish() {
    if !require("aiocoap-client", "--help", "pip install aiocoap") {
        return;
    }
    if !require_coap_client() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let f = dir.path().join("app.bin");
    std::fs::write(&f, random_bytes(3000, 1)).unwrap();
    publish(&server, "fw/obs", &f, &[]);
    let first = coap_get(&server.coap("fw/obs/manifest"), None, &dir.path().join("m1"));

    // aiocoap as a library (tests/interop/aiocoap_observe.py): one hex line per representation.
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/aiocoap_observe.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args([&server.coap("fw/obs/manifest"), "2", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with aiocoap (pip install aiocoap)");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let initial = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("initial representation");
    assert_eq!(initial, hex::encode(&first));

    std::fs::write(&f, random_bytes(3000, 2)).unwrap();
    publish(&server, "fw/obs", &f, &[]);
    let second = coap_get(&server.coap("fw/obs/manifest"), None, &dir.path().join("m2"));
    assert_ne!(first, second);
    let started = Instant::now();
    let note = rx.recv_timeout(Duration::from_secs(20));
    let status = child.wait().unwrap();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let note = note.unwrap_or_else(|_| panic!("no notification within {:?}; aiocoap said: {err}", started.elapsed()));
    assert_eq!(
        note,
        hex::encode(&second),
        "the notification carries the new manifest (block-wise)"
    );
    assert!(status.success(), "{err}");
}
