//! The fleet simulator behind `fleetsim`: N devices, each with its own UDP socket and one
//! tokio task, that wait for an update (a CoAP trigger, or an Observe notification of the
//! manifest), fetch the manifest block-wise, decode it with `suitcase-suit`, download the
//! image it names block-wise while hashing it, check its digest and report the result with a
//! confirmable `POST <publish-id>/report` (JSON, Content-Format 50).
//!
//! Every datagram in and out can be dropped with a probability (a seeded RNG per device);
//! confirmable requests are retransmitted with RFC 7252's back-off (ACK_TIMEOUT × 1–1.5,
//! doubled, MAX_RETRANSMIT), and a request that exhausts them is sent again as a new
//! exchange a few times before the update counts as failed. Requests the server sends the
//! device (triggers, reads of `suit/slot/active`) are deduplicated by (peer, MID) and a
//! duplicate is answered again without side effect. Counters are shared atomics; nothing
//! here allocates per block beyond the reply's payload.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};
use suitcase_suit::manifest::{param, ParamValue};
use suitcase_suit::Envelope;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::coap::{self, RequestOptions};
use crate::rng::{mix, Rng};

/// How devices learn of an update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A confirmable POST of the manifest URL to the device (any path).
    Coap,
    /// The device observes `<publish-id>/manifest` on the server.
    Observe,
}

/// What every simulated device shares.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// Trigger mode.
    pub mode: Mode,
    /// The server's CoAP address: where Observe registers and reports go. `None`: the host
    /// of the manifest URL a trigger carries (coap mode only).
    pub server: Option<SocketAddr>,
    /// The publish-id observed and reported on; `None`: read from the manifest URL.
    pub publish_id: Option<String>,
    /// The manifest sequence number every device runs at start.
    pub running_seq: u64,
    /// Block size exponent asked for (6 = 1024 bytes).
    pub szx: u8,
    /// Probability of dropping each datagram, in each direction.
    pub loss: f64,
    /// Seed of the loss RNG, the jitter and the choice of failing devices.
    pub seed: u64,
    /// ACK_TIMEOUT (the first retransmission comes after 1–1.5 times it).
    pub ack_timeout: Duration,
    /// MAX_RETRANSMIT.
    pub max_retransmit: u32,
    /// Exchanges tried for one request (each with all its retransmissions) before the
    /// update fails.
    pub exchange_attempts: u32,
    /// How long to wait for a separate response after an empty ACK.
    pub separate_timeout: Duration,
    /// Re-register an Observe that the server refused or ended after this long.
    pub reregister_after: Duration,
}

/// Counters shared by all devices (relaxed atomics: read once at the end).
#[derive(Debug, Default)]
pub struct Stats {
    /// Trigger POSTs accepted (not counting duplicates).
    pub triggers: AtomicU64,
    /// Retransmitted trigger POSTs answered again.
    pub duplicate_triggers: AtomicU64,
    /// Trigger POSTs refused (no usable URL).
    pub bad_triggers: AtomicU64,
    /// Observe notifications received (duplicates included).
    pub notifications: AtomicU64,
    /// Observe registrations the server accepted.
    pub observe_registered: AtomicU64,
    /// Observe registrations answered without Observe (server limits) or ended by it.
    pub observe_refused: AtomicU64,
    /// Devices whose first Observe registration ended (accepted, refused or failed).
    pub observe_first_done: AtomicU64,
    /// Manifests not newer than the running image (no update, no report).
    pub stale_manifests: AtomicU64,
    /// Updates started (a manifest newer than the running image).
    pub updates_started: AtomicU64,
    /// Images downloaded whole with the digest the manifest names.
    pub downloads_completed: AtomicU64,
    /// Images whose digest differed.
    pub digest_mismatches: AtomicU64,
    /// Updates that ended before a report (timeouts, bad replies).
    pub update_errors: AtomicU64,
    /// Failure reports sent (simulated failures and digest mismatches).
    pub failures_reported: AtomicU64,
    /// Reports answered with a success code.
    pub reports_acked: AtomicU64,
    /// Reports answered with a 4.xx (not retried).
    pub reports_rejected: AtomicU64,
    /// Reports sent again after 5.03 or a timeout.
    pub report_retries: AtomicU64,
    /// Reports answered 5.xx (the server's fleet was busy), then sent again.
    pub reports_unavailable: AtomicU64,
    /// Datagrams put on the wire.
    pub datagrams_sent: AtomicU64,
    /// Datagrams received and kept.
    pub datagrams_received: AtomicU64,
    /// Outgoing datagrams dropped by the loss injection.
    pub dropped_out: AtomicU64,
    /// Incoming datagrams dropped by the loss injection.
    pub dropped_in: AtomicU64,
    /// Retransmissions of confirmable requests.
    pub retransmissions: AtomicU64,
    /// Exchanges that got no answer after all retransmissions (and were tried again).
    pub exchange_timeouts: AtomicU64,
    /// Bytes sent (datagrams on the wire).
    pub bytes_sent: AtomicU64,
    /// Bytes received (datagrams kept).
    pub bytes_received: AtomicU64,
    /// Image bytes downloaded (payloads).
    pub image_bytes: AtomicU64,
    /// Devices in an update right now.
    pub busy: AtomicU64,
    /// Unix ms of the first trigger (or acted-on notification); 0: none yet.
    pub first_trigger_ms: AtomicU64,
    /// Unix ms of the last report acknowledged; 0: none yet.
    pub last_report_ms: AtomicU64,
    /// Unix ms of the last datagram sent or received.
    pub last_activity_ms: AtomicU64,
    /// Trigger → report acknowledged, per update, in ms.
    pub latencies_ms: Mutex<Vec<u64>>,
    /// The first few error messages, for the summary.
    pub errors: Mutex<Vec<String>>,
}

/// Error samples kept.
const MAX_ERROR_SAMPLES: usize = 8;

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

/// Unix time in ms.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Stats {
    fn error(&self, device: usize, e: &str) {
        let mut v = self.errors.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if v.len() < MAX_ERROR_SAMPLES {
            v.push(format!("device {device}: {e}"));
        }
    }

    fn triggered(&self, ms: u64) {
        let _ = self
            .first_trigger_ms
            .fetch_update(Relaxed, Relaxed, |v| (v == 0).then_some(ms));
    }

    /// Whether any update was asked for yet.
    pub fn started(&self) -> bool {
        self.triggers.load(Relaxed) > 0 || self.updates_started.load(Relaxed) > 0
    }

    /// The summary as JSON (`devices`, counters, timestamps, latency percentiles).
    pub fn summary(&self, mode: Mode, devices: usize, wall: Duration, cpu_s: f64) -> serde_json::Value {
        let mut lat = self
            .latencies_ms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        lat.sort_unstable();
        let errors = self
            .errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let g = |c: &AtomicU64| c.load(Relaxed);
        let ts = |c: &AtomicU64| match c.load(Relaxed) {
            0 => serde_json::Value::Null,
            v => v.into(),
        };
        serde_json::json!({
            "mode": match mode { Mode::Coap => "coap", Mode::Observe => "observe" },
            "devices": devices,
            "triggers": g(&self.triggers),
            "duplicate_triggers": g(&self.duplicate_triggers),
            "bad_triggers": g(&self.bad_triggers),
            "notifications": g(&self.notifications),
            "observe_registered": g(&self.observe_registered),
            "observe_refused": g(&self.observe_refused),
            "stale_manifests": g(&self.stale_manifests),
            "updates_started": g(&self.updates_started),
            "downloads_completed": g(&self.downloads_completed),
            "digest_mismatches": g(&self.digest_mismatches),
            "update_errors": g(&self.update_errors),
            "failures_reported": g(&self.failures_reported),
            "reports_acked": g(&self.reports_acked),
            "reports_rejected": g(&self.reports_rejected),
            "report_retries": g(&self.report_retries),
            "reports_unavailable": g(&self.reports_unavailable),
            "datagrams_sent": g(&self.datagrams_sent),
            "datagrams_received": g(&self.datagrams_received),
            "datagrams_dropped": g(&self.dropped_out) + g(&self.dropped_in),
            "dropped_out": g(&self.dropped_out),
            "dropped_in": g(&self.dropped_in),
            "retransmissions": g(&self.retransmissions),
            "exchange_timeouts": g(&self.exchange_timeouts),
            "bytes_sent": g(&self.bytes_sent),
            "bytes_received": g(&self.bytes_received),
            "image_bytes": g(&self.image_bytes),
            "first_trigger_ms": ts(&self.first_trigger_ms),
            "last_report_ms": ts(&self.last_report_ms),
            "latency_ms": {
                "n": lat.len(),
                "p50": percentile(&lat, 0.50),
                "p90": percentile(&lat, 0.90),
                "p99": percentile(&lat, 0.99),
                "max": lat.last().copied(),
            },
            "wall_s": (wall.as_secs_f64() * 1000.0).round() / 1000.0,
            "cpu_s": (cpu_s * 100.0).round() / 100.0,
            "errors": errors,
        })
    }
}

/// The `p` quantile (nearest rank) of sorted values; `None` when empty.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Which devices report failure: exactly round(`fail` × `n`) of them, chosen by a hash of
/// their index under `seed` (the same devices for the same seed).
pub fn failing_devices(n: usize, fail: f64, seed: u64) -> Vec<bool> {
    let count = ((fail.clamp(0.0, 1.0) * n as f64).round() as usize).min(n);
    let mut order: Vec<(u64, usize)> = (0..n).map(|i| (mix(seed ^ 0x6661_696c ^ mix(i as u64)), i)).collect();
    order.sort_unstable();
    let mut out = vec![false; n];
    for (_, i) in order.into_iter().take(count) {
        out[i] = true;
    }
    out
}

/// The local address of device `i`: `base_ip` advanced by `i / per_ip` (all on `base_ip`
/// when `per_ip` is 0), port `base_port + i`.
pub fn device_addr(base_ip: IpAddr, per_ip: usize, base_port: u16, i: usize) -> anyhow::Result<SocketAddr> {
    let port = u16::try_from(usize::from(base_port) + i)
        .map_err(|_| anyhow::anyhow!("device {i}: port {} beyond 65535", usize::from(base_port) + i))?;
    let step = i.checked_div(per_ip).unwrap_or(0);
    let ip = match base_ip {
        IpAddr::V4(a) => {
            let v = u32::from(a)
                .checked_add(u32::try_from(step)?)
                .ok_or_else(|| anyhow::anyhow!("device {i}: address beyond 255.255.255.255"))?;
            IpAddr::V4(v.into())
        }
        IpAddr::V6(a) => {
            let v = u128::from(a)
                .checked_add(step as u128)
                .ok_or_else(|| anyhow::anyhow!("device {i}: address overflow"))?;
            IpAddr::V6(v.into())
        }
    };
    Ok(SocketAddr::new(ip, port))
}

/// A `coap://host[:port]/path` URL: host, port (5683 by default) and path segments.
pub fn parse_coap_url(url: &str) -> Result<(String, u16, Vec<String>), String> {
    let rest = url
        .strip_prefix("coap://")
        .ok_or_else(|| format!("{url:?} is not a coap:// URL"))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let path = path.split(['?', '#']).next().unwrap_or("");
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| format!("{url:?}: unclosed '['"))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    let port = match port {
        Some(p) => p.parse().map_err(|_| format!("{url:?}: bad port"))?,
        None => 5683,
    };
    let segments = path.split('/').filter(|s| !s.is_empty()).map(str::to_string).collect();
    Ok((host.to_string(), port, segments))
}

/// The publish-id of a manifest path as the server names them: `<id>/v/<n>/<file>`,
/// `<id>/manifest` or `<id>/riot.suit.<seq>.bin`.
pub fn publish_id_of(path: &[String]) -> Option<String> {
    let n = path.len();
    let end = (1..n.saturating_sub(1))
        .find(|&k| path[k] == "v" && !path[k + 1].is_empty() && path[k + 1].bytes().all(|b| b.is_ascii_digit()))
        .or_else(|| {
            let last = path.last()?;
            (n >= 2 && (last == "manifest" || last.starts_with("riot.suit."))).then_some(n - 1)
        })?;
    Some(path[..end].join("/"))
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))
}

/// What a device answers a request it already answered: the same (peer, MID) gets the same
/// code, and the request's side effect (starting an update) happens once.
#[derive(Debug, Default)]
pub struct Dedup {
    recent: VecDeque<(SocketAddr, u16, u8)>,
}

/// Requests remembered per device (RFC 7252 keeps them EXCHANGE_LIFETIME; a device sees
/// few requests, so the last few are enough).
const DEDUP_ENTRIES: usize = 16;

impl Dedup {
    /// The code answered to (peer, mid) before, if it was.
    pub fn seen(&self, peer: SocketAddr, mid: u16) -> Option<u8> {
        self.recent
            .iter()
            .find(|(p, m, _)| *p == peer && *m == mid)
            .map(|(_, _, c)| *c)
    }

    /// Remember that (peer, mid) was answered `code`.
    pub fn record(&mut self, peer: SocketAddr, mid: u16, code: u8) {
        if self.recent.len() == DEDUP_ENTRIES {
            self.recent.pop_front();
        }
        self.recent.push_back((peer, mid, code));
    }
}

/// The update a device has been asked for.
#[derive(Debug)]
enum Work {
    /// A trigger: fetch this manifest URL.
    Trigger { url: String, at: Instant },
    /// A notification (or the registration's answer) with the manifest's first block.
    Notified {
        server: SocketAddr,
        manifest: Vec<u8>,
        more: bool,
        at: Instant,
    },
}

/// A reply, owned.
#[derive(Debug)]
struct Resp {
    code: u8,
    block2: Option<(u32, bool, u8)>,
    etag: Option<Vec<u8>>,
    observe: Option<u32>,
    payload: Vec<u8>,
}

impl Resp {
    fn of(m: &coap::Reply<'_>) -> Self {
        Resp {
            code: m.code,
            block2: m.block2,
            etag: m.etag.map(<[u8]>::to_vec),
            observe: m.observe,
            payload: m.payload.to_vec(),
        }
    }
}

/// A socket with loss injection and counters.
struct Io {
    sock: UdpSocket,
    rng: Rng,
    loss: f64,
    stats: Arc<Stats>,
}

impl Io {
    async fn send(&mut self, dst: SocketAddr, data: &[u8]) -> Result<(), String> {
        self.stats.last_activity_ms.store(unix_ms(), Relaxed);
        if self.rng.chance(self.loss) {
            inc(&self.stats.dropped_out);
            return Ok(());
        }
        self.sock
            .send_to(data, dst)
            .await
            .map_err(|e| format!("send to {dst}: {e}"))?;
        inc(&self.stats.datagrams_sent);
        self.stats.bytes_sent.fetch_add(data.len() as u64, Relaxed);
        Ok(())
    }

    /// The next datagram kept, or `None` at `deadline`.
    async fn recv(&mut self, buf: &mut [u8], deadline: Option<Instant>) -> Result<Option<(usize, SocketAddr)>, String> {
        loop {
            let r = match deadline {
                Some(d) => match tokio::time::timeout_at(d, self.sock.recv_from(buf)).await {
                    Ok(r) => r,
                    Err(_) => return Ok(None),
                },
                None => self.sock.recv_from(buf).await,
            };
            let (n, peer) = match r {
                Ok(x) => x,
                // ICMP errors of an earlier send surface here on some systems: not ours to end.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(format!("recv: {e}")),
            };
            self.stats.last_activity_ms.store(unix_ms(), Relaxed);
            if self.rng.chance(self.loss) {
                inc(&self.stats.dropped_in);
                continue;
            }
            inc(&self.stats.datagrams_received);
            self.stats.bytes_received.fetch_add(n as u64, Relaxed);
            return Ok(Some((n, peer)));
        }
    }
}

/// How an update ended.
enum Ended {
    /// The manifest was not newer than the running image.
    Stale,
    /// The report was answered (acknowledged or rejected).
    Reported,
}

/// One simulated device.
pub struct Device {
    idx: usize,
    io: Io,
    cfg: Arc<FleetConfig>,
    stats: Arc<Stats>,
    mid: u16,
    token: u32,
    running_seq: u64,
    /// The last sequence number whose update failed here: a notification of it again
    /// starts nothing (a trigger does).
    failed_seq: Option<u64>,
    fails: bool,
    slot: u8,
    dedup: Dedup,
    pending: Option<Work>,
    observe_token: Option<[u8; 4]>,
    register_at: Instant,
    registered_once: bool,
    out: Vec<u8>,
}

impl Device {
    /// Device `idx` on `sock`; `fails` makes it report failure after downloading.
    pub fn new(idx: usize, sock: UdpSocket, cfg: Arc<FleetConfig>, stats: Arc<Stats>, fails: bool) -> Self {
        let mut rng = Rng::seeded(cfg.seed, idx as u64);
        let mid = rng.next_u64() as u16;
        let token = rng.next_u64() as u32;
        Device {
            idx,
            io: Io {
                sock,
                rng,
                loss: cfg.loss,
                stats: stats.clone(),
            },
            running_seq: cfg.running_seq,
            failed_seq: None,
            cfg,
            stats,
            mid,
            token,
            fails,
            slot: 0,
            dedup: Dedup::default(),
            pending: None,
            observe_token: None,
            register_at: Instant::now(),
            registered_once: false,
            out: Vec::with_capacity(256),
        }
    }

    /// Serve until the task is dropped; returns only on a socket error.
    pub async fn run(mut self) {
        let mut buf = vec![0u8; 2048];
        loop {
            if let Some(w) = self.pending.take() {
                self.update(w, &mut buf).await;
                continue;
            }
            let observing = self.cfg.mode == Mode::Observe;
            if observing && self.observe_token.is_none() && Instant::now() >= self.register_at {
                self.register(&mut buf).await;
                continue;
            }
            let deadline = (observing && self.observe_token.is_none()).then_some(self.register_at);
            match self.io.recv(&mut buf, deadline).await {
                Ok(Some((n, peer))) => {
                    if let Some(m) = coap::parse(&buf[..n]) {
                        if let Err(e) = self.unsolicited(peer, &m).await {
                            self.stats.error(self.idx, &e);
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    self.stats.error(self.idx, &e);
                    return;
                }
            }
        }
    }

    fn next_mid(&mut self) -> u16 {
        self.mid = self.mid.wrapping_add(1);
        self.mid
    }

    fn next_token(&mut self) -> [u8; 4] {
        self.token = self.token.wrapping_add(1);
        self.token.to_be_bytes()
    }

    /// Register the Observe of `<publish-id>/manifest`.
    async fn register(&mut self, buf: &mut [u8]) {
        let first = !self.registered_once;
        self.registered_once = true;
        self.register_inner(buf).await;
        if first {
            inc(&self.stats.observe_first_done);
        }
    }

    async fn register_inner(&mut self, buf: &mut [u8]) {
        // Retried later whatever happens, unless the server accepts it.
        self.register_at = Instant::now() + self.cfg.reregister_after;
        let (Some(server), Some(pid)) = (self.cfg.server, self.cfg.publish_id.clone()) else {
            return;
        };
        let mut path: Vec<&str> = pid.split('/').collect();
        path.push("manifest");
        let token = self.next_token();
        self.observe_token = Some(token);
        let opts = RequestOptions {
            observe: Some(0),
            path: &path,
            block2: Some((0, self.cfg.szx)),
            ..RequestOptions::default()
        };
        match self.exchange(server, coap::GET, &opts, token, buf).await {
            Ok(r) if r.code == coap::CONTENT => {
                if r.observe.is_some() {
                    inc(&self.stats.observe_registered);
                } else {
                    inc(&self.stats.observe_refused);
                    self.observe_token = None;
                }
                self.notified(server, r);
            }
            Ok(r) => {
                self.observe_token = None;
                self.stats.error(
                    self.idx,
                    &format!("observe {}: {}", path.join("/"), coap::code_text(r.code)),
                );
            }
            Err(e) => {
                self.observe_token = None;
                self.stats.error(self.idx, &format!("observe: {e}"));
            }
        }
    }

    /// A manifest (first block) from the observation: an update if it is newer.
    fn notified(&mut self, server: SocketAddr, r: Resp) {
        let more = r.block2.is_some_and(|(_, more, _)| more);
        if !more {
            // Whole: decide now, so duplicates and liveness checks of the running version
            // start nothing.
            match Envelope::decode(&r.payload) {
                Ok(env)
                    if env.manifest().sequence_number <= self.running_seq
                        || Some(env.manifest().sequence_number) == self.failed_seq =>
                {
                    return
                }
                Ok(_) => {}
                Err(e) => {
                    self.stats.error(self.idx, &format!("notified manifest: {e}"));
                    return;
                }
            }
        }
        self.stats.triggered(unix_ms());
        self.pending = Some(Work::Notified {
            server,
            manifest: r.payload,
            more,
            at: Instant::now(),
        });
    }

    /// A datagram that is not the reply awaited: a request of the server (trigger, slot
    /// read), a notification, a ping.
    async fn unsolicited(&mut self, peer: SocketAddr, m: &coap::Reply<'_>) -> Result<(), String> {
        if m.is_request() {
            let is_slot = m.code == coap::GET && m.uri_path == [&b"suit"[..], &b"slot"[..], &b"active"[..]];
            let slot = [b'0' + self.slot];
            if let Some(code) = self.dedup.seen(peer, m.mid) {
                if m.code == coap::POST {
                    inc(&self.stats.duplicate_triggers);
                }
                if m.ty == coap::CON {
                    let payload: &[u8] = if code == coap::CONTENT { &slot } else { &[] };
                    coap::response(&mut self.out, coap::ACK, code, m.mid, m.token, None, payload);
                    self.io.send(peer, &self.out).await?;
                }
                return Ok(());
            }
            let (code, payload): (u8, &[u8]) = if m.code == coap::POST {
                let url = m.payload.split(|b| *b == 0).next().unwrap_or_default();
                match std::str::from_utf8(url).map(str::trim) {
                    Ok(url) if url.starts_with("coap://") => {
                        inc(&self.stats.triggers);
                        self.stats.triggered(unix_ms());
                        // A newer trigger during an update replaces any waiting one.
                        self.pending = Some(Work::Trigger {
                            url: url.to_string(),
                            at: Instant::now(),
                        });
                        (coap::CHANGED, &[])
                    }
                    _ => {
                        inc(&self.stats.bad_triggers);
                        (0x80, b"expected a coap:// manifest URL")
                    }
                }
            } else if is_slot {
                (coap::CONTENT, &slot)
            } else {
                (coap::NOT_FOUND, &[])
            };
            self.dedup.record(peer, m.mid, code);
            if m.ty == coap::CON {
                coap::response(&mut self.out, coap::ACK, code, m.mid, m.token, None, payload);
                self.io.send(peer, &self.out).await?;
            }
        } else if m.is_response() && (m.ty == coap::CON || m.ty == coap::NON) {
            let ours = self.observe_token.is_some_and(|t| t[..] == *m.token);
            if m.ty == coap::CON {
                coap::empty(&mut self.out, if ours { coap::ACK } else { coap::RST }, m.mid);
                self.io.send(peer, &self.out).await?;
                if ours && self.dedup.seen(peer, m.mid).is_some() {
                    // A retransmission whose ACK was lost: acknowledged again, nothing more.
                    return Ok(());
                }
                self.dedup.record(peer, m.mid, 0);
            }
            if ours {
                inc(&self.stats.notifications);
                if m.code == coap::CONTENT {
                    self.notified(peer, Resp::of(m));
                } else {
                    // The observation ended (e.g. 4.04: the versions were removed).
                    inc(&self.stats.observe_refused);
                    self.observe_token = None;
                    self.register_at = Instant::now() + self.cfg.reregister_after;
                }
            }
        } else if m.ty == coap::CON && m.code == 0 {
            // CoAP ping.
            coap::empty(&mut self.out, coap::RST, m.mid);
            self.io.send(peer, &self.out).await?;
        }
        Ok(())
    }

    /// Handle what arrives until `deadline` (a pause that still answers the server).
    async fn pause(&mut self, until: Instant, buf: &mut [u8]) -> Result<(), String> {
        while let Some((n, peer)) = self.io.recv(buf, Some(until)).await? {
            if let Some(m) = coap::parse(&buf[..n]) {
                self.unsolicited(peer, &m).await?;
            }
        }
        Ok(())
    }

    /// One confirmable request: retransmitted with back-off until its ACK (piggybacked, or
    /// empty and then a separate response). `Err` on RST, a timeout or a socket error.
    async fn exchange(
        &mut self,
        dst: SocketAddr,
        code: u8,
        opts: &RequestOptions<'_>,
        token: [u8; 4],
        buf: &mut [u8],
    ) -> Result<Resp, String> {
        let mid = self.next_mid();
        coap::request(&mut self.out, coap::CON, code, mid, &token, opts);
        let request = self.out.clone();
        let mut timeout = self.cfg.ack_timeout.mul_f64(self.io.rng.uniform(1.0, 1.5));
        let mut separate_until = None;
        'attempts: for attempt in 0..=self.cfg.max_retransmit {
            if attempt > 0 {
                inc(&self.stats.retransmissions);
            }
            self.io.send(dst, &request).await?;
            let deadline = Instant::now() + timeout;
            while let Some((n, peer)) = self.io.recv(buf, Some(deadline)).await? {
                let Some(m) = coap::parse(&buf[..n]) else { continue };
                if peer == dst && m.mid == mid && m.ty == coap::ACK {
                    if m.code == 0 {
                        separate_until = Some(Instant::now() + self.cfg.separate_timeout);
                        break 'attempts;
                    }
                    if m.token == token {
                        return Ok(Resp::of(&m));
                    }
                    continue;
                }
                if peer == dst && m.mid == mid && m.ty == coap::RST {
                    return Err("reset by the server".into());
                }
                if peer == dst && m.is_response() && m.token == token {
                    // A separate response whose empty ACK was lost.
                    if m.ty == coap::CON {
                        coap::empty(&mut self.out, coap::ACK, m.mid);
                        self.io.send(peer, &self.out).await?;
                    }
                    return Ok(Resp::of(&m));
                }
                self.unsolicited(peer, &m).await?;
            }
            timeout *= 2;
        }
        let Some(until) = separate_until else {
            inc(&self.stats.exchange_timeouts);
            return Err(format!(
                "no answer from {dst} after {} transmissions",
                self.cfg.max_retransmit + 1
            ));
        };
        while let Some((n, peer)) = self.io.recv(buf, Some(until)).await? {
            let Some(m) = coap::parse(&buf[..n]) else { continue };
            if peer == dst && m.is_response() && m.token == token && m.ty != coap::ACK {
                if m.ty == coap::CON {
                    coap::empty(&mut self.out, coap::ACK, m.mid);
                    self.io.send(peer, &self.out).await?;
                }
                return Ok(Resp::of(&m));
            }
            self.unsolicited(peer, &m).await?;
        }
        inc(&self.stats.exchange_timeouts);
        Err(format!("no separate response from {dst}"))
    }

    /// [`Self::exchange`] tried again as a new exchange after a timeout, `exchange_attempts`
    /// times in all.
    async fn request(
        &mut self,
        dst: SocketAddr,
        code: u8,
        opts: &RequestOptions<'_>,
        buf: &mut [u8],
    ) -> Result<Resp, String> {
        let mut last = String::new();
        for _ in 0..self.cfg.exchange_attempts.max(1) {
            let token = self.next_token();
            match self.exchange(dst, code, opts, token, buf).await {
                Ok(r) => return Ok(r),
                Err(e) if e.starts_with("no ") => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// GET `path` block-wise from `dst`, handing each block's payload to `sink`; the bytes.
    async fn fetch(
        &mut self,
        dst: SocketAddr,
        path: &[String],
        sink: &mut (dyn FnMut(&[u8]) + Send),
        buf: &mut [u8],
    ) -> Result<u64, String> {
        let segs: Vec<&str> = path.iter().map(String::as_str).collect();
        let mut szx = self.cfg.szx;
        let mut num = 0u32;
        let mut etag: Option<Vec<u8>> = None;
        let mut total = 0u64;
        loop {
            let opts = RequestOptions {
                path: &segs,
                block2: Some((num, szx)),
                ..RequestOptions::default()
            };
            let r = self.request(dst, coap::GET, &opts, buf).await?;
            let what = || format!("GET {} block {num}", segs.join("/"));
            if r.code != coap::CONTENT {
                let diag = String::from_utf8_lossy(&r.payload[..r.payload.len().min(80)]).into_owned();
                return Err(format!("{}: {} {diag}", what(), coap::code_text(r.code)));
            }
            let (rnum, more, rszx) = match r.block2 {
                Some(b) => b,
                None if num == 0 => (0, false, szx),
                None => return Err(format!("{}: no Block2 in the reply", what())),
            };
            if rnum != num {
                return Err(format!("{}: the reply is block {rnum}", what()));
            }
            match (&etag, r.etag) {
                (None, e) => etag = e,
                (Some(a), Some(b)) if *a == b => {}
                (Some(_), _) => return Err(format!("{}: ETag changed", what())),
            }
            sink(&r.payload);
            total += r.payload.len() as u64;
            if !more {
                return Ok(total);
            }
            if r.payload.len() != 16usize << rszx {
                return Err(format!("{}: a middle block of {} bytes", what(), r.payload.len()));
            }
            // The server may answer with smaller blocks than asked (RFC 7959 §2.4): go on
            // at its size.
            szx = szx.min(rszx);
            num = u32::try_from(total >> (4 + szx)).map_err(|_| format!("{}: too many blocks", what()))?;
        }
    }

    async fn update(&mut self, w: Work, buf: &mut [u8]) {
        inc(&self.stats.busy);
        match self.try_update(w, buf).await {
            Ok(Ended::Reported) => {}
            Ok(Ended::Stale) => inc(&self.stats.stale_manifests),
            Err(e) => {
                inc(&self.stats.update_errors);
                self.stats.error(self.idx, &e);
            }
        }
        self.stats.busy.fetch_sub(1, Relaxed);
    }

    async fn try_update(&mut self, w: Work, buf: &mut [u8]) -> Result<Ended, String> {
        let (server, manifest, pid, at) = match w {
            Work::Trigger { url, at } => {
                let (host, port, path) = parse_coap_url(&url)?;
                let server = resolve(&host, port).await?;
                let mut manifest = Vec::new();
                self.fetch(server, &path, &mut |b| manifest.extend_from_slice(b), buf)
                    .await?;
                let pid = self
                    .cfg
                    .publish_id
                    .clone()
                    .or_else(|| publish_id_of(&path))
                    .ok_or_else(|| format!("no publish-id in {url:?} (give --publish-id)"))?;
                (server, manifest, pid, at)
            }
            Work::Notified {
                server,
                mut manifest,
                more,
                at,
            } => {
                let pid = self.cfg.publish_id.clone().ok_or("observe needs a publish-id")?;
                if more {
                    let mut path: Vec<String> = pid.split('/').map(str::to_string).collect();
                    path.push("manifest".into());
                    manifest.clear();
                    self.fetch(server, &path, &mut |b| manifest.extend_from_slice(b), buf)
                        .await?;
                }
                (server, manifest, pid, at)
            }
        };
        let env = Envelope::decode(&manifest).map_err(|e| format!("manifest: {e}"))?;
        let seq = env.manifest().sequence_number;
        if seq <= self.running_seq {
            return Ok(Ended::Stale);
        }
        inc(&self.stats.updates_started);
        let params = env.manifest().component_parameters();
        let (uri, digest) = params
            .iter()
            .find_map(|(_, p)| match (p.get(param::URI), p.get(param::IMAGE_DIGEST)) {
                (Some(ParamValue::Text(u)), Some(ParamValue::Digest(d))) => Some((u.clone(), d.clone())),
                _ => None,
            })
            .ok_or("the manifest names no image URI with a digest")?;
        if digest.algorithm != env.profile().sha256_id() {
            return Err(format!("image digest algorithm {} is not SHA-256", digest.algorithm));
        }
        let (host, port, path) = parse_coap_url(&uri)?;
        let image_server = resolve(&host, port).await?;
        let mut hasher = Sha256::new();
        let bytes = self.fetch(image_server, &path, &mut |b| hasher.update(b), buf).await?;
        self.stats.image_bytes.fetch_add(bytes, Relaxed);
        let digest_ok = hasher.finalize()[..] == digest.bytes[..];
        let (ok, reason) = if !digest_ok {
            inc(&self.stats.digest_mismatches);
            (false, "image digest mismatch")
        } else {
            inc(&self.stats.downloads_completed);
            if self.fails {
                (false, "simulated failure")
            } else {
                (true, "")
            }
        };
        let report = if ok {
            serde_json::json!({"seq": seq, "result": "ok"})
        } else {
            inc(&self.stats.failures_reported);
            serde_json::json!({"seq": seq, "result": "error", "reason": reason})
        };
        if ok {
            // Installed: the device now runs it from the other slot.
            self.running_seq = seq;
            self.slot ^= 1;
        } else {
            self.failed_seq = Some(seq);
        }
        let body = report.to_string();
        let report_to = self.cfg.server.unwrap_or(server);
        let mut path: Vec<&str> = pid.split('/').collect();
        path.push("report");
        let opts = RequestOptions {
            path: &path,
            content_format: Some(50),
            payload: body.as_bytes(),
            ..RequestOptions::default()
        };
        let mut tries = 0;
        let mut busy = 0u32;
        let give_up = Instant::now() + REPORT_BUSY_FOR;
        loop {
            tries += 1;
            let r = match self.request(report_to, coap::POST, &opts, buf).await {
                Ok(r) => r,
                Err(_) if tries < 5 => {
                    inc(&self.stats.report_retries);
                    continue;
                }
                Err(e) => return Err(format!("report: {e}")),
            };
            match r.code >> 5 {
                2 => {
                    inc(&self.stats.reports_acked);
                    let now = unix_ms();
                    self.stats.last_report_ms.fetch_max(now, Relaxed);
                    self.stats
                        .latencies_ms
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(at.elapsed().as_millis() as u64);
                    return Ok(Ended::Reported);
                }
                5 if Instant::now() < give_up => {
                    // 5.03 (the server's fleet is busy): again later, 0.5 s doubled up to
                    // 4 s, with jitter.
                    inc(&self.stats.reports_unavailable);
                    inc(&self.stats.report_retries);
                    let wait = Duration::from_millis(500 << busy.min(3)).mul_f64(self.io.rng.uniform(1.0, 1.5));
                    busy += 1;
                    self.pause(Instant::now() + wait, buf).await?;
                }
                _ => {
                    inc(&self.stats.reports_rejected);
                    let diag = String::from_utf8_lossy(&r.payload[..r.payload.len().min(120)]).into_owned();
                    return Err(format!("report answered {} {diag}", coap::code_text(r.code)));
                }
            }
        }
    }
}

/// How long a device keeps sending a report the server answers 5.xx.
const REPORT_BUSY_FOR: Duration = Duration::from_secs(300);

/// Bind device `i`'s socket.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    UdpSocket::bind(addr).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            " (another --base-port?)"
        } else if e.raw_os_error() == Some(24) {
            " (raise `ulimit -n`)"
        } else if e.kind() == std::io::ErrorKind::AddrNotAvailable {
            " (--bind-ip must be a local address; all of 127.0.0.0/8 is on Linux)"
        } else {
            ""
        };
        anyhow::anyhow!("binding {addr}: {e}{hint}")
    })
}

/// The device records `POST /api/v1/devices` takes.
pub struct Registration<'a> {
    /// Device ids are `prefix` + index.
    pub prefix: &'a str,
    /// The publish-id they follow.
    pub publish_id: &'a str,
    /// Device i is in group `g<i % groups>` (none when 0).
    pub groups: usize,
    /// Their class, if any.
    pub class: Option<&'a str>,
    /// The sequence number they run.
    pub running_seq: u64,
}

impl Registration<'_> {
    /// Device `i` at `addr` as JSON.
    pub fn device(&self, i: usize, addr: SocketAddr) -> serde_json::Value {
        let mut d = serde_json::json!({
            "id": format!("{}{i}", self.prefix),
            "coap": addr.to_string(),
            "publish_id": self.publish_id,
            "groups": if self.groups > 0 { vec![format!("g{}", i % self.groups)] } else { vec![] },
            "running_seq": self.running_seq,
        });
        if let (Some(class), Some(o)) = (self.class, d.as_object_mut()) {
            o.insert("class".into(), class.into());
        }
        d
    }
}

/// Register `addrs` (device i at `addrs[i]`) with a server's `POST /api/v1/devices`
/// (`?replace=true`, so a second run updates them) in batches of `batch`.
pub async fn register(
    base_url: &str,
    token: &str,
    reg: &Registration<'_>,
    addrs: &[SocketAddr],
    batch: usize,
) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let url = format!("{}/api/v1/devices?replace=true", base_url.trim_end_matches('/'));
    for (chunk_no, chunk) in addrs.chunks(batch.clamp(1, 10_000)).enumerate() {
        let first = chunk_no * batch.clamp(1, 10_000);
        let body: Vec<serde_json::Value> = chunk
            .iter()
            .enumerate()
            .map(|(k, a)| reg.device(first + k, *a))
            .collect();
        let resp = client
            .post(&url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body)?)
            .send()
            .await?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            anyhow::bail!("POST {url}: {status}: {}", text.chars().take(300).collect::<String>());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_devices_are_an_exact_repeatable_share() {
        let a = failing_devices(1000, 0.2, 7);
        assert_eq!(a.iter().filter(|f| **f).count(), 200);
        assert_eq!(a, failing_devices(1000, 0.2, 7));
        assert_ne!(a, failing_devices(1000, 0.2, 8));
        assert!(failing_devices(10, 0.0, 1).iter().all(|f| !f));
        assert!(failing_devices(10, 1.0, 1).iter().all(|f| *f));
    }

    #[test]
    fn duplicates_are_recognised_by_peer_and_mid() {
        let p: SocketAddr = "127.0.0.1:5683".parse().unwrap();
        let q: SocketAddr = "127.0.0.1:5684".parse().unwrap();
        let mut d = Dedup::default();
        assert_eq!(d.seen(p, 1), None);
        d.record(p, 1, coap::CHANGED);
        assert_eq!(d.seen(p, 1), Some(coap::CHANGED));
        assert_eq!(d.seen(q, 1), None, "another peer's MID 1 is another request");
        for mid in 2..2 + DEDUP_ENTRIES as u16 {
            d.record(p, mid, coap::CONTENT);
        }
        assert_eq!(d.seen(p, 1), None, "the oldest entry goes first");
    }

    #[test]
    fn urls_and_publish_ids() {
        let (h, port, path) = parse_coap_url("coap://127.0.0.1:15683/sim/v/2/manifest.2.suit").unwrap();
        assert_eq!((h.as_str(), port), ("127.0.0.1", 15683));
        assert_eq!(publish_id_of(&path).as_deref(), Some("sim"));
        let (h, port, path) = parse_coap_url("coap://[::1]/fw/app/board/riot.suit.7.bin").unwrap();
        assert_eq!((h.as_str(), port), ("::1", 5683));
        assert_eq!(publish_id_of(&path).as_deref(), Some("fw/app/board"));
        let (_, _, path) = parse_coap_url("coap://h:1/a/b/manifest?x").unwrap();
        assert_eq!(publish_id_of(&path).as_deref(), Some("a/b"));
        assert!(parse_coap_url("http://h/x").is_err());
        assert!(parse_coap_url("coap://:5/x").is_err());
        assert_eq!(publish_id_of(&["fw.bin".to_string()]), None);
    }

    #[test]
    fn device_addresses_spread_over_ips() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            device_addr(ip, 0, 20000, 9).unwrap(),
            "127.0.0.1:20009".parse().unwrap()
        );
        assert_eq!(
            device_addr(ip, 8, 20000, 9).unwrap(),
            "127.0.0.2:20009".parse().unwrap()
        );
        assert_eq!(
            device_addr(ip, 8, 20000, 2047).unwrap(),
            "127.0.1.0:22047".parse().unwrap()
        );
        assert!(device_addr(ip, 0, 65000, 1000).is_err());
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[7], 0.01), Some(7));
    }
}
