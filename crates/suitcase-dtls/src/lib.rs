//! DTLS 1.2 for suitcase's `coaps://`, sans-IO: datagrams and time in, datagrams and
//! plaintext out; no sockets, no runtime. OpenSSL (the system's, through rust-openssl) does
//! the record layer and the handshakes; this crate is the table of sessions around it and the
//! protection of the server:
//!
//! - **Stateless cookies.** A datagram from an address without a session is only looked at
//!   if it is a ClientHello; one listening `SSL` answers it with a HelloVerifyRequest through
//!   `DTLSv1_listen`, keeping nothing. Only a ClientHello that returns a valid cookie
//!   (`cookie.rs`: an HMAC of the source address and a 30 s window) becomes a session, so a
//!   spoofed source can neither make the server keep state nor use it to amplify.
//! - **Bounds.** At most `max_sessions` sessions, of which at most `max_handshakes` still
//!   handshaking; a handshake not finished within `handshake_timeout` and a session idle for
//!   `idle_timeout` are dropped. Buffers are released between records (`SSL_MODE_RELEASE_BUFFERS`).
//! - **Who a peer is.** Pre-shared keys by identity, or a device key pinned by the SHA-256 of
//!   its SubjectPublicKeyInfo (the certificate a device presents with
//!   TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 need not be signed by anyone: its key is what is
//!   checked). Both through [`Credentials`]; a session knows its device ([`Endpoint::device`]).
//!
//! Time: the session table's timeouts use the `now` passed in; OpenSSL's own retransmission
//! timers read the system clock (it offers no way to pass time in), [`Endpoint::poll_timeout`]
//! asks them.

mod cookie;
mod ffi;
mod io;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::ex_data::Index;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslMethod, SslMode, SslOptions, SslSessionCacheMode, SslStream,
    SslVerifyMode, SslVersion,
};
use openssl::x509::{X509Ref, X509};
use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::io::{Dgram, Outbox};

/// The cipher suites, in the server's order of preference: the two RFC 7252 §9 mandates
/// (TLS_PSK_WITH_AES_128_CCM_8, TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8), then their GCM
/// variants for clients that offer no CCM_8.
pub const CIPHERS: &str = "PSK-AES128-CCM8:ECDHE-ECDSA-AES128-CCM8:PSK-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256";

/// Largest DTLS datagram sent (records and handshake fragments): the IPv6 minimum MTU less
/// the IPv6 and UDP headers. A 1024-byte CoAP block takes about 1,070.
pub const DEFAULT_MTU: u32 = 1232;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum DtlsError {
    /// OpenSSL refused a setting or a key.
    #[error("OpenSSL: {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
    /// A certificate or key file that is not what it should be.
    #[error("{0}")]
    Invalid(String),
    /// The handshake or the session failed.
    #[error("DTLS: {0}")]
    Session(String),
}

/// What the server knows of devices: pre-shared keys by identity, public keys by digest.
pub trait Credentials: Send + Sync {
    /// The device and key of a PSK identity.
    fn psk(&self, identity: &[u8]) -> Option<(Arc<str>, Zeroizing<Vec<u8>>)>;
    /// The device whose public key has this SubjectPublicKeyInfo SHA-256.
    fn public_key(&self, spki_sha256: &[u8; 32]) -> Option<Arc<str>>;
}

/// A certificate chain and its private key (the server's, or a client's).
#[derive(Clone)]
pub struct Identity {
    chain: Vec<X509>,
    key: PKey<Private>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A chain (PEM, leaf first) and its key (PEM).
    pub fn from_pem(chain: &[u8], key: &[u8]) -> Result<Identity, DtlsError> {
        let chain = X509::stack_from_pem(chain).map_err(|e| DtlsError::Invalid(format!("certificate: {e}")))?;
        if chain.is_empty() {
            return Err(DtlsError::Invalid("no certificate in the PEM file".into()));
        }
        let key = PKey::private_key_from_pem(key).map_err(|e| DtlsError::Invalid(format!("private key: {e}")))?;
        Ok(Identity { chain, key })
    }

    /// A new P-256 key and a self-signed certificate for it (CN `name`, 10 years), also as
    /// PEM to keep.
    pub fn self_signed(name: &str) -> Result<SelfSigned, DtlsError> {
        use openssl::asn1::Asn1Time;
        use openssl::bn::{BigNum, MsbOption};
        use openssl::ec::{EcGroup, EcKey};
        use openssl::nid::Nid;
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
        let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
        let mut subject = openssl::x509::X509NameBuilder::new()?;
        subject.append_entry_by_nid(Nid::COMMONNAME, name)?;
        let subject = subject.build();
        let mut b = X509::builder()?;
        b.set_version(2)?;
        let mut serial = BigNum::new()?;
        serial.rand(120, MsbOption::MAYBE_ZERO, false)?;
        let serial = serial.to_asn1_integer()?;
        b.set_serial_number(&serial)?;
        b.set_subject_name(&subject)?;
        b.set_issuer_name(&subject)?;
        b.set_pubkey(&key)?;
        b.set_not_before(&*Asn1Time::days_from_now(0)?)?;
        b.set_not_after(&*Asn1Time::days_from_now(3650)?)?;
        b.sign(&key, openssl::hash::MessageDigest::sha256())?;
        let cert = b.build();
        let cert_pem = cert.to_pem()?;
        let key_pem = Zeroizing::new(key.private_key_to_pem_pkcs8()?);
        Ok(SelfSigned {
            identity: Identity { chain: vec![cert], key },
            cert_pem,
            key_pem,
        })
    }

    /// SHA-256 of the leaf's SubjectPublicKeyInfo (what a peer pins).
    pub fn spki_sha256(&self) -> Result<[u8; 32], DtlsError> {
        match self.chain.first() {
            Some(c) => spki_sha256(c),
            None => Err(DtlsError::Invalid("no certificate".into())),
        }
    }

    fn install(&self, b: &mut SslContextBuilder) -> Result<(), DtlsError> {
        let mut chain = self.chain.iter();
        if let Some(leaf) = chain.next() {
            b.set_certificate(leaf)?;
        }
        for c in chain {
            b.add_extra_chain_cert(c.clone())?;
        }
        b.set_private_key(&self.key)?;
        b.check_private_key()
            .map_err(|e| DtlsError::Invalid(format!("the key does not belong to the certificate: {e}")))?;
        Ok(())
    }
}

/// A new identity and its PEM files.
#[derive(Debug)]
pub struct SelfSigned {
    /// The identity.
    pub identity: Identity,
    /// The certificate, PEM.
    pub cert_pem: Vec<u8>,
    /// The private key, PKCS#8 PEM.
    pub key_pem: Zeroizing<Vec<u8>>,
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo.
pub fn spki_sha256(cert: &X509Ref) -> Result<[u8; 32], DtlsError> {
    Ok(Sha256::digest(cert.public_key()?.public_key_to_der()?).into())
}

/// SHA-256 of the SubjectPublicKeyInfo of a PEM public key or certificate.
pub fn spki_sha256_of_pem(pem: &[u8]) -> Result<[u8; 32], DtlsError> {
    if let Ok(cert) = X509::from_pem(pem) {
        return spki_sha256(&cert);
    }
    let key = PKey::public_key_from_pem(pem)
        .map_err(|_| DtlsError::Invalid("neither a PEM certificate nor a PEM public key".into()))?;
    Ok(Sha256::digest(key.public_key_to_der()?).into())
}

/// Settings of an [`Endpoint`].
#[derive(Clone)]
pub struct ServerConfig {
    /// Who may connect.
    pub credentials: Arc<dyn Credentials>,
    /// The server's certificate for the ECDHE_ECDSA suites (PSK works without).
    pub certificate: Option<Identity>,
    /// Sessions at most, handshaking ones included.
    pub max_sessions: usize,
    /// Sessions still handshaking at most.
    pub max_handshakes: usize,
    /// A handshake not finished this long after its ClientHello is dropped.
    pub handshake_timeout: Duration,
    /// A session not heard from or sent to for this long is closed.
    pub idle_timeout: Duration,
    /// Largest datagram sent.
    pub mtu: u32,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("certificate", &self.certificate)
            .field("max_sessions", &self.max_sessions)
            .field("max_handshakes", &self.max_handshakes)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("mtu", &self.mtu)
            .finish_non_exhaustive()
    }
}

impl ServerConfig {
    /// Defaults: 4,096 sessions, 256 handshaking, 30 s to finish a handshake (a constrained
    /// device's ECDHE takes seconds), 10 minutes idle.
    pub fn new(credentials: Arc<dyn Credentials>) -> Self {
        ServerConfig {
            credentials,
            certificate: None,
            max_sessions: 4096,
            max_handshakes: 256,
            handshake_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            mtu: DEFAULT_MTU,
        }
    }
}

/// Counters of an [`Endpoint`].
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// HelloVerifyRequests sent (stateless).
    pub hello_verify: u64,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Handshakes that failed (wrong key, unknown identity, unpinned key, protocol error).
    pub handshake_failures: u64,
    /// Handshakes dropped for taking longer than the handshake timeout.
    pub handshake_timeouts: u64,
    /// Valid ClientHellos refused because the session table was full.
    pub refused_full: u64,
    /// Handshakes dropped to make room for a newer one (the handshake bound was reached).
    pub handshakes_evicted: u64,
    /// Sessions closed for being idle.
    pub idle_closed: u64,
    /// Datagrams from addresses without a session that were not ClientHellos.
    pub stray: u64,
    /// Datagrams not sent because the outbox was full.
    pub outbox_dropped: u64,
}

/// What a datagram did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// Nothing for the application (handshake progress, a cookie exchange, a dropped datagram).
    Nothing,
    /// A handshake completed: the session belongs to this device.
    Connected(Arc<str>),
    /// Application data arrived: take it with [`Endpoint::recv`].
    Data,
    /// The session ended (close_notify, a fatal alert or error).
    Closed,
}

struct Session {
    stream: SslStream<Dgram>,
    device: Option<Arc<str>>,
    established: bool,
    started: Instant,
    last: Instant,
}

/// The server side: every peer's session, in one table.
pub struct Endpoint {
    ctx: SslContext,
    /// The device a PSK callback found, on each server `SSL`.
    device_idx: Index<Ssl, Arc<str>>,
    /// The datagram being handled, for the cookie callbacks (one at a time: `&mut self`).
    cookie_cx: Arc<Mutex<cookie::Context>>,
    listener: Option<SslStream<Dgram>>,
    /// foldhash, randomly seeded per table (as the CoAP transfer table: SipHash cost per
    /// datagram, measured there).
    sessions: HashMap<SocketAddr, Session, foldhash::fast::RandomState>,
    handshaking: HashSet<SocketAddr, foldhash::fast::RandomState>,
    out: Arc<Mutex<Outbox>>,
    config: ServerConfig,
    credentials: Arc<dyn Credentials>,
    stats: Stats,
    next_sweep: Instant,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("sessions", &self.sessions.len())
            .field("handshaking", &self.handshaking.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Sweep interval while handshakes are under way (OpenSSL's first retransmission is at 1 s).
const HANDSHAKE_TICK: Duration = Duration::from_millis(100);
/// Sweep interval otherwise.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// Whether `d` is a DTLS record carrying a ClientHello in epoch 0 (what may start a session).
pub fn is_client_hello(d: &[u8]) -> bool {
    // Record: type 22 (handshake), version 0xfeXX, epoch 0, seq (6), length (2); then the
    // handshake header, type 1 (client_hello).
    d.len() >= 13 + 12 && d[0] == 22 && d[1] == 0xfe && d[3] == 0 && d[4] == 0 && d[13] == 1
}

impl Endpoint {
    /// An endpoint; `secret` keys its cookies (random, per process).
    pub fn new(config: ServerConfig, secret: [u8; 32], now: Instant) -> Result<Endpoint, DtlsError> {
        let device_idx: Index<Ssl, Arc<str>> = Ssl::new_ex_index()?;
        let cookie_cx = Arc::new(Mutex::new(cookie::Context {
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            now,
        }));
        let keys = Arc::new(cookie::Keys::new(secret, now));
        let mut b = SslContextBuilder::new(SslMethod::dtls_server())?;
        b.set_min_proto_version(Some(SslVersion::DTLS1_2))?;
        b.set_max_proto_version(Some(SslVersion::DTLS1_2))?;
        b.set_cipher_list(CIPHERS)?;
        b.set_groups_list("P-256")?;
        b.set_options(
            SslOptions::COOKIE_EXCHANGE
                | SslOptions::NO_QUERY_MTU
                | SslOptions::CIPHER_SERVER_PREFERENCE
                | SslOptions::NO_RENEGOTIATION
                | SslOptions::NO_TICKET,
        );
        b.set_mode(SslMode::RELEASE_BUFFERS);
        // No resumption cache: a session's state lives in the session table only.
        b.set_session_cache_mode(SslSessionCacheMode::OFF);
        if let Some(id) = &config.certificate {
            id.install(&mut b)?;
        }
        let (gen_keys, gen_cx, verify_cx) = (keys.clone(), cookie_cx.clone(), cookie_cx.clone());
        b.set_cookie_generate_cb(move |_ssl, buf| Ok(gen_keys.generate(*gen_cx.lock(), buf)));
        b.set_cookie_verify_cb(move |_ssl, cookie| keys.verify(*verify_cx.lock(), cookie));
        let creds = config.credentials.clone();
        b.set_psk_server_callback(move |ssl, identity, psk| {
            let Some((device, key)) = identity.and_then(|i| creds.psk(i)) else {
                // 0: unknown identity, the handshake fails with unknown_psk_identity.
                return Ok(0);
            };
            if key.len() > psk.len() || key.is_empty() {
                return Ok(0);
            }
            psk[..key.len()].copy_from_slice(&key);
            ssl.set_ex_data(device_idx, device);
            Ok(key.len())
        });
        // Certificate suites: the client must present a certificate whose key is pinned to a
        // device; no CA is trusted (PSK suites send no CertificateRequest).
        let creds = config.credentials.clone();
        b.set_verify_callback(
            SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
            move |_preverified, store| {
                if store.error_depth() != 0 {
                    return true;
                }
                store
                    .current_cert()
                    .and_then(|c| spki_sha256(c).ok())
                    .is_some_and(|d| creds.public_key(&d).is_some())
            },
        );
        let credentials = config.credentials.clone();
        Ok(Endpoint {
            ctx: b.build(),
            device_idx,
            cookie_cx,
            listener: None,
            sessions: HashMap::default(),
            handshaking: HashSet::default(),
            out: Arc::default(),
            config,
            credentials,
            stats: Stats::default(),
            next_sweep: now + IDLE_TICK,
        })
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.outbox_dropped = self.out.lock().dropped;
        s
    }

    /// Sessions in the table (handshaking ones included).
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Sessions still handshaking.
    pub fn handshaking(&self) -> usize {
        self.handshaking.len()
    }

    /// The device of `peer`'s established session.
    pub fn device(&self, peer: SocketAddr) -> Option<&Arc<str>> {
        self.sessions
            .get(&peer)
            .filter(|s| s.established)
            .and_then(|s| s.device.as_ref())
    }

    /// Hand every datagram to send to `send` (call after every other call).
    pub fn drain(&mut self, send: impl FnMut(SocketAddr, &[u8])) {
        self.out.lock().drain(send);
    }

    /// Whether datagrams wait to be drained.
    pub fn has_output(&self) -> bool {
        !self.out.lock().is_empty()
    }

    /// One datagram from `peer`.
    pub fn handle_datagram(&mut self, now: Instant, peer: SocketAddr, data: &[u8]) -> Received {
        *self.cookie_cx.lock() = cookie::Context { peer, now };
        let established = match self.sessions.get(&peer) {
            Some(s) => s.established,
            None => return self.listen(now, peer, data),
        };
        // A ClientHello in epoch 0 to an established session: the device restarted and
        // handshakes anew (RFC 6347 §4.2.8); it goes through the cookie like a new peer and
        // replaces the old session only once it returns a valid cookie.
        if established && is_client_hello(data) {
            return self.listen(now, peer, data);
        }
        let Some(s) = self.sessions.get_mut(&peer) else {
            return Received::Nothing;
        };
        s.stream.get_mut().feed(data);
        if established {
            s.last = now;
            return Received::Data;
        }
        self.drive_handshake(now, peer)
    }

    fn listen(&mut self, now: Instant, peer: SocketAddr, data: &[u8]) -> Received {
        if !is_client_hello(data) {
            self.stats.stray += 1;
            return Received::Nothing;
        }
        let mut listener = match self.listener.take() {
            Some(l) => l,
            None => match self.new_server_stream(peer) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "dtls: could not create a listening session");
                    return Received::Nothing;
                }
            },
        };
        listener.get_mut().peer = peer;
        listener.get_mut().feed(data);
        let had_output = self.has_output();
        let r = ffi::listen(listener.ssl());
        listener.get_mut().clear();
        if r == 0 {
            if !had_output && self.has_output() {
                self.stats.hello_verify += 1;
            }
            self.listener = Some(listener);
            return Received::Nothing;
        }
        if r < 0 {
            // A broken ClientHello; the listener is not reused after a fatal error.
            return Received::Nothing;
        }
        // A valid cookie: this peer proved its address. Room for it? When the handshakes are
        // at their bound the oldest one goes (as a SYN cache does): peers that stall their
        // handshakes cannot keep out one that completes its own.
        if self.handshaking.len() >= self.config.max_handshakes && !self.handshaking.contains(&peer) {
            let oldest = self
                .handshaking
                .iter()
                .filter_map(|p| self.sessions.get(p).map(|s| (s.started, *p)))
                .min();
            if let Some((_, p)) = oldest {
                self.stats.handshakes_evicted += 1;
                self.remove(p);
            }
        }
        let replacing = self.sessions.contains_key(&peer);
        if !replacing && self.sessions.len() >= self.config.max_sessions {
            self.stats.refused_full += 1;
            tracing::debug!(%peer, "dtls: session table full; ClientHello dropped");
            return Received::Nothing;
        }
        let closed = self.remove(peer).is_some();
        self.sessions.insert(
            peer,
            Session {
                stream: listener,
                device: None,
                established: false,
                started: now,
                last: now,
            },
        );
        self.handshaking.insert(peer);
        match self.drive_handshake(now, peer) {
            Received::Nothing if closed => Received::Closed,
            r => r,
        }
    }

    fn new_server_stream(&self, peer: SocketAddr) -> Result<SslStream<Dgram>, DtlsError> {
        let mut ssl = Ssl::new(&self.ctx)?;
        ssl.set_mtu(self.config.mtu)?;
        ssl.set_accept_state();
        Ok(SslStream::new(ssl, Dgram::new(peer, self.out.clone()))?)
    }

    fn drive_handshake(&mut self, now: Instant, peer: SocketAddr) -> Received {
        let Some(s) = self.sessions.get_mut(&peer) else {
            return Received::Nothing;
        };
        s.last = now;
        let r = s.stream.do_handshake();
        s.stream.get_mut().clear();
        match r {
            Ok(()) => {
                let device = s.stream.ssl().ex_data(self.device_idx).cloned().or_else(|| {
                    let cert = s.stream.ssl().peer_certificate()?;
                    let d = spki_sha256(&cert).ok()?;
                    self.credentials.public_key(&d)
                });
                let Some(device) = device else {
                    // Cannot happen with the callbacks above; refuse rather than serve anonymously.
                    self.stats.handshake_failures += 1;
                    self.remove(peer);
                    return Received::Closed;
                };
                s.established = true;
                s.device = Some(device.clone());
                self.handshaking.remove(&peer);
                self.stats.handshakes += 1;
                tracing::debug!(%peer, device = %device, cipher = Self::cipher_of(&s.stream), "dtls: session established");
                Received::Connected(device)
            }
            Err(e) if e.code() == ErrorCode::WANT_READ || e.code() == ErrorCode::WANT_WRITE => Received::Nothing,
            Err(e) => {
                self.stats.handshake_failures += 1;
                tracing::info!(%peer, reason = %e, "dtls: handshake failed");
                self.remove(peer);
                Received::Closed
            }
        }
    }

    fn cipher_of(stream: &SslStream<Dgram>) -> &'static str {
        stream
            .ssl()
            .current_cipher()
            .map_or("?", |c| c.standard_name().unwrap_or_else(|| c.name()))
    }

    /// The cipher suite of `peer`'s session (RFC name, e.g. TLS_PSK_WITH_AES_128_CCM_8).
    pub fn cipher(&self, peer: SocketAddr) -> Option<&'static str> {
        self.sessions.get(&peer).map(|s| Self::cipher_of(&s.stream))
    }

    fn remove(&mut self, peer: SocketAddr) -> Option<Session> {
        self.handshaking.remove(&peer);
        self.sessions.remove(&peer)
    }

    /// The next plaintext record from `peer` (one CoAP message), into `buf`; `None` when
    /// there is none. A session that ended is removed (a close_notify is answered).
    pub fn recv(&mut self, peer: SocketAddr, buf: &mut [u8]) -> Option<usize> {
        let s = self.sessions.get_mut(&peer)?;
        if !s.established {
            return None;
        }
        let r = s.stream.ssl_read(buf);
        s.stream.get_mut().clear();
        match r {
            Ok(n) => Some(n),
            Err(e) if e.code() == ErrorCode::WANT_READ || e.code() == ErrorCode::WANT_WRITE => None,
            Err(e) => {
                if e.code() == ErrorCode::ZERO_RETURN {
                    tracing::debug!(%peer, "dtls: the peer closed its session");
                    let _ = s.stream.shutdown();
                } else {
                    tracing::debug!(%peer, reason = %e, "dtls: session ended");
                }
                self.remove(peer);
                None
            }
        }
    }

    /// Send `plaintext` (one CoAP message) to `peer`'s established session; whether there was one.
    pub fn send(&mut self, now: Instant, peer: SocketAddr, plaintext: &[u8]) -> bool {
        let Some(s) = self.sessions.get_mut(&peer).filter(|s| s.established) else {
            return false;
        };
        s.last = now;
        match s.stream.ssl_write(plaintext) {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(%peer, reason = %e, "dtls: could not send");
                false
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to run next.
    pub fn poll_timeout(&self) -> Instant {
        self.next_sweep
    }

    /// Retransmit handshake flights whose timer expired, drop handshakes that took too long and
    /// close idle sessions.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        let mut gone = Vec::new();
        for &peer in &self.handshaking {
            let Some(s) = self.sessions.get_mut(&peer) else {
                continue;
            };
            if now.saturating_duration_since(s.started) >= self.config.handshake_timeout {
                gone.push(peer);
                self.stats.handshake_timeouts += 1;
                continue;
            }
            if ffi::timeout(s.stream.ssl()).is_some_and(|left| left.is_zero())
                && ffi::handle_timeout(s.stream.ssl()) < 0
            {
                gone.push(peer);
                self.stats.handshake_failures += 1;
            }
        }
        if now >= self.next_sweep {
            let idle = self.config.idle_timeout;
            for (peer, s) in &mut self.sessions {
                if s.established && now.saturating_duration_since(s.last) >= idle {
                    // Tell the peer; it handshakes anew when it comes back.
                    let _ = s.stream.shutdown();
                    gone.push(*peer);
                    self.stats.idle_closed += 1;
                }
            }
        }
        for peer in gone {
            self.remove(peer);
        }
        self.next_sweep = now
            + if self.handshaking.is_empty() {
                IDLE_TICK
            } else {
                HANDSHAKE_TICK
            };
    }
}

/// How a client authenticates and what it accepts of the server.
#[derive(Clone)]
pub struct ClientConfig {
    /// PSK identity and key.
    pub psk: Option<(Vec<u8>, Zeroizing<Vec<u8>>)>,
    /// A certificate and key (ECDHE_ECDSA suites).
    pub certificate: Option<Identity>,
    /// With a certificate: the server's key must have this SPKI SHA-256 (`None`: any).
    pub server_key: Option<[u8; 32]>,
    /// Largest datagram sent.
    pub mtu: u32,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field(
                "psk_identity",
                &self.psk.as_ref().map(|p| String::from_utf8_lossy(&p.0).into_owned()),
            )
            .field("certificate", &self.certificate)
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    /// A PSK client.
    pub fn psk(identity: &[u8], key: &[u8]) -> Self {
        ClientConfig {
            psk: Some((identity.to_vec(), Zeroizing::new(key.to_vec()))),
            certificate: None,
            server_key: None,
            mtu: DEFAULT_MTU,
        }
    }

    /// The OpenSSL context for this configuration (build once, connect many).
    pub fn context(&self) -> Result<ClientContext, DtlsError> {
        let mut b = SslContextBuilder::new(SslMethod::dtls_client())?;
        b.set_min_proto_version(Some(SslVersion::DTLS1_2))?;
        b.set_max_proto_version(Some(SslVersion::DTLS1_2))?;
        b.set_options(SslOptions::NO_QUERY_MTU | SslOptions::NO_TICKET);
        b.set_mode(SslMode::RELEASE_BUFFERS);
        b.set_groups_list("P-256")?;
        match (&self.psk, &self.certificate) {
            (Some((identity, key)), _) => {
                b.set_cipher_list("PSK-AES128-CCM8")?;
                let identity = identity.clone();
                let key = key.clone();
                b.set_psk_client_callback(move |_ssl, _hint, id_out, psk_out| {
                    if identity.len() >= id_out.len() || key.len() > psk_out.len() {
                        return Ok(0);
                    }
                    id_out[..identity.len()].copy_from_slice(&identity);
                    id_out[identity.len()] = 0;
                    psk_out[..key.len()].copy_from_slice(&key);
                    Ok(key.len())
                });
            }
            (None, Some(id)) => {
                b.set_cipher_list("ECDHE-ECDSA-AES128-CCM8")?;
                id.install(&mut b)?;
                let pin = self.server_key;
                b.set_verify_callback(SslVerifyMode::PEER, move |_ok, store| {
                    if store.error_depth() != 0 {
                        return true;
                    }
                    match pin {
                        None => true,
                        Some(pin) => store
                            .current_cert()
                            .and_then(|c| spki_sha256(c).ok())
                            .is_some_and(|d| d == pin),
                    }
                });
            }
            (None, None) => return Err(DtlsError::Invalid("a client needs a PSK or a certificate".into())),
        }
        Ok(ClientContext {
            ctx: b.build(),
            mtu: self.mtu,
        })
    }
}

/// A client's OpenSSL context.
#[derive(Clone)]
pub struct ClientContext {
    ctx: SslContext,
    mtu: u32,
}

impl std::fmt::Debug for ClientContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientContext").finish_non_exhaustive()
    }
}

/// One client session (a trigger to a `coaps://` device; the load generator).
pub struct Client {
    stream: SslStream<Dgram>,
    out: Arc<Mutex<Outbox>>,
    established: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("established", &self.established)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Start a handshake with `peer` (the ClientHello waits in [`drain`](Self::drain)).
    pub fn connect(ctx: &ClientContext, peer: SocketAddr) -> Result<Client, DtlsError> {
        let out: Arc<Mutex<Outbox>> = Arc::default();
        let mut ssl = Ssl::new(&ctx.ctx)?;
        ssl.set_mtu(ctx.mtu)?;
        ssl.set_connect_state();
        let mut c = Client {
            stream: SslStream::new(ssl, Dgram::new(peer, out.clone()))?,
            out,
            established: false,
        };
        c.step()?;
        Ok(c)
    }

    /// Whether the handshake completed.
    pub fn is_established(&self) -> bool {
        self.established
    }

    fn step(&mut self) -> Result<Received, DtlsError> {
        if self.established {
            return Ok(Received::Data);
        }
        let r = self.stream.do_handshake();
        self.stream.get_mut().clear();
        match r {
            Ok(()) => {
                self.established = true;
                Ok(Received::Connected(Arc::from("")))
            }
            Err(e) if e.code() == ErrorCode::WANT_READ || e.code() == ErrorCode::WANT_WRITE => Ok(Received::Nothing),
            Err(e) => Err(DtlsError::Session(e.to_string())),
        }
    }

    /// One datagram from the server.
    pub fn handle_datagram(&mut self, data: &[u8]) -> Result<Received, DtlsError> {
        self.stream.get_mut().feed(data);
        self.step()
    }

    /// The next plaintext record.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, DtlsError> {
        if !self.established {
            return Ok(None);
        }
        let r = self.stream.ssl_read(buf);
        self.stream.get_mut().clear();
        match r {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.code() == ErrorCode::WANT_READ || e.code() == ErrorCode::WANT_WRITE => Ok(None),
            Err(e) => Err(DtlsError::Session(e.to_string())),
        }
    }

    /// Send one plaintext record.
    pub fn send(&mut self, plaintext: &[u8]) -> Result<(), DtlsError> {
        self.stream
            .ssl_write(plaintext)
            .map(|_| ())
            .map_err(|e| DtlsError::Session(e.to_string()))
    }

    /// Time left before the handshake's retransmission timer fires.
    pub fn poll_timeout(&self) -> Option<Duration> {
        if self.established {
            return None;
        }
        ffi::timeout(self.stream.ssl())
    }

    /// Retransmit the last flight if its timer expired.
    pub fn handle_timeout(&mut self) -> Result<(), DtlsError> {
        if !self.established && ffi::handle_timeout(self.stream.ssl()) < 0 {
            return Err(DtlsError::Session("handshake retransmission failed".into()));
        }
        Ok(())
    }

    /// Send a close_notify.
    pub fn close(&mut self) {
        let _ = self.stream.shutdown();
    }

    /// Hand every datagram to send to `send`.
    pub fn drain(&mut self, mut send: impl FnMut(&[u8])) {
        self.out.lock().drain(|_, d| send(d));
    }
}

#[cfg(test)]
mod tests;
