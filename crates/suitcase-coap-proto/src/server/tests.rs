//! Request/response tables for the sans-IO server.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use crate::block::uint_option;
use crate::map::MapResources;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};

/// The tables' resources (the crate's own map of resources, changeable while served).
type Fixed = MapResources;

fn h(s: &mut Server<Fixed>, d: &[u8]) -> Option<Vec<u8>> {
    s.handle_datagram(Instant::now(), peer(), d).map(|b| b.to_vec())
}

fn server(body_len: usize) -> Server<Fixed> {
    server_with(Config::default(), body_len)
}

fn server_with(config: Config, body_len: usize) -> Server<Fixed> {
    let body: Vec<u8> = (0..body_len).map(|i| (i * 7 % 251) as u8).collect();
    let f = Fixed::default();
    f.set("fw/app/board/img.bin", body, *b"12345678");
    f.set("fw/app/board/manifest", vec![1; 100], *b"manifst1");
    Server::new(config, f, Instant::now(), 1000)
}

fn peer() -> SocketAddr {
    "[::1]:5000".parse().unwrap()
}

/// A CON GET of `path` with one more option added.
fn get_with(path: &str, option: CoapOption, value: Vec<u8>) -> Vec<u8> {
    let mut p = Packet::from_bytes(&get(MessageType::Confirmable, 1, b"", path, None)).unwrap();
    p.add_option(option, value);
    p.to_bytes().unwrap()
}

fn get(ty: MessageType, mid: u16, token: &[u8], path: &str, block2: Option<Vec<u8>>) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_type(ty);
    p.header.code = MessageClass::Request(RequestType::Get);
    p.header.message_id = mid;
    p.set_token(token.to_vec());
    for s in path.split('/') {
        p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
    }
    if let Some(b) = block2 {
        p.add_option(CoapOption::Block2, b);
    }
    p.to_bytes().unwrap()
}

fn roundtrip(s: &mut Server<Fixed>, req: &[u8]) -> Packet {
    let out = h(s, req).expect("a reply");
    Packet::from_bytes(&out).unwrap()
}

fn block2_of(p: &Packet) -> Option<BlockValue> {
    p.get_first_option(CoapOption::Block2)
        .and_then(|v| BlockValue::decode(v))
}

#[test]
fn con_get_is_piggybacked_with_block2_etag_size2() {
    let mut s = server(3000);
    let r = roundtrip(
        &mut s,
        &get(
            MessageType::Confirmable,
            77,
            b"",
            "fw/app/board/img.bin",
            Some(vec![0x02]),
        ),
    );
    assert_eq!(r.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(r.header.message_id, 77);
    assert_eq!(r.get_token(), b"");
    assert_eq!(r.header.code, MessageClass::Response(ResponseType::Content));
    assert_eq!(
        block2_of(&r),
        Some(BlockValue {
            num: 0,
            more: true,
            szx: 2
        })
    );
    assert_eq!(r.payload.len(), 64);
    assert_eq!(r.get_first_option(CoapOption::ETag).unwrap(), b"12345678");
    assert_eq!(r.get_first_option(CoapOption::Size2).unwrap(), &uint_option(3000));
}

#[test]
fn every_block_reassembles_the_body_at_every_size() {
    for len in [0usize, 1, 63, 64, 65, 1024, 3000, 70_000] {
        for szx in 0..=6u8 {
            let mut s = server(len);
            let want = s.resources().body("fw/app/board/img.bin").unwrap();
            let mut got = Vec::new();
            let mut num = 0u32;
            loop {
                let b = BlockValue { num, more: false, szx }.encode();
                let r = roundtrip(
                    &mut s,
                    &get(
                        MessageType::Confirmable,
                        num as u16,
                        b"tk",
                        "fw/app/board/img.bin",
                        Some(b),
                    ),
                );
                let blk = block2_of(&r).unwrap();
                assert_eq!((blk.num, blk.szx), (num, szx));
                got.extend_from_slice(&r.payload);
                if !blk.more {
                    break;
                }
                num += 1;
            }
            assert_eq!(got, want, "len {len} szx {szx}");
        }
    }
}

#[test]
fn without_block2_the_default_size_is_used_only_when_needed() {
    let mut s = server(200);
    let r = roundtrip(
        &mut s,
        &get(MessageType::Confirmable, 1, b"a", "fw/app/board/img.bin", None),
    );
    assert_eq!(block2_of(&r), None);
    assert_eq!(r.payload.len(), 200);
    let mut s = server(1000);
    let r = roundtrip(
        &mut s,
        &get(MessageType::Confirmable, 1, b"a", "fw/app/board/img.bin", None),
    );
    assert_eq!(
        block2_of(&r),
        Some(BlockValue {
            num: 0,
            more: true,
            szx: 4
        })
    );
    assert_eq!(r.payload.len(), 256);
}

#[test]
fn block_numbers_use_twenty_bits() {
    // 5 MiB at 1024-byte blocks: block 5000 needs a 3-byte option.
    let mut s = server(5 * 1024 * 1024);
    let b = BlockValue {
        num: 5000,
        more: false,
        szx: 6,
    };
    let r = roundtrip(
        &mut s,
        &get(
            MessageType::Confirmable,
            1,
            b"",
            "fw/app/board/img.bin",
            Some(b.encode()),
        ),
    );
    assert_eq!(block2_of(&r).unwrap().num, 5000);
    let body = s.resources().body("fw/app/board/img.bin").unwrap();
    assert_eq!(r.payload, body[5000 * 1024..5001 * 1024]);
}

#[test]
fn larger_than_served_sizes_are_scaled_down() {
    let cfg = Config {
        default_szx: 4,
        max_szx: 4,
        ..Config::default()
    };
    let mut s = server_with(cfg, 5000);
    let b = BlockValue {
        num: 1,
        more: false,
        szx: 6,
    }
    .encode();
    let r = roundtrip(
        &mut s,
        &get(MessageType::Confirmable, 1, b"", "fw/app/board/img.bin", Some(b)),
    );
    assert_eq!(
        block2_of(&r),
        Some(BlockValue {
            num: 4,
            more: true,
            szx: 4
        })
    );
}

#[test]
fn error_table() {
    let mut s = server(100);
    let cases: Vec<(Vec<u8>, ResponseType)> = vec![
        (
            get(MessageType::Confirmable, 1, b"", "nope", None),
            ResponseType::NotFound,
        ),
        (
            get(
                MessageType::Confirmable,
                1,
                b"",
                "fw/app/board/img.bin",
                Some(vec![0x17]),
            ),
            ResponseType::BadOption,
        ),
        (
            get(
                MessageType::Confirmable,
                1,
                b"",
                "fw/app/board/img.bin",
                Some(vec![1, 2, 3, 4]),
            ),
            ResponseType::BadOption,
        ),
        (
            get(
                MessageType::Confirmable,
                1,
                b"",
                "fw/app/board/img.bin",
                Some(vec![0x70]),
            ),
            ResponseType::BadOption,
        ),
        (
            {
                let mut p =
                    Packet::from_bytes(&get(MessageType::Confirmable, 1, b"", "fw/app/board/img.bin", None)).unwrap();
                p.header.code = MessageClass::Request(RequestType::Put);
                p.to_bytes().unwrap()
            },
            ResponseType::MethodNotAllowed,
        ),
        (
            get_with("fw/app/board/img.bin", CoapOption::Unknown(2049), vec![1]),
            ResponseType::BadOption,
        ),
        (
            get_with("fw/app/board/img.bin", CoapOption::Block1, vec![0x06]),
            ResponseType::BadOption,
        ),
        // A 1000-byte Uri-Path segment (two-byte length extension): not found, no panic.
        (
            get(MessageType::Confirmable, 1, b"", &"x".repeat(1000), None),
            ResponseType::NotFound,
        ),
        // A Uri-Path that is not UTF-8.
        (
            get_with("fw", CoapOption::UriPath, vec![0xff, 0xfe]),
            ResponseType::BadRequest,
        ),
        // Accept of a format the resource is not in.
        (
            get_with("fw/app/board/img.bin", CoapOption::Accept, vec![60]),
            ResponseType::NotAcceptable,
        ),
        // Proxy-Uri: this is no proxy.
        (
            get_with("fw", CoapOption::ProxyUri, b"coap://elsewhere/x".to_vec()),
            ResponseType::ProxyingNotSupported,
        ),
    ];
    for (i, (req, code)) in cases.into_iter().enumerate() {
        // Distinct message IDs, or deduplication would answer the first reply again.
        let mut p = Packet::from_bytes(&req).unwrap();
        p.header.message_id = 100 + i as u16;
        let req = p.to_bytes().unwrap();
        let r = roundtrip(&mut s, &req);
        assert_eq!(r.header.code, MessageClass::Response(code), "{req:02x?}");
        assert_eq!(r.header.get_type(), MessageType::Acknowledgement);
    }
}

#[test]
fn block_numbers_that_overflow_twenty_bits_when_scaled_are_refused() {
    // Served at most at 256 bytes: block 2^20-1 of 1024 bytes would be block 2^22-4 of 256.
    let cfg = Config {
        default_szx: 4,
        max_szx: 4,
        ..Config::default()
    };
    let mut s = server_with(cfg, 100);
    let b = BlockValue {
        num: crate::block::MAX_NUM,
        more: false,
        szx: 6,
    }
    .encode();
    let r = roundtrip(
        &mut s,
        &get(MessageType::Confirmable, 1, b"", "fw/app/board/img.bin", Some(b)),
    );
    assert_eq!(r.header.code, MessageClass::Response(ResponseType::BadOption));
}

#[test]
fn etag_match_gives_valid() {
    let mut s = server(100);
    let mut p = Packet::from_bytes(&get(MessageType::Confirmable, 9, b"x", "fw/app/board/img.bin", None)).unwrap();
    p.add_option(CoapOption::ETag, b"12345678".to_vec());
    let r = roundtrip(&mut s, &p.to_bytes().unwrap());
    assert_eq!(r.header.code, MessageClass::Response(ResponseType::Valid));
    assert!(r.payload.is_empty());
}

#[test]
fn non_requests_get_non_replies_and_pings_get_reset() {
    let mut s = server(10);
    let r = roundtrip(
        &mut s,
        &get(MessageType::NonConfirmable, 5, b"t", "fw/app/board/img.bin", None),
    );
    assert_eq!(r.header.get_type(), MessageType::NonConfirmable);
    assert_eq!(r.get_token(), b"t");
    assert_ne!(r.header.message_id, 5);
    // CoAP ping.
    assert_eq!(h(&mut s, &[0x40, 0, 0x12, 0x34]), Some(vec![0x70, 0, 0x12, 0x34]));
    // ACK and RST are not answered.
    assert_eq!(h(&mut s, &[0x60, 0, 0, 1]), None);
    assert_eq!(h(&mut s, &[0x70, 0, 0, 1]), None);
}

#[test]
fn malformed_messages_never_panic() {
    let mut s = server(10);
    // Truncated header, bad version, TKL 9, marker without payload, bad option delta 15.
    assert_eq!(h(&mut s, &[0x40, 1]), None);
    assert_eq!(h(&mut s, &[0x80, 1, 0, 1]), None);
    assert_eq!(
        h(&mut s, &[0x49, 1, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
        Some(vec![0x70, 0, 0, 1])
    );
    assert_eq!(h(&mut s, &[0x40, 1, 0, 2, 0xff]), Some(vec![0x70, 0, 0, 2]));
    assert_eq!(h(&mut s, &[0x40, 1, 0, 3, 0xf1, 0]), Some(vec![0x70, 0, 0, 3]));
    // Empty message with a token.
    assert_eq!(h(&mut s, &[0x41, 0, 0, 4, 9]), Some(vec![0x70, 0, 0, 4]));
    // Every prefix and every single-byte corruption of a valid request: no panic.
    let req = get(
        MessageType::Confirmable,
        1,
        b"abcd",
        "fw/app/board/img.bin",
        Some(vec![0x12]),
    );
    for n in 0..req.len() {
        let _ = h(&mut s, &req[..n]);
        for bit in 0..8 {
            let mut m = req.clone();
            m[n] ^= 1 << bit;
            let _ = h(&mut s, &m);
        }
    }
}

fn observe_get(mid: u16, token: &[u8], path: &str, observe: u32, block2: Option<Vec<u8>>) -> Vec<u8> {
    let mut p = Packet::from_bytes(&get(MessageType::Confirmable, mid, token, path, block2)).unwrap();
    p.add_option(CoapOption::Observe, uint_option(observe));
    p.to_bytes().unwrap()
}

#[test]
fn duplicates_get_the_same_reply_without_reprocessing() {
    let mut s = server(3000);
    let req = get(
        MessageType::Confirmable,
        4242,
        b"dup",
        "fw/app/board/img.bin",
        Some(vec![0x16]),
    );
    let first = h(&mut s, &req).unwrap();
    let second = h(&mut s, &req).unwrap();
    assert_eq!(first, second);
    assert_eq!(s.stats().duplicates, 1);
    assert_eq!(s.stats().requests, 1);
    // The table keeps the range, not the bytes. The resource changes in between: this
    // download (block 1 came from the old representation) cannot go on with the new one's
    // bytes, and the old one is gone (this resource set keeps no old versions), so the
    // duplicate gets 4.04 (same MID and token) instead of a spliced block.
    s.resources().set("fw/app/board/img.bin", vec![9; 3000], *b"changed!");
    let third = Packet::from_bytes(&h(&mut s, &req).unwrap()).unwrap();
    assert_eq!(third.header.message_id, 4242);
    assert_eq!(third.get_token(), b"dup");
    assert_eq!(third.header.code, MessageClass::Response(ResponseType::NotFound));
    assert_eq!(s.stats().duplicates, 2);
    assert_eq!(s.stats().requests, 1);
    // A NON duplicate is silently ignored.
    let non = get(MessageType::NonConfirmable, 4243, b"n", "fw/app/board/img.bin", None);
    assert!(h(&mut s, &non).is_some());
    assert!(h(&mut s, &non).is_none());
    // A new download (block 0) gets the new representation, and its later blocks too.
    for (mid, block) in [(4244, 0x06u8), (4245, 0x16)] {
        let next = get(
            MessageType::Confirmable,
            mid,
            b"dup",
            "fw/app/board/img.bin",
            Some(vec![block]),
        );
        let r = Packet::from_bytes(&h(&mut s, &next).unwrap()).unwrap();
        assert_eq!(r.get_first_option(CoapOption::ETag).unwrap(), b"changed!");
        assert_eq!(r.payload, vec![9; 1024]);
    }
}

#[test]
fn dedup_memory_is_bounded() {
    let cfg = Config {
        max_peers: 100,
        ..Config::default()
    };
    let mut s = server_with(cfg, 10);
    for i in 0..1000u16 {
        let peer: SocketAddr = format!("[::1]:{}", 10000 + i).parse().unwrap();
        let req = get(MessageType::Confirmable, i, b"", "fw/app/board/img.bin", None);
        assert!(s.handle_datagram(Instant::now(), peer, &req).is_some());
    }
    assert!(s.remembered_peers() <= 200, "{}", s.remembered_peers());
    // Entries expire after EXCHANGE_LIFETIME (two rotations at most).
    let later = Instant::now() + Duration::from_secs(600);
    s.handle_timeout(later);
    s.handle_timeout(later + Duration::from_secs(300));
    assert_eq!(s.remembered_peers(), 0);
}

#[test]
fn observe_notifies_on_change_retransmits_and_deregisters() {
    let mut s = server(10);
    let t0 = Instant::now();
    let r = roundtrip(
        &mut s,
        &observe_get(1, b"ob", "fw/app/board/manifest", 0, Some(vec![0x02])),
    );
    assert_eq!(r.header.code, MessageClass::Response(ResponseType::Content));
    assert!(r.get_first_option(CoapOption::Observe).is_some(), "registered");
    assert_eq!(s.observer_count(), 1);
    // Nothing changes: nothing is sent.
    s.handle_timeout(t0 + Duration::from_secs(1));
    assert!(s.poll_transmit().is_none());
    // A new manifest: one CON notification with block 0 at the registered size.
    s.resources().set("fw/app/board/manifest", vec![2; 100], *b"manifst2");
    s.handle_timeout(t0 + Duration::from_secs(2));
    let n = s.poll_transmit().expect("notification");
    assert!(s.poll_transmit().is_none());
    let p = Packet::from_bytes(&n.data).unwrap();
    assert_eq!(p.header.get_type(), MessageType::Confirmable);
    assert_eq!(p.get_token(), b"ob");
    assert_eq!(p.get_first_option(CoapOption::ETag).unwrap(), b"manifst2");
    assert_eq!(
        block2_of(&p),
        Some(BlockValue {
            num: 0,
            more: true,
            szx: 2
        })
    );
    assert_eq!(p.payload, vec![2; 16 << 2]);
    // Not acknowledged: retransmitted with back-off, the same bytes.
    // ACK_TIMEOUT is 2 s × [1, 1.5): nothing before 4 s, a retransmission by 5 s.
    s.handle_timeout(t0 + Duration::from_millis(3990));
    assert!(s.poll_transmit().is_none());
    let due = t0 + Duration::from_secs(5);
    s.handle_timeout(due);
    assert_eq!(s.poll_transmit().unwrap().data, n.data);
    assert_eq!(s.stats().retransmissions, 1);
    // The ACK stops retransmission.
    let ack = [0x60, 0, n.data[2], n.data[3]];
    assert!(h(&mut s, &ack).is_none());
    s.handle_timeout(due + Duration::from_secs(60));
    assert!(s.poll_transmit().is_none());
    assert_eq!(s.observer_count(), 1);
    // Another change, answered with RST: the observer is gone.
    s.resources().set("fw/app/board/manifest", vec![3; 10], *b"manifst3");
    s.handle_timeout(due + Duration::from_secs(61));
    let n = s.poll_transmit().unwrap();
    assert!(h(&mut s, &[0x70, 0, n.data[2], n.data[3]]).is_none());
    assert_eq!(s.observer_count(), 0);
}

#[test]
fn unacknowledged_notifications_end_the_observation() {
    let mut s = server(10);
    let t0 = Instant::now();
    roundtrip(&mut s, &observe_get(1, b"x", "fw/app/board/manifest", 0, None));
    s.resources().set("fw/app/board/manifest", vec![5; 10], *b"manifst5");
    let mut now = t0 + Duration::from_secs(1);
    s.handle_timeout(now);
    let mut sent = 0;
    while s.poll_transmit().is_some() {
        sent += 1;
    }
    for _ in 0..1000 {
        if s.observer_count() == 0 {
            break;
        }
        now = s.poll_timeout().unwrap().max(now);
        s.handle_timeout(now);
        while s.poll_transmit().is_some() {
            sent += 1;
        }
    }
    assert_eq!(sent, 5, "1 + MAX_RETRANSMIT transmissions");
    assert_eq!(s.observer_count(), 0);
}

#[test]
fn observe_cancel_and_limits() {
    let cfg = Config {
        max_observers: 1,
        ..Config::default()
    };
    let mut s = server_with(cfg, 10);
    roundtrip(&mut s, &observe_get(1, b"a", "fw/app/board/manifest", 0, None));
    // Files are not observable; a second peer beyond the limit is served without Observe.
    let r = roundtrip(&mut s, &observe_get(2, b"b", "fw/app/board/img.bin", 0, None));
    assert!(r.get_first_option(CoapOption::Observe).is_none());
    let other: SocketAddr = "[::1]:6000".parse().unwrap();
    let out = s
        .handle_datagram(
            Instant::now(),
            other,
            &observe_get(3, b"c", "fw/app/board/manifest", 0, None),
        )
        .unwrap()
        .to_vec();
    assert!(Packet::from_bytes(&out)
        .unwrap()
        .get_first_option(CoapOption::Observe)
        .is_none());
    assert_eq!(s.observer_count(), 1);
    // Observe: 1 deregisters.
    roundtrip(&mut s, &observe_get(4, b"a", "fw/app/board/manifest", 1, None));
    assert_eq!(s.observer_count(), 0);
}

#[test]
fn one_peer_cannot_fill_the_observe_table() {
    let mut s = server(10);
    for i in 0..20 {
        s.resources()
            .set(&format!("fw/{i}/manifest"), vec![1; 10], *b"manifst1");
    }
    for i in 0..20u16 {
        roundtrip(
            &mut s,
            &observe_get(100 + i, b"t", &format!("fw/{i}/manifest"), 0, None),
        );
    }
    assert_eq!(s.observer_count(), Config::default().max_observers_per_peer);
    assert_eq!(s.stats().observers_refused, 12);
    // Registering the same resource again replaces the registration, never adds one.
    for i in 0..5u16 {
        roundtrip(&mut s, &observe_get(200 + i, b"u", "fw/0/manifest", 0, None));
    }
    assert_eq!(s.observer_count(), 8);
    // Other ports of the same host share its allowance (IPv6: the /64).
    for (i, other) in ["[::1]:6001", "[::0.0.0.1]:6002"].iter().enumerate() {
        let other: SocketAddr = other.parse().unwrap();
        let r = s
            .handle_datagram(
                Instant::now(),
                other,
                &observe_get(1 + i as u16, b"o", "fw/0/manifest", 0, None),
            )
            .unwrap()
            .to_vec();
        assert!(Packet::from_bytes(&r)
            .unwrap()
            .get_first_option(CoapOption::Observe)
            .is_none());
    }
    assert_eq!(s.observer_count(), 8);
    // Another host has its own.
    let other: SocketAddr = "[2001:db8:1::5]:6001".parse().unwrap();
    assert!(s
        .handle_datagram(Instant::now(), other, &observe_get(1, b"o", "fw/0/manifest", 0, None))
        .is_some());
    assert_eq!(s.observer_count(), 9);
}

#[test]
fn silent_observers_expire_and_live_ones_stay() {
    let cfg = Config {
        observe_lifetime: Duration::from_secs(100),
        ..Config::default()
    };
    let mut s = server_with(cfg, 10);
    let t0 = Instant::now();
    let live: SocketAddr = "[::1]:7001".parse().unwrap();
    let gone: SocketAddr = "[::1]:7002".parse().unwrap();
    for p in [live, gone] {
        s.handle_datagram(t0, p, &observe_get(1, b"x", "fw/app/board/manifest", 0, None));
    }
    assert_eq!(s.observer_count(), 2);
    // Nothing changes for a long time: each observer is asked once, with a CON.
    let mut now = t0;
    let mut asked = 0;
    for _ in 0..2000 {
        now += Duration::from_secs(1);
        s.handle_timeout(now);
        while let Some(t) = s.poll_transmit() {
            let p = Packet::from_bytes(&t.data).unwrap();
            assert_eq!(p.header.get_type(), MessageType::Confirmable);
            if t.peer == live {
                asked += 1;
                let [a, b] = p.header.message_id.to_be_bytes();
                s.handle_datagram(now, live, &[0x60, 0, a, b]);
            }
        }
    }
    assert!(asked >= 2, "the live observer was asked every lifetime ({asked})");
    assert_eq!(s.observer_count(), 1, "the silent one is gone");
}

#[test]
fn preconditions_fail_with_4_12() {
    // A fresh server per request: get_with uses one message ID.
    let code = |_: &mut (), req: Vec<u8>| u8::from(roundtrip(&mut server(10), &req).header.code);
    let mut s = ();
    let path = "fw/app/board/img.bin";
    assert_eq!(
        code(&mut s, get_with(path, CoapOption::IfMatch, b"other!!!".to_vec())),
        0x8c
    );
    assert_eq!(
        code(&mut s, get_with(path, CoapOption::IfMatch, b"12345678".to_vec())),
        0x45
    );
    assert_eq!(code(&mut s, get_with(path, CoapOption::IfMatch, vec![])), 0x45);
    assert_eq!(code(&mut s, get_with(path, CoapOption::IfNoneMatch, vec![])), 0x8c);
    assert_eq!(code(&mut s, get_with("fw/none", CoapOption::IfMatch, vec![])), 0x8c);
    assert_eq!(code(&mut s, get_with("fw/none", CoapOption::IfNoneMatch, vec![])), 0x84);
}

#[test]
fn a_repeated_block2_uses_the_first_occurrence() {
    let mut s = server(3000);
    // Zephyr's coap_client (3.4–3.6) sends Block2=1/0/1024 Block2=0/0/1024.
    let mut p = Packet::from_bytes(&get(MessageType::Confirmable, 9, b"", "fw/app/board/img.bin", None)).unwrap();
    p.add_option(CoapOption::Block2, vec![0x16]);
    let mut raw = p.to_bytes().unwrap();
    // coap-lite merges repeated options into one list; append the second by hand: delta 0,
    // length 1, value 0x06 (block 0, size 1024).
    raw.extend_from_slice(&[0x01, 0x06]);
    let r = roundtrip(&mut s, &raw);
    assert_eq!(r.header.code, MessageClass::Response(ResponseType::Content));
    assert_eq!(block2_of(&r).unwrap().num, 1);
    assert_eq!(
        r.payload,
        s.resources().body("fw/app/board/img.bin").unwrap()[1024..2048]
    );
}

#[test]
fn unverified_addresses_get_echo_instead_of_amplified_replies() {
    let cfg = Config {
        amplification_limit: 3,
        echo_secret: [3; 32],
        ..Config::default()
    };
    let mut s = server_with(cfg, 3000);
    let path = "fw/app/board/img.bin";
    let req = get(MessageType::Confirmable, 1, b"", path, Some(vec![0x06]));
    let r = roundtrip(&mut s, &req);
    assert_eq!(u8::from(r.header.code), 0x81, "4.01");
    assert!(r.payload.is_empty());
    let echo = r.get_first_option(CoapOption::Unknown(252)).unwrap().clone();
    assert_eq!(s.stats().echo_challenges, 1);
    // A small reply is within the limit: no challenge.
    let small = roundtrip(&mut s, &get(MessageType::Confirmable, 2, b"", "fw/none", None));
    assert_eq!(u8::from(small.header.code), 0x84);
    // A forged Echo does not verify.
    let mut forged = Packet::from_bytes(&get(MessageType::Confirmable, 3, b"", path, Some(vec![0x06]))).unwrap();
    forged.add_option(CoapOption::Unknown(252), vec![0; 12]);
    assert_eq!(
        u8::from(roundtrip(&mut s, &forged.to_bytes().unwrap()).header.code),
        0x81
    );
    // Echoing the value verifies the address, for later requests too.
    let mut again = Packet::from_bytes(&get(MessageType::Confirmable, 4, b"", path, Some(vec![0x06]))).unwrap();
    again.add_option(CoapOption::Unknown(252), echo);
    let ok = roundtrip(&mut s, &again.to_bytes().unwrap());
    assert_eq!(ok.header.code, MessageClass::Response(ResponseType::Content));
    assert_eq!(ok.payload.len(), 1024);
    let next = roundtrip(&mut s, &get(MessageType::Confirmable, 5, b"", path, Some(vec![0x16])));
    assert_eq!(next.header.code, MessageClass::Response(ResponseType::Content));
    // Another address is not verified by it.
    let other: SocketAddr = "[::1]:6002".parse().unwrap();
    let out = s.handle_datagram(Instant::now(), other, &req).unwrap().to_vec();
    assert_eq!(
        Packet::from_bytes(&out).unwrap().header.code,
        MessageClass::Response(ResponseType::Unauthorized)
    );
    // Errors are held to the limit too: a tiny request drawing a diagnostic gets it without.
    let tiny = [0x40, 0x02, 0x77, 0x01]; // CON POST, no options: 4.05 with a diagnostic
    let out = s.handle_datagram(Instant::now(), other, &tiny).unwrap().to_vec();
    assert!(out.len() <= 3 * tiny.len(), "{} bytes", out.len());
    assert_eq!(out[1], 0x85, "4.05");
    // An observation needs a verified address: even a small reply to a registration is
    // challenged, and nothing is registered.
    let obs = s
        .handle_datagram(
            Instant::now(),
            other,
            &observe_get(9, b"o", "fw/app/board/manifest", 0, Some(vec![0x00])),
        )
        .unwrap()
        .to_vec();
    assert_eq!(
        Packet::from_bytes(&obs).unwrap().header.code,
        MessageClass::Response(ResponseType::Unauthorized)
    );
    assert_eq!(s.observer_count(), 0);
}

#[test]
fn replies_can_be_appended_to_a_buffer_of_the_callers() {
    let mut s = server(3000);
    let mut buf = b"earlier".to_vec();
    let a = get(
        MessageType::Confirmable,
        1,
        b"a",
        "fw/app/board/img.bin",
        Some(vec![0x06]),
    );
    assert!(s.handle_datagram_into(Instant::now(), peer(), &a, &mut buf));
    let first = buf.len();
    let b = get(
        MessageType::Confirmable,
        2,
        b"b",
        "fw/app/board/img.bin",
        Some(vec![0x16]),
    );
    assert!(s.handle_datagram_into(Instant::now(), peer(), &b, &mut buf));
    // A datagram without a reply appends nothing.
    assert!(!s.handle_datagram_into(Instant::now(), peer(), &[0x60, 0, 0, 9], &mut buf));
    assert_eq!(&buf[..7], b"earlier");
    let r1 = Packet::from_bytes(&buf[7..first]).unwrap();
    let r2 = Packet::from_bytes(&buf[first..]).unwrap();
    assert_eq!((r1.get_token(), block2_of(&r1).unwrap().num), (&b"a"[..], 0));
    assert_eq!((r2.get_token(), block2_of(&r2).unwrap().num), (&b"b"[..], 1));
    // The same bytes as the server-owned path gives.
    let mut t = server(3000);
    assert_eq!(t.handle_datagram(Instant::now(), peer(), &a).unwrap(), &buf[7..first]);
    // The amplification path rewrites its reply in place without touching what came before.
    let cfg = Config {
        amplification_limit: 3,
        ..Config::default()
    };
    let mut u = server_with(cfg, 3000);
    let mut buf = b"x".to_vec();
    assert!(u.handle_datagram_into(Instant::now(), peer(), &a, &mut buf));
    assert_eq!(buf[0], b'x');
    assert_eq!(
        Packet::from_bytes(&buf[1..]).unwrap().header.code,
        MessageClass::Response(ResponseType::Unauthorized)
    );
}

fn post(mid: u16, token: &[u8], path: &str, payload: &[u8]) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_type(MessageType::Confirmable);
    p.header.code = MessageClass::Request(RequestType::Post);
    p.header.message_id = mid;
    p.set_token(token.to_vec());
    for s in path.split('/') {
        p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
    }
    p.add_option(CoapOption::ContentFormat, vec![50]);
    p.payload = payload.to_vec();
    p.to_bytes().unwrap()
}

#[test]
fn accepted_posts_are_answered_by_the_application_and_duplicates_get_the_same_answer() {
    let mut s = server(10);
    s.resources().accept_posts("fw/report");
    // Not accepted: 4.05 at once.
    let r = roundtrip(&mut s, &post(1, b"t", "fw/app/board/img.bin", b"{}"));
    assert_eq!(r.header.code, MessageClass::Response(ResponseType::MethodNotAllowed));
    // Accepted: no reply yet, one request for the application.
    assert!(h(&mut s, &post(2, b"tk", "fw/report", b"{\"seq\":1}")).is_none());
    let req = s.poll_request().unwrap();
    assert_eq!(
        (req.path.as_str(), req.content_format, &req.payload[..]),
        ("fw/report", Some(50), &b"{\"seq\":1}"[..])
    );
    assert!(s.poll_request().is_none());
    // A retransmission while it is pending: silence, and no second request.
    assert!(h(&mut s, &post(2, b"tk", "fw/report", b"{\"seq\":1}")).is_none());
    assert!(s.poll_request().is_none());
    assert!(s.answer(req.id, Code::CHANGED, Bytes::new()));
    assert!(!s.answer(req.id, Code::CHANGED, Bytes::new()), "answered once");
    let t = s.poll_transmit().unwrap();
    let p = Packet::from_bytes(&t.data).unwrap();
    assert_eq!(p.header.get_type(), MessageType::Acknowledgement);
    assert_eq!((p.header.message_id, p.get_token()), (2, &b"tk"[..]));
    assert_eq!(p.header.code, MessageClass::Response(ResponseType::Changed));
    // A later duplicate gets the same answer, without a new request.
    let again = h(&mut s, &post(2, b"tk", "fw/report", b"{\"seq\":1}")).unwrap();
    assert_eq!(again, t.data);
    assert!(s.poll_request().is_none());
}

#[test]
fn unanswered_posts_expire_with_5_03_and_the_pending_table_is_bounded() {
    let config = Config {
        max_pending_requests: 2,
        app_timeout: Duration::from_secs(5),
        ..Config::default()
    };
    let mut s = server_with(config, 10);
    s.resources().accept_posts("fw/report");
    let t0 = Instant::now();
    for mid in 1..=2 {
        assert!(s
            .handle_datagram(t0, peer(), &post(mid, b"", "fw/report", b"x"))
            .is_none());
    }
    let full = s
        .handle_datagram(t0, peer(), &post(3, b"", "fw/report", b"x"))
        .map(|b| b.to_vec())
        .unwrap();
    let p = Packet::from_bytes(&full).unwrap();
    assert_eq!(p.header.code, MessageClass::Response(ResponseType::ServiceUnavailable));
    assert_eq!(s.stats().requests_refused, 1);
    // Nobody collects or answers: both expire with 5.03, and are withdrawn from the queue.
    assert!(s.poll_timeout().unwrap() <= t0 + Duration::from_secs(5));
    s.handle_timeout(t0 + Duration::from_secs(6));
    let mut codes = Vec::new();
    while let Some(t) = s.poll_transmit() {
        codes.push(Packet::from_bytes(&t.data).unwrap().header.code);
    }
    assert_eq!(codes, vec![MessageClass::Response(ResponseType::ServiceUnavailable); 2]);
    assert!(s.poll_request().is_none());
    assert_eq!(s.stats().requests_expired, 2);
}

#[test]
fn served_blocks_are_recorded_only_when_tracking_is_on_and_bounded() {
    let mut off = server(1000);
    roundtrip(
        &mut off,
        &get(
            MessageType::Confirmable,
            1,
            b"",
            "fw/app/board/img.bin",
            Some(vec![0x02]),
        ),
    );
    assert!(off.take_blocks().is_empty());
    let config = Config {
        max_block_events: 3,
        ..Config::default()
    };
    let mut s = server_with(config, 1000);
    for num in 0..5u8 {
        let block = vec![(num << 4) | 0x0a]; // 64-byte blocks (SZX 2), More set by the client is ignored
        roundtrip(
            &mut s,
            &get(
                MessageType::Confirmable,
                u16::from(num) + 1,
                b"",
                "fw/app/board/img.bin",
                Some(block),
            ),
        );
    }
    let blocks = s.take_blocks();
    assert_eq!(blocks.len(), 3);
    assert_eq!(
        blocks[1],
        BlockServed {
            peer: peer(),
            etag: *b"12345678",
            end: 128,
            size: 1000
        }
    );
    assert_eq!(s.stats().block_events_dropped, 2);
    // The whole manifest in one reply counts as one block ending at its size.
    roundtrip(
        &mut s,
        &get(MessageType::Confirmable, 9, b"", "fw/app/board/manifest", None),
    );
    assert_eq!(
        s.take_blocks(),
        vec![BlockServed {
            peer: peer(),
            etag: *b"manifst1",
            end: 100,
            size: 100
        }]
    );
}

#[test]
fn under_the_amplification_limit_a_report_needs_a_verified_address() {
    let config = Config {
        amplification_limit: 3,
        echo_secret: [9; 32],
        ..Config::default()
    };
    let mut s = server_with(config, 10);
    s.resources().accept_posts("fw/report");
    let r = roundtrip(&mut s, &post(1, b"t", "fw/report", b"{\"result\":\"ok\"}"));
    assert_eq!(r.header.code, MessageClass::Response(ResponseType::Unauthorized));
    assert!(s.poll_request().is_none(), "nothing handed to the application");
    let echo = r.get_first_option(CoapOption::Unknown(252)).unwrap().clone();
    let mut p = Packet::from_bytes(&post(2, b"t", "fw/report", b"{\"result\":\"ok\"}")).unwrap();
    p.add_option(CoapOption::Unknown(252), echo);
    assert!(h(&mut s, &p.to_bytes().unwrap()).is_none());
    assert!(s.poll_request().is_some(), "with the Echo value it is");
}

#[test]
fn a_resource_that_cannot_be_read_now_is_a_5_03_with_max_age_not_a_4_04() {
    let mut s = server(100);
    s.resources().set_unavailable("fw/app/board/old.bin", true);
    let p = roundtrip(
        &mut s,
        &get(MessageType::Confirmable, 7, b"t", "fw/app/board/old.bin", None),
    );
    assert_eq!(p.header.code, MessageClass::Response(ResponseType::ServiceUnavailable));
    let max_age = p.get_option(CoapOption::MaxAge).and_then(|v| v.front().cloned());
    assert_eq!(max_age, Some(uint_option(UNAVAILABLE_RETRY_SECS)));
    // Readable again: a path nobody has is still 4.04.
    s.resources().set_unavailable("fw/app/board/old.bin", false);
    let p = roundtrip(
        &mut s,
        &get(MessageType::Confirmable, 8, b"u", "fw/app/board/old.bin", None),
    );
    assert_eq!(p.header.code, MessageClass::Response(ResponseType::NotFound));
    assert_eq!(p.get_option(CoapOption::MaxAge), None);
}
