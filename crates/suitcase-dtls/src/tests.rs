use super::*;

struct Creds {
    psk: Vec<(Vec<u8>, Vec<u8>, &'static str)>,
    keys: Vec<([u8; 32], &'static str)>,
}

impl Credentials for Creds {
    fn psk(&self, identity: &[u8]) -> Option<(Arc<str>, Zeroizing<Vec<u8>>)> {
        self.psk
            .iter()
            .find(|(i, _, _)| i == identity)
            .map(|(_, k, d)| (Arc::from(*d), Zeroizing::new(k.clone())))
    }
    fn public_key(&self, d: &[u8; 32]) -> Option<Arc<str>> {
        self.keys.iter().find(|(k, _)| k == d).map(|(_, n)| Arc::from(*n))
    }
}

fn server(keys: Vec<([u8; 32], &'static str)>) -> Endpoint {
    let creds = Arc::new(Creds {
        psk: vec![(b"dev-1".to_vec(), b"0123456789abcdef".to_vec(), "device-one")],
        keys,
    });
    let mut c = ServerConfig::new(creds);
    c.certificate = Some(Identity::self_signed("suitcase").unwrap().identity);
    c.max_handshakes = 4;
    c.max_sessions = 8;
    Endpoint::new(c, [9; 32], Instant::now()).unwrap()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Run datagrams both ways until neither side has anything to send; what the server said.
fn pump(s: &mut Endpoint, c: &mut Client, peer: SocketAddr) -> (Vec<Received>, Result<(), DtlsError>) {
    let mut said = Vec::new();
    for _ in 0..20 {
        let mut to_server = Vec::new();
        c.drain(|d| to_server.push(d.to_vec()));
        if to_server.is_empty() {
            break;
        }
        for d in to_server {
            said.push(s.handle_datagram(Instant::now(), peer, &d));
        }
        let mut to_client = Vec::new();
        s.drain(|p, d| {
            assert_eq!(p, peer);
            to_client.push(d.to_vec());
        });
        for d in to_client {
            if let Err(e) = c.handle_datagram(&d) {
                return (said, Err(e));
            }
        }
    }
    (said, Ok(()))
}

#[test]
fn a_psk_client_handshakes_through_the_cookie_and_exchanges_data() {
    let mut s = server(vec![]);
    let peer = addr(40000);
    let ctx = ClientConfig::psk(b"dev-1", b"0123456789abcdef").context().unwrap();
    let mut c = Client::connect(&ctx, peer).unwrap();
    let (said, r) = pump(&mut s, &mut c, peer);
    r.unwrap();
    assert!(c.is_established());
    assert!(said.contains(&Received::Connected(Arc::from("device-one"))), "{said:?}");
    assert_eq!(s.stats().hello_verify, 1);
    assert_eq!(s.device(peer).map(|d| &**d), Some("device-one"));
    assert_eq!(s.cipher(peer), Some("TLS_PSK_WITH_AES_128_CCM_8"));
    // Data both ways.
    c.send(b"hello").unwrap();
    let mut d = Vec::new();
    c.drain(|x| d.push(x.to_vec()));
    assert_eq!(s.handle_datagram(Instant::now(), peer, &d[0]), Received::Data);
    let mut buf = [0u8; 64];
    assert_eq!(s.recv(peer, &mut buf), Some(5));
    assert_eq!(&buf[..5], b"hello");
    assert_eq!(s.recv(peer, &mut buf), None);
    assert!(s.send(Instant::now(), peer, b"world"));
    let mut back = Vec::new();
    s.drain(|_, x| back.push(x.to_vec()));
    c.handle_datagram(&back[0]).unwrap();
    assert_eq!(c.recv(&mut buf).unwrap(), Some(5));
    assert_eq!(&buf[..5], b"world");
}

#[test]
fn a_wrong_key_or_an_unknown_identity_is_refused() {
    for (identity, key) in [
        (&b"dev-1"[..], &b"0123456789abcdeX"[..]),
        (b"nobody", b"0123456789abcdef"),
    ] {
        let mut s = server(vec![]);
        let peer = addr(40001);
        let ctx = ClientConfig::psk(identity, key).context().unwrap();
        let mut c = Client::connect(&ctx, peer).unwrap();
        let (said, r) = pump(&mut s, &mut c, peer);
        assert!(r.is_err() || !c.is_established(), "{said:?}");
        assert!(!said.iter().any(|r| matches!(r, Received::Connected(_))));
        // An unknown identity fails at once; a wrong key makes the client's Finished
        // undecryptable, which DTLS drops silently (RFC 6347 §4.1.2.7): that handshake
        // never completes and goes at the handshake timeout.
        s.handle_timeout(Instant::now() + Duration::from_secs(31));
        assert_eq!(s.sessions(), 0, "{identity:?} {said:?} {r:?}");
        let st = s.stats();
        assert_eq!(st.handshake_failures + st.handshake_timeouts, 1);
        assert_eq!(st.handshakes, 0);
    }
}

#[test]
fn a_certificate_client_is_admitted_only_with_a_pinned_key() {
    let device = Identity::self_signed("device-two").unwrap().identity;
    let pin = device.spki_sha256().unwrap();
    for (pinned, ok) in [(vec![(pin, "device-two")], true), (vec![([1; 32], "other")], false)] {
        let mut s = server(pinned);
        let peer = addr(40002);
        let cfg = ClientConfig {
            psk: None,
            certificate: Some(device.clone()),
            server_key: None,
            mtu: DEFAULT_MTU,
        };
        let mut c = Client::connect(&cfg.context().unwrap(), peer).unwrap();
        let (said, _) = pump(&mut s, &mut c, peer);
        assert_eq!(
            said.contains(&Received::Connected(Arc::from("device-two"))),
            ok,
            "{said:?}"
        );
        assert_eq!(c.is_established(), ok);
        if ok {
            assert_eq!(s.cipher(peer), Some("TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8"));
        }
    }
}

#[test]
fn a_client_pinning_another_server_key_refuses_the_server() {
    let device = Identity::self_signed("device-two").unwrap().identity;
    let mut s = server(vec![(device.spki_sha256().unwrap(), "device-two")]);
    let peer = addr(40003);
    let cfg = ClientConfig {
        psk: None,
        certificate: Some(device),
        server_key: Some([3; 32]),
        mtu: DEFAULT_MTU,
    };
    let mut c = Client::connect(&cfg.context().unwrap(), peer).unwrap();
    let (_, r) = pump(&mut s, &mut c, peer);
    assert!(r.is_err());
}

#[test]
fn client_hellos_without_a_cookie_leave_no_state_and_are_answered_small() {
    let mut s = server(vec![]);
    let ctx = ClientConfig::psk(b"dev-1", b"0123456789abcdef").context().unwrap();
    let mut hello = Vec::new();
    Client::connect(&ctx, addr(1)).unwrap().drain(|d| hello = d.to_vec());
    assert!(is_client_hello(&hello));
    for port in 1..=2000 {
        let _ = s.handle_datagram(Instant::now(), addr(port), &hello);
        let mut out = 0;
        s.drain(|_, d| {
            // A HelloVerifyRequest is smaller than the ClientHello: no amplification.
            assert!(d.len() <= hello.len(), "{} > {}", d.len(), hello.len());
            out += 1;
        });
        assert_eq!(out, 1);
    }
    assert_eq!(s.sessions(), 0);
    assert_eq!(s.stats().hello_verify, 2000);
    // Garbage and other record types are dropped without an answer.
    for d in [&b""[..], &[22, 0xfe, 0xfd][..], &[23; 60][..]] {
        assert_eq!(s.handle_datagram(Instant::now(), addr(9), d), Received::Nothing);
    }
    s.drain(|_, _| panic!("answered garbage"));
}

#[test]
fn handshakes_and_sessions_are_bounded_and_expire() {
    let mut s = server(vec![]);
    let ctx = ClientConfig::psk(b"dev-1", b"0123456789abcdef").context().unwrap();
    // Clients that return their cookie but never finish: at most max_handshakes (4).
    let mut clients = Vec::new();
    for port in 0..10u16 {
        let peer = addr(41000 + port);
        let mut c = Client::connect(&ctx, peer).unwrap();
        let mut hello = Vec::new();
        c.drain(|d| hello.push(d.to_vec()));
        s.handle_datagram(Instant::now(), peer, &hello[0]);
        let mut hvr = Vec::new();
        s.drain(|_, d| hvr.push(d.to_vec()));
        c.handle_datagram(&hvr[0]).unwrap();
        let mut hello2 = Vec::new();
        c.drain(|d| hello2.push(d.to_vec()));
        s.handle_datagram(Instant::now(), peer, &hello2[0]);
        s.drain(|_, _| {});
        clients.push(c);
    }
    // The oldest go to make room for the newest.
    assert_eq!(s.handshaking(), 4);
    assert_eq!(s.stats().handshakes_evicted, 6);
    // A client that completes its handshake gets in while they stall.
    let peer = addr(42001);
    let mut c = Client::connect(&ctx, peer).unwrap();
    pump(&mut s, &mut c, peer).1.unwrap();
    assert!(c.is_established());
    assert_eq!(s.handshaking(), 3);
    // The stalled ones time out.
    let later = Instant::now() + Duration::from_secs(31);
    s.handle_timeout(later);
    assert_eq!(s.handshaking(), 0);
    assert_eq!(s.sessions(), 1);
    assert_eq!(s.stats().handshake_timeouts, 3);
    // The table's bound (8): established sessions beyond it are refused.
    for port in 0..10u16 {
        let peer = addr(44000 + port);
        let mut c = Client::connect(&ctx, peer).unwrap();
        let _ = pump(&mut s, &mut c, peer);
    }
    assert_eq!(s.sessions(), 8);
    assert_eq!(s.stats().refused_full, 3);
    s.handle_timeout(Instant::now() + Duration::from_secs(601));
    assert_eq!(s.sessions(), 0);
    assert_eq!(s.stats().idle_closed, 8);
}

#[test]
fn a_restarted_client_replaces_its_old_session_after_the_cookie() {
    let mut s = server(vec![]);
    let peer = addr(43000);
    let ctx = ClientConfig::psk(b"dev-1", b"0123456789abcdef").context().unwrap();
    let mut c = Client::connect(&ctx, peer).unwrap();
    pump(&mut s, &mut c, peer).1.unwrap();
    let mut c2 = Client::connect(&ctx, peer).unwrap();
    let (said, r) = pump(&mut s, &mut c2, peer);
    r.unwrap();
    assert!(c2.is_established(), "{said:?}");
    assert_eq!(s.sessions(), 1);
    assert_eq!(s.stats().handshakes, 2);
}
