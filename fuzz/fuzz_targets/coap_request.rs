//! The whole CoAP request path (parse, options, resolve, Block2 slicing, encode) on arbitrary
//! datagrams; every reply must itself be a well-formed CoAP message.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use suitcase_coap::{Config, MapResources, Server};

fuzz_target!(|data: &[u8]| {
    let m = MapResources::new();
    for (path, len) in [("a", 0usize), ("fw/b/img.bin", 5000), ("fw/b/manifest", 300)] {
        m.set(path, vec![7u8; len], [1; 8]);
    }
    let mut s = Server::new(Config::default(), m, Instant::now(), 1);
    let peer = "[::1]:5683".parse().expect("addr");
    // Twice: the second time exercises the duplicate path.
    for _ in 0..2 {
        let Some(reply) = s.handle_datagram(Instant::now(), peer, data) else {
            continue;
        };
        assert!(
            reply.len() >= 4 && reply[0] >> 6 == 1,
            "reply is not CoAP: {reply:02x?}"
        );
        assert!(reply.len() <= 1152 + 64, "reply too large: {}", reply.len());
        if reply[1] != 0 {
            assert!(
                coap_lite::Packet::from_bytes(reply).is_ok(),
                "reply does not parse: {reply:02x?}"
            );
        }
    }
});
