//! Request/response tables for the sans-IO server.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use std::collections::HashMap;

struct Fixed(HashMap<String, Resource>);

impl Resources for Fixed {
    fn resolve(&self, segments: &[&str]) -> Option<Resource> {
        self.0.get(&segments.join("/")).cloned()
    }
}

fn server(body_len: usize) -> Server<Fixed> {
    let body: Vec<u8> = (0..body_len).map(|i| (i * 7 % 251) as u8).collect();
    let mut m = HashMap::new();
    m.insert(
        "fw/app/board/img.bin".to_string(),
        Resource { body: Bytes::from(body), etag: *b"12345678", content_format: 42 },
    );
    Server::new(Config::default(), Fixed(m), 1000)
}

fn peer() -> SocketAddr {
    "[::1]:5000".parse().unwrap()
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
    let out = s.handle_datagram(Instant::now(), peer(), req).expect("a reply");
    Packet::from_bytes(&out).unwrap()
}

fn block2_of(p: &Packet) -> Option<BlockValue> {
    p.get_first_option(CoapOption::Block2).and_then(|v| BlockValue::decode(v))
}

#[test]
fn con_get_is_piggybacked_with_block2_etag_size2() {
    let mut s = server(3000);
    let r = roundtrip(&mut s, &get(MessageType::Confirmable, 77, b"", "fw/app/board/img.bin", Some(vec![0x02])));
    assert_eq!(r.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(r.header.message_id, 77);
    assert_eq!(r.get_token(), b"");
    assert_eq!(r.header.code, MessageClass::Response(ResponseType::Content));
    assert_eq!(block2_of(&r), Some(BlockValue { num: 0, more: true, szx: 2 }));
    assert_eq!(r.payload.len(), 64);
    assert_eq!(r.get_first_option(CoapOption::ETag).unwrap(), b"12345678");
    assert_eq!(r.get_first_option(CoapOption::Size2).unwrap(), &uint_option(3000));
}

#[test]
fn every_block_reassembles_the_body_at_every_size() {
    for len in [0usize, 1, 63, 64, 65, 1024, 3000, 70_000] {
        for szx in 0..=6u8 {
            let mut s = server(len);
            let want = s.resources().0["fw/app/board/img.bin"].body.clone();
            let mut got = Vec::new();
            let mut num = 0u32;
            loop {
                let b = BlockValue { num, more: false, szx }.encode();
                let r = roundtrip(&mut s, &get(MessageType::Confirmable, num as u16, b"tk", "fw/app/board/img.bin", Some(b)));
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
    let r = roundtrip(&mut s, &get(MessageType::Confirmable, 1, b"a", "fw/app/board/img.bin", None));
    assert_eq!(block2_of(&r), None);
    assert_eq!(r.payload.len(), 200);
    let mut s = server(1000);
    let r = roundtrip(&mut s, &get(MessageType::Confirmable, 1, b"a", "fw/app/board/img.bin", None));
    assert_eq!(block2_of(&r), Some(BlockValue { num: 0, more: true, szx: 4 }));
    assert_eq!(r.payload.len(), 256);
}

#[test]
fn block_numbers_use_twenty_bits() {
    // 5 MiB at 1024-byte blocks: block 5000 needs a 3-byte option.
    let mut s = server(5 * 1024 * 1024);
    let b = BlockValue { num: 5000, more: false, szx: 6 };
    let r = roundtrip(&mut s, &get(MessageType::Confirmable, 1, b"", "fw/app/board/img.bin", Some(b.encode())));
    assert_eq!(block2_of(&r).unwrap().num, 5000);
    let body = &s.resources().0["fw/app/board/img.bin"].body;
    assert_eq!(r.payload, body[5000 * 1024..5001 * 1024]);
}

#[test]
fn larger_than_served_sizes_are_scaled_down() {
    let cfg = Config { default_szx: 4, max_szx: 4 };
    let mut s = Server::new(cfg, server(5000).resources, 1);
    let b = BlockValue { num: 1, more: false, szx: 6 }.encode();
    let r = roundtrip(&mut s, &get(MessageType::Confirmable, 1, b"", "fw/app/board/img.bin", Some(b)));
    assert_eq!(block2_of(&r), Some(BlockValue { num: 4, more: true, szx: 4 }));
}

#[test]
fn error_table() {
    let mut s = server(100);
    let cases: Vec<(Vec<u8>, ResponseType)> = vec![
        (get(MessageType::Confirmable, 1, b"", "nope", None), ResponseType::NotFound),
        (get(MessageType::Confirmable, 1, b"", "fw/app/board/img.bin", Some(vec![0x17])), ResponseType::BadOption),
        (get(MessageType::Confirmable, 1, b"", "fw/app/board/img.bin", Some(vec![1, 2, 3, 4])), ResponseType::BadOption),
        (get(MessageType::Confirmable, 1, b"", "fw/app/board/img.bin", Some(vec![0x70])), ResponseType::BadOption),
        ({
            let mut p = Packet::from_bytes(&get(MessageType::Confirmable, 1, b"", "fw/app/board/img.bin", None)).unwrap();
            p.header.code = MessageClass::Request(RequestType::Put);
            p.to_bytes().unwrap()
        }, ResponseType::MethodNotAllowed),
        ({
            let mut p = Packet::from_bytes(&get(MessageType::Confirmable, 1, b"", "fw/app/board/img.bin", None)).unwrap();
            p.add_option(CoapOption::Unknown(2049), vec![1]);
            p.to_bytes().unwrap()
        }, ResponseType::BadOption),
        ({
            let mut p = Packet::from_bytes(&get(MessageType::Confirmable, 1, b"", "fw/app/board/img.bin", None)).unwrap();
            p.add_option(CoapOption::Block1, vec![0x06]);
            p.to_bytes().unwrap()
        }, ResponseType::BadOption),
    ];
    for (req, code) in cases {
        let r = roundtrip(&mut s, &req);
        assert_eq!(r.header.code, MessageClass::Response(code), "{req:02x?}");
        assert_eq!(r.header.get_type(), MessageType::Acknowledgement);
    }
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
    let r = roundtrip(&mut s, &get(MessageType::NonConfirmable, 5, b"t", "fw/app/board/img.bin", None));
    assert_eq!(r.header.get_type(), MessageType::NonConfirmable);
    assert_eq!(r.get_token(), b"t");
    assert_ne!(r.header.message_id, 5);
    // CoAP ping.
    assert_eq!(s.handle_datagram(Instant::now(), peer(), &[0x40, 0, 0x12, 0x34]), Some(vec![0x70, 0, 0x12, 0x34]));
    // ACK and RST are not answered.
    assert_eq!(s.handle_datagram(Instant::now(), peer(), &[0x60, 0, 0, 1]), None);
    assert_eq!(s.handle_datagram(Instant::now(), peer(), &[0x70, 0, 0, 1]), None);
}

#[test]
fn malformed_messages_never_panic() {
    let mut s = server(10);
    // Truncated header, bad version, TKL 9, marker without payload, bad option delta 15.
    assert_eq!(s.handle_datagram(Instant::now(), peer(), &[0x40, 1]), None);
    assert_eq!(s.handle_datagram(Instant::now(), peer(), &[0x80, 1, 0, 1]), None);
    assert_eq!(s.handle_datagram(Instant::now(), peer(), &[0x49, 1, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9]), Some(vec![0x70, 0, 0, 1]));
    assert_eq!(s.handle_datagram(Instant::now(), peer(), &[0x40, 1, 0, 2, 0xff]), Some(vec![0x70, 0, 0, 2]));
    assert_eq!(s.handle_datagram(Instant::now(), peer(), &[0x40, 1, 0, 3, 0xf1, 0]), Some(vec![0x70, 0, 0, 3]));
    // Empty message with a token.
    assert_eq!(s.handle_datagram(Instant::now(), peer(), &[0x41, 0, 0, 4, 9]), Some(vec![0x70, 0, 0, 4]));
    // Every prefix and every single-byte corruption of a valid request: no panic.
    let req = get(MessageType::Confirmable, 1, b"abcd", "fw/app/board/img.bin", Some(vec![0x12]));
    for n in 0..req.len() {
        let _ = s.handle_datagram(Instant::now(), peer(), &req[..n]);
        for bit in 0..8 {
            let mut m = req.clone();
            m[n] ^= 1 << bit;
            let _ = s.handle_datagram(Instant::now(), peer(), &m);
        }
    }
}
