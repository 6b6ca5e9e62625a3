//! Downloads that cannot corrupt: one version from first block to last on a latest alias,
//! block sizes for clients that send no Block2, and the completion log line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use suitcase_bench::coap;
use support::*;

fn publish(server: &TestServer, id: &str, file: &std::path::Path, extra: &[&str]) {
    server.publish(id, file, extra);
}

struct Client {
    sock: UdpSocket,
    to: SocketAddr,
    mid: u16,
}

impl Client {
    fn new(server: &TestServer) -> Self {
        let sock = UdpSocket::bind("[::1]:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        Client {
            sock,
            to: format!("[::1]:{}", server.coap_port).parse().unwrap(),
            mid: 100,
        }
    }

    /// GET one block: (code, block2 (num, more, szx), payload).
    fn get(&mut self, path: &[&str], block2: Option<(u32, u8)>) -> (u8, Option<(u32, bool, u8)>, Vec<u8>) {
        self.mid = self.mid.wrapping_add(1);
        let mut req = Vec::new();
        coap::get(&mut req, self.mid, b"t", path, block2);
        self.sock.send_to(&req, self.to).unwrap();
        let mut buf = [0u8; 2048];
        loop {
            let (n, _) = self.sock.recv_from(&mut buf).expect("a reply");
            let r = coap::parse(&buf[..n]).unwrap();
            if r.mid == self.mid {
                return (r.code, r.block2, r.payload.to_vec());
            }
        }
    }
}

#[test]
fn a_latest_alias_download_gets_one_version_from_first_block_to_last() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let f = dir.path().join("app.bin");
    let v1 = random_bytes(20_000, 1);
    let v2 = random_bytes(24_000, 2);
    std::fs::write(&f, &v1).unwrap();
    publish(&server, "fw/pin", &f, &[]);
    let mut c = Client::new(&server);
    let path = ["fw", "pin", "app.bin"];
    // Half of v1, at 64-byte blocks, as a Zephyr coap_client that ignores ETag would.
    let mut got = Vec::new();
    for num in 0..150u32 {
        let (code, b, payload) = c.get(&path, Some((num, 2)));
        assert_eq!(code, 0x45);
        assert!(b.unwrap().1);
        got.extend_from_slice(&payload);
    }
    // A publish in the middle of the download.
    std::fs::write(&f, &v2).unwrap();
    publish(&server, "fw/pin", &f, &[]);
    let mut num = 150;
    loop {
        let (code, b, payload) = c.get(&path, Some((num, 2)));
        assert_eq!(code, 0x45, "block {num}");
        got.extend_from_slice(&payload);
        if !b.unwrap().1 {
            break;
        }
        num += 1;
    }
    // Before: v1's first 150 blocks followed by v2's rest (24,000 bytes), reported as success.
    assert_eq!(got.len(), v1.len());
    assert!(got == v1, "the download was spliced from two versions");
    // A new download (block 0) gets the new version.
    let mut fresh = Vec::new();
    let mut num = 0;
    loop {
        let (_, b, payload) = c.get(&path, Some((num, 6)));
        fresh.extend_from_slice(&payload);
        if !b.unwrap().1 {
            break;
        }
        num += 1;
    }
    assert!(fresh == v2);
    // Each completed download is logged once, with its figures.
    let lines = (0..50)
        .find_map(|_| {
            let l: Vec<String> = server
                .log()
                .into_iter()
                .filter(|l| l.contains("coap transfer complete") && l.contains("path=fw/pin/app.bin"))
                .collect();
            if l.len() >= 2 {
                Some(l)
            } else {
                std::thread::sleep(Duration::from_millis(20));
                None
            }
        })
        .expect("two transfer lines");
    assert!(
        lines[0].contains("blocks=313") && lines[0].contains("block_size=64"),
        "{lines:?}"
    );
    assert!(
        lines[1].contains("blocks=24") && lines[1].contains("block_size=1024"),
        "{lines:?}"
    );
}

#[test]
fn requests_without_block2_get_a_size_every_client_can_receive_or_the_publish_ids_own() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let f = dir.path().join("app.bin");
    std::fs::write(&f, random_bytes(5000, 3)).unwrap();
    publish(&server, "fw/small", &f, &[]);
    publish(&server, "fw/big", &f, &["--block-size", "256"]);
    let mut c = Client::new(&server);
    // 64 bytes: what a Zephyr coap_client built for 64-byte blocks receives whole.
    let (code, b, payload) = c.get(&["fw", "small", "app.bin"], None);
    assert_eq!((code, b.map(|b| b.2), payload.len()), (0x45, Some(2), 64));
    let (_, b, payload) = c.get(&["fw", "big", "app.bin"], None);
    assert_eq!((b.map(|b| b.2), payload.len()), (Some(4), 256));
    // A client that asks gets what it asks for, either way.
    let (_, b, payload) = c.get(&["fw", "small", "app.bin"], Some((0, 6)));
    assert_eq!((b.map(|b| b.2), payload.len()), (Some(6), 1024));
    // The listing says which publish chose its own.
    let out = server.cli(&["list", "--server", &server.http(), "fw/big", "--json"]);
    assert!(out.contains("\"block_size\":256"), "{out}");
}
