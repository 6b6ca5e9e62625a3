//! The RIOT workflow end to end: a draft-09 manifest made with `suitcase manifest create`,
//! published the way RIOT's build does (signed manifest as `riot.suit.<seq>.bin` next to both
//! slots), `suitcase notify` to a simulated device that answers 2.01 on `/suit/trigger` and
//! then fetches the manifest and its slot image with 64-byte blocks and an empty token, as
//! RIOT's nanocoap does; it verifies the signature and the image digest. Plus aiocoap-client
//! fetching `riot.suit.latest.bin`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use suitcase_bench::coap;
use suitcase_suit::manifest::ParamValue;
use suitcase_suit::{Envelope, Profile, VerifyingKey};
use support::*;

/// GET `uri` (coap://[::1]:port/path) block by block at SZX 2 with an empty token.
fn fetch_like_riot(uri: &str) -> Vec<u8> {
    let rest = uri.strip_prefix("coap://").unwrap();
    let (authority, path) = rest.split_once('/').unwrap();
    let addr: SocketAddr = authority.parse().unwrap();
    let segments: Vec<&str> = path.split('/').collect();
    let sock = UdpSocket::bind("[::1]:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let mut req = Vec::new();
    let mut buf = [0u8; 1500];
    for num in 0u32.. {
        let mid = 1000 + num as u16;
        coap::get(&mut req, mid, &[], &segments, Some((num, 2)));
        sock.send_to(&req, addr).unwrap();
        let (n, _) = sock.recv_from(&mut buf).unwrap();
        let r = coap::parse(&buf[..n]).unwrap();
        assert_eq!((r.ty, r.mid, r.code), (2, mid, 0x45), "{uri} block {num}");
        let (rnum, more, szx) = r.block2.unwrap();
        assert_eq!((rnum, szx), (num, 2), "RIOT aborts on any other block size");
        out.extend_from_slice(r.payload);
        if !more {
            break;
        }
    }
    out
}

/// A device: answers POST /suit/trigger with 2.01 (piggybacked) and reports the payload.
fn device() -> (SocketAddr, mpsc::Receiver<String>) {
    let sock = UdpSocket::bind("[::1]:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                return;
            };
            let p = coap_lite::Packet::from_bytes(&buf[..n]).unwrap();
            let path: Vec<String> = p
                .get_option(coap_lite::CoapOption::UriPath)
                .map(|l| l.iter().map(|v| String::from_utf8_lossy(v).into_owned()).collect())
                .unwrap_or_default();
            let mut resp = coap_lite::Packet::new();
            resp.header.set_type(coap_lite::MessageType::Acknowledgement);
            resp.header.message_id = p.header.message_id;
            resp.set_token(p.get_token().to_vec());
            let ok = p.header.code == coap_lite::MessageClass::Request(coap_lite::RequestType::Post)
                && path == ["suit", "trigger"];
            resp.header.code = coap_lite::MessageClass::Response(if ok {
                coap_lite::ResponseType::Created
            } else {
                coap_lite::ResponseType::NotFound
            });
            sock.send_to(&resp.to_bytes().unwrap(), peer).unwrap();
            if ok {
                tx.send(String::from_utf8(p.payload).unwrap()).unwrap();
            }
        }
    });
    (addr, rx)
}

fn http_get(url: &str) -> String {
    let out = Command::new("curl").args(["-sf", url]).output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8(o.stdout).unwrap(),
        _ => {
            // No curl: ask the same thing through the CLI's HTTP client is not possible, so
            // derive it the way the server does.
            panic!("curl is needed for this test (apt-get install curl)")
        }
    }
}

#[test]
fn riot_build_publish_notify_and_device_update() {
    if !require("curl", "--version", "Debian: apt-get install curl") {
        return;
    }
    if !require("aiocoap-client", "--help", "pip install aiocoap") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Short notify timeouts so the silent-device case ends quickly.
    let server = TestServer::start(
        &dir.path().join("data"),
        &["--notify-ack-timeout-ms", "100", "--notify-max-retransmit", "2"],
    );
    let d = dir.path();
    let p = |name: &str| d.join(name).to_str().unwrap().to_string();
    suitcase(&["keygen", "--alg", "ed25519", "--out", &p("riot.pem")]);
    let slot0 = random_bytes(20_000, 10);
    let slot1 = random_bytes(20_016, 11);
    std::fs::write(d.join("slot0.1700000000.bin"), &slot0).unwrap();
    std::fs::write(d.join("slot1.1700000000.bin"), &slot1).unwrap();
    std::fs::write(
        d.join("riot.suit_unsigned.1700000000.bin"),
        b"unsigned manifest, not served to devices",
    )
    .unwrap();

    // SUIT_COAP_ROOT as RIOT's build asks for it.
    let root = http_get(&format!("{}/coap/url/fw/suit_update/native", server.http()));
    assert_eq!(root, format!("coap://[::1]:{}/fw/suit_update/native", server.coap_port));
    let signed = p("riot.suit.1700000000.bin");
    suitcase(&[
        "manifest",
        "create",
        "--profile",
        "riot09",
        "--seq",
        "1700000000",
        "--vendor-domain",
        "riot-os.org",
        "--class",
        "native",
        "--image",
        &format!("{root}/slot0.1700000000.bin={}@0x1000", p("slot0.1700000000.bin")),
        "--image",
        &format!("{root}/slot1.1700000000.bin={}@0x40000", p("slot1.1700000000.bin")),
        "--key",
        &p("riot.pem"),
        "-o",
        &signed,
    ]);
    let out = server.cli(&[
        "publish",
        "--server",
        &server.http(),
        "--publish-id",
        "fw/suit_update/native",
        "--quiet",
        "--publish",
        &p("riot.suit_unsigned.1700000000.bin"),
        &signed,
        &p("slot0.1700000000.bin"),
        &p("slot1.1700000000.bin"),
    ]);
    assert!(out.contains("sequence number 1700000000"), "{out}");

    // Notify the device; it answers 2.01.
    let (dev, triggered) = device();
    let out = server.cli(&[
        "notify",
        "--server",
        &server.http(),
        "--publish-id",
        "fw/suit_update/native",
        &format!("[::1]:{}", dev.port()),
    ]);
    assert!(out.contains(" ok ") && out.contains("2.01"), "{out}");
    let payload = triggered.recv_timeout(Duration::from_secs(10)).unwrap();
    // Stock RIOT reads the URL with strlen(): by default the URL ends in one NUL byte.
    assert_eq!(payload, format!("{root}/riot.suit.latest.bin\0"));
    let url = payload.trim_end_matches('\0').to_string();
    assert!(payload.len() < 128, "RIOT's CONFIG_SOCK_URLPATH_MAXLEN, NUL included");
    // Without it when asked.
    let out = server.cli(&[
        "notify",
        "--server",
        &server.http(),
        "--publish-id",
        "fw/suit_update/native",
        "--trigger-nul",
        "never",
        &format!("[::1]:{}", dev.port()),
    ]);
    assert!(out.contains(" ok "), "{out}");
    assert_eq!(triggered.recv_timeout(Duration::from_secs(10)).unwrap(), url);

    // The device's update: manifest (≤ 640 bytes), signature, then the inactive slot.
    let manifest = fetch_like_riot(&url);
    assert!(manifest.len() <= 640, "{}", manifest.len());
    assert_eq!(manifest, std::fs::read(&signed).unwrap());
    let pubkey = VerifyingKey::from_public_key_pem(&std::fs::read_to_string(d.join("riot.pub.pem")).unwrap()).unwrap();
    let env = Envelope::decode(&manifest).unwrap();
    assert_eq!(env.profile(), Profile::Riot09);
    let verified = env.verify(&pubkey).unwrap();
    assert_eq!(verified.manifest().sequence_number, 1700000000);
    // Running from slot 1, the device installs slot 0: find its URI in the install sequence.
    let install = format!("{:?}", verified.manifest().install);
    assert!(install.contains("slot0.1700000000.bin"));
    let image = fetch_like_riot(&format!("{root}/slot0.1700000000.bin"));
    assert_eq!(image, slot0);
    let shared = verified.manifest().common.shared_sequence.as_ref().unwrap();
    let digests: Vec<Vec<u8>> = shared
        .parameter_maps()
        .iter()
        .filter_map(|p| match p.get(3) {
            Some(ParamValue::Digest(d)) => Some(d.bytes.clone()),
            _ => None,
        })
        .collect();
    assert!(
        digests.contains(&suitcase_store::Sha256::of(&image).0.to_vec()),
        "image digest is in the manifest"
    );

    // aiocoap's client fetches riot.suit.latest.bin too.
    let got = Command::new("aiocoap-client")
        .arg(&url)
        .output()
        .expect("aiocoap-client (pip install aiocoap)");
    assert!(got.status.success(), "{got:?}");
    assert_eq!(got.stdout, manifest, "aiocoap-client output");

    // A device that is not there: timeout reported, exit status 1.
    let silent = UdpSocket::bind("[::1]:0").unwrap();
    let out = server
        .command()
        .args([
            "notify",
            "--server",
            &server.http(),
            "--publish-id",
            "fw/suit_update/native",
            &format!("[::1]:{}", silent.local_addr().unwrap().port()),
            "[::1]:1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("timeout") || text.contains("unreachable"), "{text}");
}
