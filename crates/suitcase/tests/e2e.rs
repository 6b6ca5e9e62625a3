//! End to end, as a new user would: start the binary, publish with `suitcase publish`,
//! download with libcoap's coap-client at several block sizes, verify the manifest.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use suitcase_suit::manifest::ParamValue;
use suitcase_suit::{Envelope, VerifyingKey};
use support::*;

#[test]
fn publish_then_download_with_coap_client_at_several_block_sizes() {
    if !require_coap_client() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let image = random_bytes(1 << 20, 0x5eed);
    let fw = dir.path().join("firmware.bin");
    std::fs::write(&fw, &image).unwrap();

    let out = server.publish("fw/demo/board", &fw, &[]);
    assert!(out.contains("published fw/demo/board version 1"), "{out}");
    // The audit line says who published what (digest, size).
    let digest = suitcase_store::Sha256::of(&image).to_hex();
    let audited = (0..50).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        server.log().iter().any(|l| {
            l.contains("action=\"publish\"")
                && l.contains("who=token:local@")
                && l.contains(&digest)
                && l.contains("size=1048576")
        })
    });
    assert!(audited, "no audit line: {:?}", server.log());

    let got = dir.path().join("got.bin");
    for block in [Some(64), Some(256), Some(1024), None] {
        let bytes = coap_get(&server.coap("fw/demo/board/firmware.bin"), block, &got);
        assert!(
            bytes == image,
            "block size {block:?}: {} bytes differ from the image",
            bytes.len()
        );
    }

    // The manifest over CoAP verifies with the server's public key and describes the image.
    let manifest = coap_get(
        &server.coap("fw/demo/board/manifest"),
        Some(64),
        &dir.path().join("m.suit"),
    );
    let pem = std::fs::read_to_string(server.data.join("keys/signing-key.pub.pem")).unwrap();
    let key = VerifyingKey::from_public_key_pem(&pem).unwrap();
    let verified = Envelope::decode(&manifest).unwrap().verify(&key).unwrap();
    let params = verified.manifest().component_parameters();
    let p = &params[0].1;
    let digest = match p.get(3) {
        Some(ParamValue::Digest(d)) => d.bytes.clone(),
        other => panic!("image digest: {other:?}"),
    };
    assert_eq!(digest, suitcase_store::Sha256::of(&image).0.to_vec());
    assert_eq!(p.get(14), Some(&ParamValue::Uint(image.len() as u64)));
    // The URI signed into the manifest resolves to the same bytes.
    let uri = match p.get(21) {
        Some(ParamValue::Text(u)) => u.clone(),
        other => panic!("uri: {other:?}"),
    };
    assert!(uri.starts_with(&format!("coap://[::1]:{}/", server.coap_port)), "{uri}");
    assert_eq!(coap_get(&uri, Some(1024), &got), image);

    // And the CLI agrees.
    let pub_path = server.data.join("keys/signing-key.pub.pem");
    let m_path = dir.path().join("m.suit");
    let out = suitcase(&[
        "manifest",
        "verify",
        "--key",
        pub_path.to_str().unwrap(),
        m_path.to_str().unwrap(),
    ]);
    assert!(out.starts_with("OK"), "{out}");
}

#[test]
fn a_second_publish_moves_latest_and_keeps_the_old_version() {
    if !require_coap_client() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let (a, b) = (random_bytes(5000, 1), random_bytes(7000, 2));
    let f = dir.path().join("app.bin");
    std::fs::write(&f, &a).unwrap();
    server.publish("x", &f, &[]);
    std::fs::write(&f, &b).unwrap();
    server.publish("x", &f, &["--version", "1.2.0"]);
    let got = dir.path().join("got");
    assert_eq!(coap_get(&server.coap("x/app.bin"), Some(256), &got), b);
    assert_eq!(coap_get(&server.coap("x/v/1/app.bin"), Some(256), &got), a);
    assert_eq!(coap_get(&server.coap("x/v/2/app.bin"), Some(256), &got), b);

    // `suitcase list` shows both versions, newest first, with digests.
    let listing = suitcase(&["list", "--server", &server.http(), "x"]);
    let v2 = listing.find("v2 ").unwrap();
    let v1 = listing.find("v1 ").unwrap();
    assert!(v2 < v1, "{listing}");
    assert!(
        listing.contains(&suitcase_store::Sha256::of(&a).to_hex()) && listing.contains("semver 1.2.0"),
        "{listing}"
    );
    assert!(suitcase(&["list", "--server", &server.http()]).contains("latest v2 (2 version(s))"));

    // Unknown paths are 4.04, and /.well-known/core lists the resources.
    let out = Command::new(coap_client())
        .args(["-m", "get", "-B", "5", &server.coap("x/nope.bin")])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("4.04") || String::from_utf8_lossy(&out.stderr).contains("4.04"),
        "{out:?}"
    );
    let wk = coap_get(&server.coap(".well-known/core"), None, &got);
    let wk = String::from_utf8(wk).unwrap();
    assert!(wk.contains("</x/manifest>") && wk.contains("</x/app.bin>"), "{wk}");

    // A restart serves the same versions from disk.
    let data = server.data.clone();
    drop(server);
    let server = TestServer::start(&data, &[]);
    assert_eq!(coap_get(&server.coap("x/app.bin"), Some(64), &got), b);
    assert_eq!(coap_get(&server.coap("x/v/1/app.bin"), Some(64), &got), a);
}
