//! The sans-IO CoAP server: datagrams and time in, datagrams out. No sockets, no clock.
//!
//! * Requests are answered at once ([`Server::handle_datagram`] returns the reply).
//! * Block2 is served statelessly from shared immutable buffers: any block of any resource
//!   at any time, never keyed on the token (RIOT's is empty).
//! * Duplicates (same peer and message ID within EXCHANGE_LIFETIME) get the very same reply
//!   again, rebuilt from a small [`ResponseSpec`], never from a stored copy of the bytes.
//! * Observe (RFC 7641) on manifests: [`Server::handle_timeout`] notices new versions and
//!   queues confirmable notifications for [`Server::poll_transmit`], retransmitted with
//!   exponential back-off until acknowledged; RST or silence deregisters.
//!
//! * Amplification (RFC 9175 §2.4): with `amplification_limit` set, a peer whose address is
//!   not verified gets no reply larger than that many times its request; it gets 4.01 with
//!   an Echo option instead, and a request echoing it verifies the address.
//!
//! The driver calls, in this order: `handle_datagram` for every datagram (sending what it
//! returns), `handle_timeout` when `poll_timeout` is reached, and `poll_transmit` until it
//! gives `None`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::block::BlockValue;
use crate::message::{self, Code, MsgType, ParseError, Request, ResponseSpec};

mod app;
mod echo;
mod observe;
mod options;
mod transfers;

pub use app::{AppRequest, BlockServed};
use observe::{liveness_interval, HostKey};
use options::{parse, suppressed, Parsed};

/// CoAP content-format ids used here.
pub mod content_format {
    /// text/plain;charset=utf-8
    pub const TEXT: u16 = 0;
    /// application/link-format
    pub const LINK_FORMAT: u16 = 40;
    /// application/octet-stream
    pub const OCTET_STREAM: u16 = 42;
    /// application/cbor
    pub const CBOR: u16 = 60;
}

/// Option numbers (RFC 7252 §12.2, RFC 7959, RFC 7641, RFC 7967, RFC 9175): the IANA
/// registry as the coap-numbers crate carries it.
use coap_numbers::option as opt;

/// Reads ranges of a representation that is not held in memory (a large file).
pub trait RangeSource: Send + Sync + std::fmt::Debug {
    /// Its length.
    fn len(&self) -> u64;
    /// Bytes `start..end`; `None` when they cannot be read (answered 5.00).
    fn range(&self, start: u64, end: u64) -> Option<Bytes>;
    /// Whether it is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The content of a resource.
#[derive(Clone, Debug)]
pub enum Body {
    /// Held in memory, shared (never copied per request).
    Memory(Bytes),
    /// Read range by range, so large files are never loaded whole.
    Source(Arc<dyn RangeSource>),
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body::Memory(b)
    }
}

impl Body {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Body::Memory(b) => b.len(),
            Body::Source(s) => usize::try_from(s.len()).unwrap_or(usize::MAX),
        }
    }
    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bytes `start..end` (within the length).
    pub fn slice(&self, start: usize, end: usize) -> Option<Bytes> {
        match self {
            Body::Memory(b) => b.get(start..end).map(|_| b.slice(start..end)),
            Body::Source(s) => s.range(start as u64, end as u64),
        }
    }
}

/// A resource ready to be served.
#[derive(Clone, Debug)]
pub struct Resource {
    /// The representation.
    pub body: Body,
    /// Entity tag: a content hash, the same for everyone and across restarts.
    pub etag: [u8; 8],
    /// Content-Format.
    pub content_format: u16,
    /// Block size exponent for requests without Block2, when this resource has its own
    /// (chosen at publish time for the devices of a publish-id); else the server's.
    pub default_szx: Option<u8>,
}

/// Where the server finds its resources.
pub trait Resources {
    /// The resource at the Uri-Path `segments`, or `None` for 4.04.
    fn resolve(&self, segments: &[&str]) -> Option<Resource>;
    /// The resource at `segments` as `peer` is to see it (suitcase: a staged rollout shows
    /// the new manifest only to the devices of its started waves). The default: [`resolve`].
    ///
    /// [`resolve`]: Resources::resolve
    fn resolve_for(&self, peer: SocketAddr, segments: &[&str]) -> Option<Resource> {
        let _ = peer;
        self.resolve(segments)
    }
    /// May `segments` be observed? (suitcase: manifests.)
    fn observable(&self, segments: &[&str]) -> bool {
        segments.last() == Some(&"manifest")
    }
    /// A number that changes whenever any resource may have changed.
    fn generation(&self) -> u64 {
        0
    }
    /// The resource at `segments` as it was when its ETag was `etag`, if that
    /// representation is still available (a download in progress of a path whose
    /// representation changed since its first block). The default knows only the current one.
    fn resolve_etag(&self, segments: &[&str], etag: &[u8; 8]) -> Option<Resource> {
        self.resolve(segments).filter(|r| r.etag == *etag)
    }
    /// Asked after a lookup of `segments` found nothing: whether the resource exists but
    /// cannot be read at the moment (a shared store's object store down): answered 5.03
    /// with Max-Age, so a device retries instead of giving up on a 4.04. Default: never.
    fn unavailable(&self, segments: &[&str]) -> bool {
        let _ = segments;
        false
    }
    /// Whether a POST to `segments` goes to the application ([`Server::poll_request`]);
    /// other POSTs are answered 4.05. (suitcase: device reports.)
    fn accepts_post(&self, segments: &[&str]) -> bool {
        let _ = segments;
        false
    }
}

/// Server settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Block size exponent when the request carries no Block2 (4 = 256 bytes, what
    /// Zephyr's coap_client can receive).
    pub default_szx: u8,
    /// Largest block size exponent served (6 = 1024 bytes).
    pub max_szx: u8,
    /// How long a message ID is remembered per peer (RFC 7252 EXCHANGE_LIFETIME).
    pub exchange_lifetime: Duration,
    /// Peers remembered for deduplication at most; past it the oldest generation is
    /// forgotten early (memory stays bounded under any load).
    pub max_peers: usize,
    /// Observers at most; a registration beyond it is served without Observe.
    pub max_observers: usize,
    /// Observations one host may hold at most, over all its ports: an IPv4 address, or an
    /// IPv6 /64 (one host can take a whole /64).
    pub max_observers_per_peer: usize,
    /// An observer not heard from (registration or acknowledged notification) for this long
    /// is sent a confirmable notification; if it never acknowledges it, it is removed
    /// (RFC 7641 §4.5). Registrations from spoofed or vanished peers expire this way.
    pub observe_lifetime: Duration,
    /// RFC 9175 §2.4: a reply to a peer whose address is not verified may be at most this
    /// many times the request's size; larger ones become 4.01 with an Echo option, and a
    /// request that echoes it verifies the address. 0 turns the limit off.
    pub amplification_limit: u8,
    /// Secret of the Echo values (random per process).
    pub echo_secret: [u8; 32],
    /// Downloads in progress remembered (per peer and path) at most: their version is
    /// pinned, and their completion logged.
    pub max_transfers: usize,
    /// ACK_TIMEOUT for confirmable notifications.
    pub ack_timeout: Duration,
    /// MAX_RETRANSMIT for confirmable notifications.
    pub max_retransmit: u8,
    /// How often resources are checked for change while someone observes.
    pub change_poll: Duration,
    /// Requests handed to the application and not answered yet, at most; beyond it a POST
    /// is answered 5.03 at once.
    pub max_pending_requests: usize,
    /// How long the application has to answer a request; then the server answers 5.03.
    pub app_timeout: Duration,
    /// Block events ([`Server::take_blocks`]) buffered at most between two collections;
    /// beyond it they are dropped and counted. 0 records none (tracking off).
    pub max_block_events: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            default_szx: 4,
            max_szx: 6,
            exchange_lifetime: Duration::from_secs(247),
            max_peers: 100_000,
            max_observers: 10_000,
            max_observers_per_peer: 8,
            observe_lifetime: Duration::from_secs(3600),
            amplification_limit: 0,
            echo_secret: [0; 32],
            max_transfers: 100_000,
            ack_timeout: Duration::from_secs(2),
            max_retransmit: 4,
            change_poll: Duration::from_millis(500),
            max_pending_requests: 256,
            app_timeout: Duration::from_secs(5),
            max_block_events: 0,
        }
    }
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub peer: SocketAddr,
    /// The datagram.
    pub data: Vec<u8>,
}

/// A download that completed: its last block (or its whole body) was served. For the
/// device-facing parts of the server (notify's watch, fleet state), never needed to serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferDone {
    /// Who downloaded.
    pub peer: SocketAddr,
    /// The Uri-Path, segments joined with `/`.
    pub path: String,
    /// The representation's ETag.
    pub etag: [u8; 8],
    /// Blocks served (1 for a reply that carried the whole body).
    pub blocks: u32,
    /// Its size in bytes.
    pub bytes: u64,
    /// From the first block to the last.
    pub duration: Duration,
}

/// Completed transfers kept for [`Server::poll_transfer_done`] at most; older ones are
/// dropped (and counted) when nobody collects them.
const MAX_DONE: usize = 1024;

/// The Max-Age of a 5.03 for a resource that exists but cannot be read now (seconds).
const UNAVAILABLE_RETRY_SECS: u32 = 5;

/// Counters for logs and benchmarks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests answered.
    pub requests: u64,
    /// Duplicates answered from the deduplication table (or dropped, for NON).
    pub duplicates: u64,
    /// Datagrams rejected or dropped as malformed.
    pub malformed: u64,
    /// Notifications sent (first transmissions).
    pub notifications: u64,
    /// Notification retransmissions.
    pub retransmissions: u64,
    /// Replies withheld for an unverified address (4.01 with Echo sent instead).
    pub echo_challenges: u64,
    /// Observe registrations refused (table or per-peer limit).
    pub observers_refused: u64,
    /// Completed-transfer events dropped because nobody collected them.
    pub transfer_events_dropped: u64,
    /// Block events dropped because nobody collected them in time.
    pub block_events_dropped: u64,
    /// POSTs answered 5.03 because the application had too many unanswered.
    pub requests_refused: u64,
    /// POSTs the application did not answer in time (answered 5.03 by the server).
    pub requests_expired: u64,
    /// Blocks served (2.05 with Block2, first transmissions; whole bodies count one).
    pub blocks_served: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
struct Token {
    len: u8,
    bytes: [u8; 8],
}

impl Token {
    fn new(t: &[u8]) -> Self {
        let mut bytes = [0u8; 8];
        let len = t.len().min(8);
        bytes[..len].copy_from_slice(&t[..len]);
        Token { len: len as u8, bytes }
    }
    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// What was answered to one request, enough to answer a duplicate identically. A reply
/// carrying part of a resource keeps the range, not the bytes: the deduplication table
/// never holds file contents.
#[derive(Clone, Debug)]
struct Exchange {
    mid: u16,
    reply_type: MsgType,
    reply_mid: u16,
    token: Token,
    spec: Option<ResponseSpec>,
    /// The payload was `body[start..end]` of the resource with `spec.etag`.
    range: Option<(usize, usize)>,
}

/// The last two exchanges of a peer (devices keep one request in flight).
#[derive(Clone, Debug, Default)]
struct Recent {
    slots: [Option<Exchange>; 2],
    next: u8,
    /// The peer echoed an Echo value: its address is verified (RFC 9175 §2.4).
    verified: bool,
}

impl Recent {
    fn find(&self, mid: u16) -> Option<&Exchange> {
        self.slots.iter().flatten().find(|e| e.mid == mid)
    }
    fn find_mut(&mut self, mid: u16) -> Option<&mut Exchange> {
        self.slots.iter_mut().flatten().find(|e| e.mid == mid)
    }
    fn put(&mut self, e: Exchange) {
        self.slots[usize::from(self.next & 1)] = Some(e);
        self.next ^= 1;
    }
}

/// Two generations of peers: lookups see both, inserts go to the current one, and the
/// previous one is dropped whole at rotation. Entries live between one and two lifetimes.
struct Dedup {
    current: HashMap<SocketAddr, Recent>,
    previous: HashMap<SocketAddr, Recent>,
    rotated: Instant,
}

struct Pending {
    mid: u16,
    attempts: u8,
    timeout: Duration,
    due: Instant,
    data: Vec<u8>,
}

struct Observer {
    token: Token,
    szx: Option<u8>,
    etag: [u8; 8],
    pending: Option<Pending>,
    /// Last registration or acknowledged notification.
    heard: Instant,
}

/// An observation: the peer and the Uri-Path segments as they came (kept as segments, so
/// no two paths can share a key).
type ObsKey = (SocketAddr, Arc<[String]>);
/// A retransmission deadline of an observer's notification.
type Timer = Reverse<(Instant, SocketAddr, Arc<[String]>)>;

/// The server.
pub struct Server<R> {
    config: Config,
    resources: R,
    next_mid: u16,
    rng: u64,
    out: Vec<u8>,
    /// Where this datagram's reply starts in `out` (the caller's buffer may hold others).
    out_start: usize,
    dedup: Dedup,
    observers: HashMap<ObsKey, Observer>,
    /// Observations per peer.
    observers_of: HashMap<HostKey, usize>,
    /// (peer, MID of a pending notification) → observer.
    pending_mids: HashMap<(SocketAddr, u16), Arc<[String]>>,
    /// Retransmission deadlines (lazily cleaned).
    timers: BinaryHeap<Timer>,
    observe_seq: u32,
    seen_generation: u64,
    next_change_poll: Option<Instant>,
    next_liveness_check: Instant,
    transmits: VecDeque<Transmit>,
    stats: Stats,
    echo: echo::EchoKeys,
    transfers: transfers::Transfers,
    done: VecDeque<TransferDone>,
    apps: app::Apps,
    blocks: Vec<BlockServed>,
}

/// What a request asks of the observe registry.
enum ObserveAction {
    None,
    Register { szx: Option<u8> },
    Deregister,
}

impl<R: Resources> Server<R> {
    /// A server over `resources`. `now` starts the clock; `seed` starts the message IDs and
    /// the retransmission jitter.
    pub fn new(config: Config, resources: R, now: Instant, seed: u64) -> Self {
        let config = Config {
            default_szx: config.default_szx.min(6),
            max_szx: config.max_szx.min(6),
            ..config
        };
        let seen_generation = resources.generation();
        let echo = echo::EchoKeys::new(config.echo_secret, now);
        let transfers = transfers::Transfers::new(now, config.exchange_lifetime, config.max_transfers);
        Server {
            next_liveness_check: now + liveness_interval(&config),
            config,
            resources,
            next_mid: seed as u16,
            rng: seed | 1,
            out: Vec::with_capacity(1300),
            out_start: 0,
            dedup: Dedup {
                current: HashMap::new(),
                previous: HashMap::new(),
                rotated: now,
            },
            observers: HashMap::new(),
            observers_of: HashMap::new(),
            pending_mids: HashMap::new(),
            timers: BinaryHeap::new(),
            observe_seq: 2,
            seen_generation,
            next_change_poll: None,
            transmits: VecDeque::new(),
            stats: Stats::default(),
            echo,
            transfers,
            done: VecDeque::new(),
            apps: app::Apps::default(),
            blocks: Vec::new(),
        }
    }

    /// The next request for the application (a POST the resources accept); answer it with
    /// [`Server::answer`].
    pub fn poll_request(&mut self) -> Option<AppRequest> {
        self.apps.queue.pop_front()
    }

    /// Answer request `id` with `code` and a diagnostic (or empty) payload: the reply is
    /// queued for [`Server::poll_transmit`] and remembered for the request's duplicates.
    /// False when `id` is unknown or already expired (answered 5.03 by the server).
    pub fn answer(&mut self, id: u64, code: Code, payload: Bytes) -> bool {
        let Some(d) = self.apps.pending.remove(&id) else {
            return false;
        };
        self.reply_deferred(d, code, payload);
        true
    }

    fn reply_deferred(&mut self, d: app::Deferred, code: Code, mut payload: Bytes) {
        if d.limit
            .is_some_and(|l| 4 + usize::from(d.token.len) + 8 + payload.len() > l)
        {
            payload = Bytes::new();
        }
        let spec = ResponseSpec {
            content_format: (!payload.is_empty()).then_some(content_format::TEXT),
            max_age: None,
            payload,
            ..ResponseSpec::error(code, "")
        };
        let recent = self
            .dedup
            .current
            .get_mut(&d.peer)
            .or_else(|| self.dedup.previous.get_mut(&d.peer));
        if let Some(ex) = recent.and_then(|r| r.find_mut(d.mid)) {
            ex.spec = Some(spec.clone());
        }
        let mut data = Vec::with_capacity(16 + spec.payload.len());
        message::encode_append(&mut data, d.reply_type, d.reply_mid, d.token.as_slice(), &spec);
        self.transmits.push_back(Transmit { peer: d.peer, data });
    }

    /// The blocks served since the last call (empty unless `max_block_events` > 0).
    pub fn take_blocks(&mut self) -> Vec<BlockServed> {
        let capacity = self.blocks.len();
        std::mem::replace(&mut self.blocks, Vec::with_capacity(capacity))
    }

    /// Blocks recorded and not taken yet.
    pub fn pending_blocks(&self) -> usize {
        self.blocks.len()
    }

    fn push_block(&mut self, b: BlockServed) {
        if self.config.max_block_events == 0 {
            return;
        }
        if self.blocks.len() >= self.config.max_block_events {
            self.stats.block_events_dropped += 1;
            return;
        }
        self.blocks.push(b);
    }

    /// The next completed download, if any (bounded queue: collect them, or the oldest are
    /// dropped).
    pub fn poll_transfer_done(&mut self) -> Option<TransferDone> {
        self.done.pop_front()
    }

    fn push_done(&mut self, d: TransferDone) {
        if self.done.len() >= MAX_DONE {
            self.done.pop_front();
            self.stats.transfer_events_dropped += 1;
        }
        self.done.push_back(d);
    }

    /// Downloads in progress remembered.
    pub fn transfers_in_progress(&self) -> usize {
        self.transfers.len()
    }

    /// The resources.
    pub fn resources(&self) -> &R {
        &self.resources
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Registered observers.
    pub fn observer_count(&self) -> usize {
        self.observers.len()
    }

    /// Peers currently remembered for deduplication.
    pub fn remembered_peers(&self) -> usize {
        self.dedup.current.len() + self.dedup.previous.len()
    }

    fn mid(&mut self) -> u16 {
        self.next_mid = self.next_mid.wrapping_add(1);
        self.next_mid
    }

    fn random_factor(&mut self) -> f64 {
        // xorshift64*: jitter only, not security.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        1.0 + (r >> 11) as f64 / (1u64 << 53) as f64 * 0.5
    }

    /// Handle one datagram from `peer`; returns the reply to send at once, if any (in a
    /// buffer of the server's, valid until the next call).
    pub fn handle_datagram(&mut self, now: Instant, peer: SocketAddr, datagram: &[u8]) -> Option<&[u8]> {
        self.out.clear();
        self.out_start = 0;
        self.process(now, peer, datagram)?;
        Some(&self.out)
    }

    /// Handle one datagram from `peer`, appending the reply, if any, to the caller's `buf`
    /// (quinn's shape: the caller owns the buffers, so a batch of replies is encoded in place,
    /// never copied). Whether a reply was appended.
    pub fn handle_datagram_into(&mut self, now: Instant, peer: SocketAddr, datagram: &[u8], buf: &mut Vec<u8>) -> bool {
        std::mem::swap(&mut self.out, buf);
        self.out_start = self.out.len();
        let replied = self.process(now, peer, datagram).is_some();
        if !replied {
            self.out.truncate(self.out_start);
        }
        std::mem::swap(&mut self.out, buf);
        replied
    }

    /// Write `spec` as the reply (replacing any reply written for this datagram so far).
    fn put(&mut self, ty: MsgType, mid: u16, token: &[u8], spec: &ResponseSpec) {
        self.out.truncate(self.out_start);
        message::encode_append(&mut self.out, ty, mid, token, spec);
    }

    /// Write an empty message as the reply.
    fn put_empty(&mut self, ty: MsgType, mid: u16) {
        self.out.truncate(self.out_start);
        self.out.extend_from_slice(&message::empty(ty, mid));
    }

    /// The length of the reply written for this datagram.
    fn reply_len(&self) -> usize {
        self.out.len() - self.out_start
    }

    fn process(&mut self, now: Instant, peer: SocketAddr, datagram: &[u8]) -> Option<()> {
        let req = match Request::parse(datagram) {
            Ok(r) => r,
            Err(ParseError::Malformed { ty: 0, mid }) => {
                self.stats.malformed += 1;
                tracing::debug!(%peer, "malformed confirmable message, answering RST");
                self.put_empty(MsgType::Rst, mid);
                return Some(());
            }
            Err(_) => {
                self.stats.malformed += 1;
                tracing::trace!(%peer, len = datagram.len(), "dropping an unparsable datagram");
                return None;
            }
        };
        match (req.ty, req.code) {
            // ACK or RST: maybe for one of our notifications.
            (2 | 3, _) => {
                self.peer_answered(now, peer, req.mid, req.ty == 3);
                None
            }
            // CoAP ping: an empty CON is answered with RST (RFC 7252 §4.3).
            (0, 0) => {
                self.put_empty(MsgType::Rst, req.mid);
                Some(())
            }
            (_, 0) => None,
            (_, 1..=31) => self.request(now, peer, &req, datagram.len()),
            // A response or reserved code sent to a server: reject CON, ignore NON.
            (0, _) => {
                self.put_empty(MsgType::Rst, req.mid);
                Some(())
            }
            _ => None,
        }
    }

    fn request(&mut self, now: Instant, peer: SocketAddr, req: &Request<'_>, size: usize) -> Option<()> {
        let mid = req.mid;
        let con = req.ty == 0;
        self.rotate(now);
        let seen = self
            .dedup
            .current
            .get(&peer)
            .and_then(|r| r.find(mid))
            .or_else(|| self.dedup.previous.get(&peer).and_then(|r| r.find(mid)))
            .cloned();
        if let Some(ex) = seen {
            self.stats.duplicates += 1;
            if !con {
                // Duplicated NON: silently ignored (RFC 7252 §4.5).
                return None;
            }
            let mut spec = ex.spec?;
            if let Some((start, end)) = ex.range {
                // The payload is read again from the resource; if it changed meanwhile, the
                // request is answered afresh (a GET is safe to repeat).
                let parsed = parse(req).ok()?;
                self.transfers.duplicate(now, peer, &parsed.path);
                let body = spec
                    .etag
                    .and_then(|e| self.resources.resolve_etag(&parsed.path, &e))
                    .and_then(|r| r.body.slice(start, end));
                match body {
                    Some(b) => spec.payload = b,
                    None => return self.fresh(now, peer, req, size),
                }
            }
            self.put(ex.reply_type, ex.reply_mid, ex.token.as_slice(), &spec);
            return Some(());
        }
        self.stats.requests += 1;
        self.fresh(now, peer, req, size)
    }

    /// Answer a request that is not a duplicate (or whose resource changed since).
    fn fresh(&mut self, now: Instant, peer: SocketAddr, req: &Request<'_>, size: usize) -> Option<()> {
        let mid = req.mid;
        let con = req.ty == 0;
        let token = Token::new(req.token);
        let parsed = parse(req);
        if let Ok(p) = &parsed {
            if p.post {
                return self.post(now, peer, req, size, p, token);
            }
        }
        // A later block of a download in progress: the version its first block came from.
        let pin = match &parsed {
            Ok(p) if p.block2.is_some_and(|b| b.num > 0) => self.transfers.pinned(peer, &p.path),
            _ => None,
        };
        let (mut spec, mut observe, path) = match &parsed {
            Ok(p) => self.respond(peer, p, pin),
            Err(e) => (e.clone(), ObserveAction::None, None),
        };
        let (reply_type, reply_mid) = if con {
            (MsgType::Ack, mid)
        } else {
            (MsgType::Non, self.mid())
        };
        if self.config.amplification_limit > 0 && !self.verified(peer) {
            let echoed = parsed.as_ref().ok().and_then(|p| p.echo);
            if echoed.is_some_and(|e| self.echo.check(now, peer, e)) {
                self.mark_verified(peer);
            } else {
                let limit = size.saturating_mul(usize::from(self.config.amplification_limit));
                self.put(reply_type, reply_mid, token.as_slice(), &spec);
                if self.reply_len() > limit && spec.code.class() != 2 {
                    // An error's diagnostic text is a courtesy an unverified address goes without.
                    spec.payload = Bytes::new();
                    self.put(reply_type, reply_mid, token.as_slice(), &spec);
                }
                // An observation would send notifications to the address on every change: it
                // must be proven first, like any reply over the limit.
                let registering = matches!(observe, ObserveAction::Register { .. });
                if self.reply_len() > limit || registering {
                    self.stats.echo_challenges += 1;
                    tracing::debug!(%peer, reply = self.reply_len(), request = size, "unverified address: 4.01 with Echo");
                    spec = ResponseSpec::error(Code::UNAUTHORIZED, "");
                    spec.echo = Some(self.echo.value(now, peer));
                    observe = ObserveAction::None;
                    self.put(reply_type, reply_mid, token.as_slice(), &spec);
                    if self.reply_len() > limit {
                        // Even the challenge is over the limit for so small a request: nothing.
                        return None;
                    }
                }
            }
        }
        if let Some(path) = path {
            match observe {
                ObserveAction::Register { szx } if spec.code == Code::CONTENT => {
                    if self.register(now, peer, path, token, szx, spec.etag.unwrap_or_default()) {
                        spec.observe = Some(self.observe_seq);
                        if self.next_change_poll.is_none() {
                            self.next_change_poll = Some(now + self.config.change_poll);
                        }
                    }
                }
                // 2.03 keeps a registration as it is; an error ends it (RFC 7641 §3.2).
                ObserveAction::Register { .. } if spec.code == Code::VALID => {}
                ObserveAction::Deregister | ObserveAction::Register { .. } => {
                    self.deregister(&(peer, path));
                }
                ObserveAction::None => {}
            }
        }
        if spec.code == Code::CONTENT && spec.etag.is_some() {
            self.stats.blocks_served += 1;
        }
        if let (Code::CONTENT, Some(b), Some(etag), Ok(p)) = (spec.code, spec.block2, spec.etag, &parsed) {
            if let Some((_, end)) = spec.range {
                self.push_block(BlockServed {
                    peer,
                    etag,
                    end: end as u64,
                    size: u64::from(spec.size2.unwrap_or_default()),
                });
            }
            if let Some(done) = self.transfers.served(now, peer, &p.path, etag, b) {
                let bytes = u64::from(spec.size2.unwrap_or_default());
                let duration = now.saturating_duration_since(done.started);
                if self.transfers.may_log(now) {
                    tracing::info!(
                        %peer,
                        path = %done.path,
                        blocks = done.blocks,
                        block_size = done.block_size,
                        bytes,
                        duration_ms = duration.as_millis() as u64,
                        duplicates = done.duplicates,
                        "coap transfer complete"
                    );
                }
                self.push_done(TransferDone {
                    peer,
                    path: done.path,
                    etag,
                    blocks: done.blocks,
                    bytes,
                    duration,
                });
            }
        } else if let (Code::CONTENT, None, Some(etag), Ok(p)) = (spec.code, spec.block2, spec.etag, &parsed) {
            // The whole body in one reply: a (one-block) transfer too.
            let size = spec.payload.len() as u64;
            self.push_block(BlockServed {
                peer,
                etag,
                end: size,
                size,
            });
            self.push_done(TransferDone {
                peer,
                path: p.path.join("/"),
                etag,
                blocks: 1,
                bytes: spec.payload.len() as u64,
                duration: Duration::ZERO,
            });
        }
        let spec = if !con && suppressed(req, spec.code) {
            None
        } else {
            Some(spec)
        };
        let range = spec.as_ref().and_then(|s| s.range);
        let stored = spec.as_ref().map(|s| ResponseSpec {
            payload: if range.is_some() {
                Bytes::new()
            } else {
                s.payload.clone()
            },
            ..s.clone()
        });
        let ex = Exchange {
            mid,
            reply_type,
            reply_mid,
            token,
            spec: stored,
            range,
        };
        self.recent(peer).put(ex);
        let spec = spec?;
        self.put(reply_type, reply_mid, token.as_slice(), &spec);
        Some(())
    }

    /// A POST: handed to the application when the resources accept it (answered later by
    /// [`Server::answer`]; its duplicates meanwhile get no reply), else answered now.
    fn post(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        req: &Request<'_>,
        size: usize,
        p: &Parsed<'_>,
        token: Token,
    ) -> Option<()> {
        let con = req.ty == 0;
        let (reply_type, reply_mid) = if con {
            (MsgType::Ack, req.mid)
        } else {
            (MsgType::Non, self.mid())
        };
        let spec = if !self.resources.accepts_post(&p.path) {
            let mut spec =
                ResponseSpec::error(Code::METHOD_NOT_ALLOWED, "POST is accepted on <publish-id>/report only");
            if self.config.amplification_limit > 0 && !self.verified(peer) {
                // An error's diagnostic text is a courtesy an unverified address goes without.
                spec.payload = Bytes::new();
            }
            spec
        } else if self.config.amplification_limit > 0
            && !self.verified(peer)
            && !p.echo.is_some_and(|e| self.echo.check(now, peer, e))
        {
            // A report changes what the server records of a device: under the Echo regime
            // its sender's address must be proven first, like an observation's.
            self.stats.echo_challenges += 1;
            let mut spec = ResponseSpec::error(Code::UNAUTHORIZED, "");
            spec.echo = Some(self.echo.value(now, peer));
            spec
        } else if self.apps.full(self.config.max_pending_requests) {
            self.stats.requests_refused += 1;
            ResponseSpec::error(Code::SERVICE_UNAVAILABLE, "busy: try again later")
        } else {
            if self.config.amplification_limit > 0 && !self.verified(peer) {
                self.mark_verified(peer); // it echoed a valid value just now
            }
            self.recent(peer).put(Exchange {
                mid: req.mid,
                reply_type,
                reply_mid,
                token,
                spec: None,
                range: None,
            });
            let request = AppRequest {
                id: 0,
                peer,
                path: p.path.join("/"),
                content_format: p.content_format,
                payload: Bytes::copy_from_slice(req.payload),
            };
            let deferred = app::Deferred {
                peer,
                mid: req.mid,
                token,
                reply_type,
                reply_mid,
                limit: (self.config.amplification_limit > 0 && !self.verified(peer))
                    .then(|| size.saturating_mul(usize::from(self.config.amplification_limit))),
            };
            self.apps.defer(now + self.config.app_timeout, deferred, request);
            return None;
        };
        self.recent(peer).put(Exchange {
            mid: req.mid,
            reply_type,
            reply_mid,
            token,
            spec: Some(spec.clone()),
            range: None,
        });
        if !con && suppressed(req, spec.code) {
            return None;
        }
        self.put(reply_type, reply_mid, token.as_slice(), &spec);
        Some(())
    }

    /// The peer's deduplication entry, moved into the current generation.
    fn recent(&mut self, peer: SocketAddr) -> &mut Recent {
        if !self.dedup.current.contains_key(&peer) {
            let moved = self.dedup.previous.remove(&peer).unwrap_or_default();
            self.dedup.current.insert(peer, moved);
        }
        self.dedup.current.entry(peer).or_default()
    }

    fn verified(&self, peer: SocketAddr) -> bool {
        self.dedup
            .current
            .get(&peer)
            .or_else(|| self.dedup.previous.get(&peer))
            .is_some_and(|r| r.verified)
    }

    fn mark_verified(&mut self, peer: SocketAddr) {
        self.recent(peer).verified = true;
    }

    fn rotate(&mut self, now: Instant) {
        let d = &mut self.dedup;
        if now.saturating_duration_since(d.rotated) >= self.config.exchange_lifetime
            || d.current.len() >= self.config.max_peers
        {
            if d.current.len() >= self.config.max_peers {
                tracing::debug!(
                    peers = d.current.len(),
                    "deduplication table full, forgetting the older generation early"
                );
            }
            d.previous = std::mem::take(&mut d.current);
            d.rotated = now;
        }
    }

    fn respond(
        &self,
        peer: SocketAddr,
        p: &Parsed<'_>,
        pin: Option<[u8; 8]>,
    ) -> (ResponseSpec, ObserveAction, Option<Arc<[String]>>) {
        let none = |spec| (spec, ObserveAction::None, None);
        let res = match pin {
            Some(etag) => match self.resources.resolve_etag(&p.path, &etag) {
                Some(r) => Some(r),
                // The version being downloaded is gone: fail this download rather than
                // continue it with another version's bytes.
                None => {
                    return none(ResponseSpec::error(
                        Code::NOT_FOUND,
                        "the version being downloaded is no longer served; start again at block 0",
                    ))
                }
            },
            None => self.resources.resolve_for(peer, &p.path),
        };
        let Some(res) = res else {
            // If-Match on a resource that does not exist fails (RFC 7252 §5.10.8.1).
            if !p.if_match.is_empty() {
                return none(ResponseSpec::error(
                    Code::PRECONDITION_FAILED,
                    "If-Match: no such resource",
                ));
            }
            if self.resources.unavailable(&p.path) {
                return none(ResponseSpec {
                    max_age: Some(UNAVAILABLE_RETRY_SECS),
                    ..ResponseSpec::error(
                        Code::SERVICE_UNAVAILABLE,
                        "the file cannot be read at the moment: try again",
                    )
                });
            }
            return none(ResponseSpec::error(Code::NOT_FOUND, "not found"));
        };
        if !p.if_match.is_empty() && !p.if_match.iter().any(|e| e.is_empty() || *e == res.etag) {
            return none(ResponseSpec::error(
                Code::PRECONDITION_FAILED,
                "If-Match: the ETag differs",
            ));
        }
        if p.if_none_match {
            return none(ResponseSpec::error(
                Code::PRECONDITION_FAILED,
                "If-None-Match: the resource exists",
            ));
        }
        let observe_action = match p.observe {
            Some(0) if self.resources.observable(&p.path) => ObserveAction::Register {
                szx: p.block2.map(|b| b.szx),
            },
            Some(1) => ObserveAction::Deregister,
            _ => ObserveAction::None,
        };
        let key = match observe_action {
            ObserveAction::None => None,
            _ => Some(p.path.iter().map(|s| (*s).to_string()).collect::<Vec<_>>().into()),
        };
        if let Some(a) = p.accept {
            if a != u32::from(res.content_format) {
                return none(ResponseSpec::error(
                    Code::NOT_ACCEPTABLE,
                    "no representation in the Accept-ed format",
                ));
            }
        }
        if p.block2.is_none_or(|b| b.num == 0) && p.etags.iter().any(|e| *e == res.etag) {
            let spec = ResponseSpec {
                etag: Some(res.etag),
                ..ResponseSpec::error(Code::VALID, "")
            };
            return (spec, observe_action, key);
        }
        match self.content(&res, p.block2, p.size2_requested) {
            Ok(spec) => (spec, observe_action, key),
            Err(e) => none(e),
        }
    }

    /// The 2.05 for `res`, block-wise as the request asks or as the size requires.
    fn content(
        &self,
        res: &Resource,
        block2: Option<BlockValue>,
        size2_requested: bool,
    ) -> Result<ResponseSpec, ResponseSpec> {
        let len = res.body.len();
        let mut spec = ResponseSpec {
            code: Code::CONTENT,
            etag: Some(res.etag),
            content_format: Some(res.content_format),
            max_age: None,
            size2: size2_requested.then_some(u32::try_from(len).unwrap_or(u32::MAX)),
            ..ResponseSpec::error(Code::CONTENT, "")
        };
        let block = match block2 {
            Some(b) => {
                // Honour the client's size, or go smaller; scale the number to match.
                let szx = b.szx.min(self.config.max_szx);
                let num = u64::from(b.num) << (b.szx - szx);
                if num > u64::from(crate::block::MAX_NUM) {
                    return Err(ResponseSpec::error(
                        Code::BAD_OPTION,
                        "Block2 number beyond 20 bits at this size",
                    ));
                }
                Some(BlockValue {
                    num: num as u32,
                    more: false,
                    szx,
                })
            }
            None if len > 1 << (res.default_szx.unwrap_or(self.config.default_szx).min(6) + 4) => Some(BlockValue {
                num: 0,
                more: false,
                szx: res.default_szx.unwrap_or(self.config.default_szx).min(6),
            }),
            None => None,
        };
        let unreadable = || ResponseSpec::error(Code::INTERNAL_SERVER_ERROR, "the resource cannot be read");
        match block {
            None => {
                spec.payload = res.body.slice(0, len).ok_or_else(unreadable)?;
                spec.range = Some((0, len));
            }
            Some(mut b) => {
                let start = b.offset();
                if start >= len && !(start == 0 && len == 0) {
                    return Err(ResponseSpec::error(
                        Code::BAD_OPTION,
                        "Block2 number beyond the end of the resource",
                    ));
                }
                let end = (start + b.size()).min(len);
                b.more = end < len;
                spec.block2 = Some(b);
                spec.size2 = Some(u32::try_from(len).unwrap_or(u32::MAX));
                spec.payload = res.body.slice(start, end).ok_or_else(unreadable)?;
                spec.range = Some((start, end));
            }
        }
        Ok(spec)
    }

    /// Check resources for change and retransmit notifications that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.rotate(now);
        while let Some(d) = self.apps.expired(now) {
            self.stats.requests_expired += 1;
            self.reply_deferred(
                d,
                Code::SERVICE_UNAVAILABLE,
                Bytes::from_static(b"not answered in time: try again"),
            );
        }
        self.transfers.rotate(now);
        if !self.observers.is_empty() {
            let generation = self.resources.generation();
            if generation != self.seen_generation {
                tracing::debug!(generation, observers = self.observers.len(), "resources changed");
                self.seen_generation = generation;
                self.notify_changed(now);
            }
        }
        self.next_change_poll = (!self.observers.is_empty()).then(|| now + self.config.change_poll);
        if now >= self.next_liveness_check {
            self.next_liveness_check = now + liveness_interval(&self.config);
            self.check_liveness(now);
        }
        while let Some(Reverse((due, _, _))) = self.timers.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((due, peer, path))) = self.timers.pop() else {
                break;
            };
            let key = (peer, path);
            let max = self.config.max_retransmit;
            let Some(o) = self.observers.get_mut(&key) else {
                continue;
            };
            let Some(p) = o.pending.as_mut() else { continue };
            if p.due != due {
                continue; // superseded timer
            }
            if p.attempts >= max {
                tracing::debug!(peer = %key.0, path = %key.1.join("/"), "notification never acknowledged, observer removed");
                self.deregister(&key);
                continue;
            }
            p.attempts += 1;
            p.timeout *= 2;
            p.due = now + p.timeout;
            let (due, data) = (p.due, p.data.clone());
            self.stats.retransmissions += 1;
            self.transmits.push_back(Transmit { peer: key.0, data });
            self.timers.push(Reverse((due, key.0, key.1)));
        }
    }

    /// The next datagram the server wants to send on its own (notifications).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// When `handle_timeout` should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((t, _, _))| *t);
        let dedup = self.dedup.rotated + self.config.exchange_lifetime;
        let (change, liveness) = if self.observers.is_empty() {
            (None, None)
        } else {
            (self.next_change_poll, Some(self.next_liveness_check))
        };
        [timer, Some(dedup), change, liveness, self.apps.next_expiry()]
            .into_iter()
            .flatten()
            .min()
    }
}

#[cfg(test)]
mod tests;
