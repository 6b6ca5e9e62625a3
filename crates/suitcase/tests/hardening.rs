//! Regression tests for the defects adversarial testing found on the CoAP side (issue 11):
//! each drives the real binary over loopback the way the attack did.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use suitcase_bench::coap;
use support::*;

fn publish(server: &TestServer, id: &str, file: &std::path::Path) {
    server.publish(id, file, &[]);
}

fn client() -> UdpSocket {
    let s = UdpSocket::bind("[::1]:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

fn addr(server: &TestServer) -> SocketAddr {
    format!("[::1]:{}", server.coap_port).parse().unwrap()
}

/// One confirmable GET; the reply's (code, payload, raw).
fn get(sock: &UdpSocket, to: SocketAddr, mid: u16, path: &[&str], block2: Option<(u32, u8)>) -> (u8, Vec<u8>, Vec<u8>) {
    let mut req = Vec::new();
    coap::get(&mut req, mid, b"", path, block2);
    exchange(sock, to, mid, &req)
}

fn exchange(sock: &UdpSocket, to: SocketAddr, mid: u16, req: &[u8]) -> (u8, Vec<u8>, Vec<u8>) {
    sock.send_to(req, to).unwrap();
    let mut buf = [0u8; 2048];
    loop {
        let (n, _) = sock.recv_from(&mut buf).expect("a reply");
        let r = coap::parse(&buf[..n]).unwrap();
        if r.mid == mid {
            return (r.code, r.payload.to_vec(), buf[..n].to_vec());
        }
    }
}

const CONTENT: u8 = 0x45;
const NOT_FOUND: u8 = 0x84;

#[test]
fn one_datagram_cannot_poison_a_path_and_versions_have_one_spelling() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let fw = dir.path().join("app.bin");
    std::fs::write(&fw, random_bytes(3000, 1)).unwrap();
    publish(&server, "fw/app/board", &fw);
    let (sock, to) = (client(), addr(&server));
    // Before: segments that join to the real path but resolve to nothing (`fw`,`app`,
    // `board/manifest`) cached 4.04 under the real path's key, for every device.
    assert_eq!(get(&sock, to, 1, &["fw", "app", "board/manifest"], None).0, NOT_FOUND);
    assert_eq!(
        get(&sock, to, 2, &["fw", "app/board/app.bin"], Some((0, 6))).0,
        NOT_FOUND
    );
    assert_eq!(get(&sock, to, 3, &["fw", "app", "board", "manifest"], None).0, CONTENT);
    assert_eq!(
        get(&sock, to, 4, &["fw", "app", "board", "app.bin"], Some((0, 6))).0,
        CONTENT
    );
    // A segment holding '/' never names a resource, whatever its join would be.
    assert_eq!(get(&sock, to, 11, &["fw/app/board", "app.bin"], None).0, NOT_FOUND);
    // Exactly one spelling of a version number.
    assert_eq!(
        get(&sock, to, 5, &["fw", "app", "board", "v", "1", "app.bin"], Some((0, 6))).0,
        CONTENT
    );
    for (mid, bad) in [(6, "01"), (7, "001"), (8, "+1"), (9, "1.0"), (10, " 1")] {
        let (code, ..) = get(
            &sock,
            to,
            mid,
            &["fw", "app", "board", "v", bad, "app.bin"],
            Some((0, 6)),
        );
        assert_eq!(code, NOT_FOUND, "v/{bad}");
    }
}

#[test]
fn memory_stays_within_the_cache_budget_while_a_client_walks_every_version() {
    let dir = tempfile::tempdir().unwrap();
    let budget_mib = 8;
    let server = TestServer::start(&dir.path().join("data"), &["--cache-mib", &budget_mib.to_string()]);
    // Two publish-ids, two versions each, of files three times the budget.
    let size = 3 * budget_mib * 1024 * 1024;
    let mut expected = Vec::new();
    for (i, id) in ["big/a", "big/b"].iter().enumerate() {
        for v in 0..2u64 {
            let f = dir.path().join(format!("{i}-{v}.bin"));
            let data = random_bytes(size, 100 + i as u64 * 10 + v);
            std::fs::write(&f, &data).unwrap();
            publish(&server, id, &f);
            expected.push((id.to_string(), v + 1, data));
        }
    }
    let baseline = server.rss();
    let (sock, to) = (client(), addr(&server));
    let blocks = (size / 1024) as u32;
    let mut mid = 0u16;
    for (id, version, data) in &expected {
        let id_segments: Vec<&str> = id.split('/').collect();
        let n = version.to_string();
        let spellings: Vec<Vec<&str>> = vec![
            [&id_segments[..], &["v", &n, "0-0.bin"]].concat(),
            [&id_segments[..], &["v", &n, "manifest"]].concat(),
        ];
        let file = format!("{}-{}.bin", if id.ends_with('a') { 0 } else { 1 }, version - 1);
        for path in spellings {
            let path: Vec<&str> = path
                .into_iter()
                .map(|s| if s == "0-0.bin" { file.as_str() } else { s })
                .collect();
            let is_file = path.last() == Some(&file.as_str());
            let nums = if is_file {
                vec![0, blocks / 2, blocks - 1]
            } else {
                vec![0]
            };
            for num in nums {
                mid += 1;
                let (code, payload, _) = get(&sock, to, mid, &path, Some((num, 6)));
                assert_eq!(code, CONTENT, "{path:?} block {num}");
                if is_file {
                    let at = num as usize * 1024;
                    assert_eq!(payload, data[at..at + 1024], "{path:?} block {num}");
                }
            }
        }
        // The non-canonical spellings the attack used are not resources at all.
        for bad in ["01", "001", "+1"] {
            mid += 1;
            let path = [&id_segments[..], &["v", bad, file.as_str()]].concat();
            assert_eq!(get(&sock, to, mid, &path, Some((0, 6))).0, NOT_FOUND);
        }
    }
    let after = server.rss();
    let grown = after.saturating_sub(baseline);
    // Before: every path pinned a whole copy of its file (4 files × 24 MiB at least).
    assert!(
        grown < (budget_mib as u64 + 4) * 1024 * 1024,
        "RSS grew by {grown} bytes walking {} versions (baseline {baseline}, budget {budget_mib} MiB)",
        expected.len()
    );
}

/// Send GETs from one socket as fast as it goes until `stop` (at most `limit`).
fn flood(to: SocketAddr, stop: Arc<AtomicBool>, limit: Duration) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let sock = UdpSocket::bind("[::1]:0").unwrap();
        let mut req = Vec::new();
        let start = Instant::now();
        let mut sent = 0u64;
        let mut mid = 0u16;
        while !stop.load(Ordering::Relaxed) && start.elapsed() < limit {
            mid = mid.wrapping_add(1);
            coap::get(&mut req, mid, b"", &[".well-known", "core"], None);
            if sock.send_to(&req, to).is_ok() {
                sent += 1;
            }
        }
        sent
    })
}

#[test]
fn sigterm_under_a_flood_exits_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let f = flood(addr(&server), stop.clone(), Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(500));
    let (status, log) = server.terminate(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let sent = f.join().unwrap();
    // Before: the driver drained the socket until it was empty, which a flood never lets
    // happen, so it never looked at the shutdown signal.
    assert_eq!(
        status,
        Some(0),
        "no clean exit within a second of SIGTERM under {sent} datagrams; log: {log:?}"
    );
}

#[test]
fn notifications_retransmit_while_a_flood_runs() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let fw = dir.path().join("app.bin");
    std::fs::write(&fw, random_bytes(500, 2)).unwrap();
    publish(&server, "fw/obs", &fw);
    let to = addr(&server);
    // Register an observation of the manifest (Observe: 0), never acknowledging anything.
    let obs = client();
    // CON GET, token "ob", Observe: 0 (option 6, empty), Uri-Path fw/obs/manifest.
    let mut with_observe = vec![0x42, 0x01, 0, 77, b'o', b'b', 0x60];
    for (k, seg) in ["fw", "obs", "manifest"].iter().enumerate() {
        let delta = if k == 0 { 5u8 } else { 0 };
        with_observe.push(delta << 4 | seg.len() as u8);
        with_observe.extend_from_slice(seg.as_bytes());
    }
    let (code, ..) = exchange(&obs, to, 77, &with_observe);
    assert_eq!(code, CONTENT);
    let stop = Arc::new(AtomicBool::new(false));
    let f = flood(to, stop.clone(), Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&fw, random_bytes(500, 3)).unwrap();
    publish(&server, "fw/obs", &fw);
    // The notification is confirmable; unacknowledged, it must come again (ACK_TIMEOUT 2-3 s).
    obs.set_read_timeout(Some(Duration::from_secs(12))).unwrap();
    let mut buf = [0u8; 2048];
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(12);
    let mut retransmitted = false;
    while Instant::now() < deadline {
        let Ok((n, _)) = obs.recv_from(&mut buf) else { break };
        let r = coap::parse(&buf[..n]).unwrap();
        if r.ty != 0 {
            continue;
        }
        match first {
            None => first = Some(r.mid),
            Some(m) if m == r.mid => {
                retransmitted = true;
                break;
            }
            Some(_) => {}
        }
    }
    stop.store(true, Ordering::Relaxed);
    let sent = f.join().unwrap();
    assert!(first.is_some(), "no notification during a flood of {sent} datagrams");
    assert!(
        retransmitted,
        "the notification was not retransmitted during a flood of {sent} datagrams"
    );
}

#[test]
fn oversized_datagrams_are_dropped_not_answered() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let (sock, to) = (client(), addr(&server));
    // A CON GET padded with a 3000-byte elective option: truncated at the receive buffer,
    // it used to be answered with RST.
    let mut req = Vec::new();
    coap::get(&mut req, 9, b"", &[".well-known", "core"], None);
    req.push(0xee); // delta 14 (2-byte ext), length 14 (2-byte ext)
    let (delta, len) = (1000u16 - 11 - 269, 3000u16 - 269);
    req.extend_from_slice(&delta.to_be_bytes());
    req.extend_from_slice(&len.to_be_bytes());
    req.extend(std::iter::repeat_n(b'x', 3000));
    sock.send_to(&req, to).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut buf = [0u8; 2048];
    assert!(sock.recv_from(&mut buf).is_err(), "a truncated datagram was answered");
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(get(&sock, to, 10, &[".well-known", "core"], None).0, CONTENT);
}

#[test]
fn the_amplification_limit_asks_unverified_addresses_to_echo() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &["--amplification-limit", "3"]);
    let fw = dir.path().join("app.bin");
    std::fs::write(&fw, random_bytes(5000, 4)).unwrap();
    publish(&server, "fw/amp", &fw);
    let (sock, to) = (client(), addr(&server));
    let path = ["fw", "amp", "app.bin"];
    let (code, payload, raw) = get(&sock, to, 1, &path, Some((0, 6)));
    assert_eq!(code, 0x81, "4.01 Unauthorized");
    assert!(payload.is_empty());
    let echo = echo_option(&raw).expect("an Echo option");
    // Ask again, echoing the value (option 252 after Block2 23: delta 229 = 13 + 216).
    let mut req = Vec::new();
    coap::get(&mut req, 2, b"", &path, Some((0, 6)));
    req.push(0xd0 | echo.len() as u8);
    req.push(216);
    req.extend_from_slice(&echo);
    let (code, payload, _) = exchange(&sock, to, 2, &req);
    assert_eq!(code, CONTENT);
    assert_eq!(payload.len(), 1024);
    // The address is verified now.
    assert_eq!(get(&sock, to, 3, &path, Some((1, 6))).0, CONTENT);
}

/// The value of option 252 in a reply.
fn echo_option(d: &[u8]) -> Option<Vec<u8>> {
    let tkl = usize::from(d[0] & 0xf);
    let mut i = 4 + tkl;
    let mut num = 0usize;
    while i < d.len() && d[i] != 0xff {
        let ext = |n: u8, i: &mut usize| -> usize {
            match n {
                13 => {
                    *i += 1;
                    usize::from(d[*i - 1]) + 13
                }
                14 => {
                    *i += 2;
                    usize::from(u16::from_be_bytes([d[*i - 2], d[*i - 1]])) + 269
                }
                n => usize::from(n),
            }
        };
        let b = d[i];
        i += 1;
        num += ext(b >> 4, &mut i);
        let len = ext(b & 0xf, &mut i);
        if num == 252 {
            return Some(d[i..i + len].to_vec());
        }
        i += len;
    }
    None
}
