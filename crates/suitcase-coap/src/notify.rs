//! The notify client: a confirmable CoAP POST of a manifest URL to
//! `coap://<device>/suit/trigger` (RIOT's contract: the device answers 2.01 and starts the
//! update), retransmitted per RFC 7252 §4.2, with a result per device.
//!
//! [`Exchange`] is the sans-IO state machine of one request; [`Notifier`] drives many over
//! tokio from one shared UDP socket per address family, demultiplexing replies by (peer,
//! message id) for ACK/RST and (peer, token) for separate responses, with a global bound on
//! the exchanges in flight across all callers (more wait their turn). So a notify of any
//! number of devices costs the process two file descriptors, not one per device.
//!
//! The payload is the URL, followed by one NUL byte when [`TriggerNul`] says so (by default
//! for the path `suit/trigger`): every RIOT since 2025.01 measures the URL with `strlen()` on
//! its packet buffer, so without the NUL it picks up stale bytes after the URL and fails
//! with `error getting manifest`; a NUL after the URL is harmless to it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};

/// Retransmission settings (RFC 7252 §4.8 defaults).
#[derive(Clone, Debug)]
pub struct NotifyConfig {
    /// ACK_TIMEOUT.
    pub ack_timeout: Duration,
    /// ACK_RANDOM_FACTOR.
    pub ack_random_factor: f64,
    /// MAX_RETRANSMIT.
    pub max_retransmit: u32,
    /// How long to wait for a separate response after an empty ACK.
    pub separate_timeout: Duration,
    /// Whether the payload ends in a NUL byte (see [`TriggerNul`]).
    pub trigger_nul: TriggerNul,
}

/// When a trigger's payload (the manifest URL) is followed by one NUL byte.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TriggerNul {
    /// Never: the payload is exactly the URL.
    Never,
    /// For the path `suit/trigger` (RIOT's contract): stock RIOT since 2025.01 reads the
    /// payload with `strlen()` and needs it. The default.
    #[default]
    SuitTrigger,
    /// For every path.
    Always,
}

impl TriggerNul {
    /// The names, as on the command line.
    pub const NAMES: &'static str = "never, suit-trigger or always";

    /// Whether a trigger to `path` gets the NUL.
    pub fn applies(self, path: &[String]) -> bool {
        match self {
            TriggerNul::Never => false,
            TriggerNul::SuitTrigger => path.len() == 2 && path[0] == "suit" && path[1] == "trigger",
            TriggerNul::Always => true,
        }
    }

    /// The name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            TriggerNul::Never => "never",
            TriggerNul::SuitTrigger => "suit-trigger",
            TriggerNul::Always => "always",
        }
    }
}

impl std::str::FromStr for TriggerNul {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "never" => Ok(TriggerNul::Never),
            "suit-trigger" => Ok(TriggerNul::SuitTrigger),
            "always" => Ok(TriggerNul::Always),
            other => Err(format!("trigger NUL {other:?}: {}", TriggerNul::NAMES)),
        }
    }
}

impl std::fmt::Display for TriggerNul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The payload of a trigger of `url` to `path`: the URL, and one NUL when `nul` applies.
pub fn trigger_payload(url: &str, path: &[String], nul: TriggerNul) -> Vec<u8> {
    let mut p = url.as_bytes().to_vec();
    if nul.applies(path) {
        p.push(0);
    }
    p
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            ack_timeout: Duration::from_secs(2),
            ack_random_factor: 1.5,
            max_retransmit: 4,
            separate_timeout: Duration::from_secs(30),
            trigger_nul: TriggerNul::default(),
        }
    }
}

/// How one exchange ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The device answered with this code (e.g. 2.01, 4.08, 4.13).
    Response {
        /// Code byte (class << 5 | detail).
        code: u8,
        /// Diagnostic payload, if any.
        payload: Vec<u8>,
    },
    /// The device answered with RST (it does not know the request).
    Reset,
    /// No answer after all retransmissions.
    Timeout,
}

impl Outcome {
    /// `"2.01"` style code text, if a response came.
    pub fn code_text(&self) -> Option<String> {
        match self {
            Outcome::Response { code, .. } => Some(format!("{}.{:02}", code >> 5, code & 0x1f)),
            _ => None,
        }
    }
    /// A 2.xx response.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Response { code, .. } if code >> 5 == 2)
    }
}

#[derive(Debug)]
enum State {
    /// Waiting for ACK (or a piggybacked response); `attempts` transmissions so far.
    AwaitAck {
        attempts: u32,
        timeout: Duration,
        due: Instant,
    },
    /// Empty ACK received; waiting for the separate response.
    AwaitResponse {
        due: Instant,
    },
    Done(Outcome),
}

/// One confirmable request, sans-IO.
#[derive(Debug)]
pub struct Exchange {
    request: Vec<u8>,
    mid: u16,
    token: Vec<u8>,
    state: State,
    config: NotifyConfig,
    transmit: Option<Vec<u8>>,
}

/// Build a CON POST with the Uri-Path `path` and a text payload.
pub fn post_request(mid: u16, token: &[u8], path: &[&str], payload: &[u8]) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_type(MessageType::Confirmable);
    p.header.code = MessageClass::Request(RequestType::Post);
    p.header.message_id = mid;
    p.set_token(token.to_vec());
    for seg in path {
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    // Content-Format: text/plain;charset=utf-8 (0), the empty uint.
    p.add_option(CoapOption::ContentFormat, Vec::new());
    p.payload = payload.to_vec();
    p.to_bytes_unlimited().unwrap_or_default()
}

impl Exchange {
    /// Start an exchange; `jitter` in [0, 1) picks the initial timeout within
    /// [ACK_TIMEOUT, ACK_TIMEOUT × ACK_RANDOM_FACTOR].
    pub fn new(
        config: NotifyConfig,
        mid: u16,
        token: Vec<u8>,
        path: &[&str],
        payload: &[u8],
        now: Instant,
        jitter: f64,
    ) -> Self {
        let request = post_request(mid, &token, path, payload);
        let timeout = config
            .ack_timeout
            .mul_f64(1.0 + (config.ack_random_factor - 1.0) * jitter.clamp(0.0, 1.0));
        Exchange {
            transmit: Some(request.clone()),
            request,
            mid,
            token,
            state: State::AwaitAck {
                attempts: 1,
                timeout,
                due: now + timeout,
            },
            config,
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.take()
    }

    /// When [`Exchange::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::AwaitAck { due, .. } | State::AwaitResponse { due } => Some(*due),
            State::Done(_) => None,
        }
    }

    /// The result, once there is one.
    pub fn outcome(&self) -> Option<&Outcome> {
        match &self.state {
            State::Done(o) => Some(o),
            _ => None,
        }
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.state {
            State::AwaitAck { attempts, timeout, due } if now >= *due => {
                if *attempts > self.config.max_retransmit {
                    self.state = State::Done(Outcome::Timeout);
                } else {
                    *attempts += 1;
                    *timeout *= 2;
                    *due = now + *timeout;
                    self.transmit = Some(self.request.clone());
                }
            }
            State::AwaitResponse { due } if now >= *due => self.state = State::Done(Outcome::Timeout),
            _ => {}
        }
    }

    /// A datagram from the device.
    pub fn handle_datagram(&mut self, data: &[u8]) {
        let Ok(p) = Packet::from_bytes(data) else { return };
        let ty = p.header.get_type();
        let is_response = matches!(p.header.code, MessageClass::Response(_));
        let code = u8::from(p.header.code);
        match (&self.state, ty) {
            (State::AwaitAck { .. }, MessageType::Reset) if p.header.message_id == self.mid => {
                self.state = State::Done(Outcome::Reset)
            }
            (State::AwaitAck { .. }, MessageType::Acknowledgement) if p.header.message_id == self.mid => {
                if is_response && p.get_token() == self.token.as_slice() {
                    self.state = State::Done(Outcome::Response {
                        code,
                        payload: p.payload,
                    });
                } else if p.header.code == MessageClass::Empty {
                    self.state = State::AwaitResponse {
                        due: Instant::now() + self.config.separate_timeout,
                    };
                }
            }
            (
                State::AwaitAck { .. } | State::AwaitResponse { .. },
                MessageType::Confirmable | MessageType::NonConfirmable,
            ) if is_response && p.get_token() == self.token.as_slice() => {
                if ty == MessageType::Confirmable {
                    let [a, b] = p.header.message_id.to_be_bytes();
                    self.transmit = Some(vec![0x60, 0, a, b]);
                }
                self.state = State::Done(Outcome::Response {
                    code,
                    payload: p.payload,
                });
            }
            (State::Done(_), MessageType::Confirmable) => {
                // A retransmitted separate response: acknowledge it again.
                let [a, b] = p.header.message_id.to_be_bytes();
                self.transmit = Some(vec![0x60, 0, a, b]);
            }
            _ => {}
        }
    }
}

/// A device to notify, as the user wrote it: `[2001:db8::1]`, `[fe80::1%tap0]:5683`,
/// `10.0.0.7`, `node.local:5684`, optionally with `coap://` and a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Host as written (brackets removed).
    pub host: String,
    /// UDP port.
    pub port: u16,
    /// Uri-Path segments (default `suit/trigger`).
    pub path: Vec<String>,
}

/// Why a target string is not usable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("device address {0:?}: {1}")]
pub struct TargetError(pub String, pub &'static str);

impl Target {
    /// Parse a device address.
    pub fn parse(s: &str) -> Result<Self, TargetError> {
        let bad = |why| TargetError(s.to_string(), why);
        let t = s.trim();
        let t = t.strip_prefix("coap://").unwrap_or(t);
        if t.is_empty() || t.contains("://") {
            return Err(bad("expected host, [ipv6] or coap://host[:port][/path]"));
        }
        let (authority, path) = match t.find('/') {
            Some(i) => (&t[..i], &t[i + 1..]),
            None => (t, ""),
        };
        let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
            let end = rest.find(']').ok_or_else(|| bad("unclosed '['"))?;
            let host = &rest[..end];
            let after = &rest[end + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad("bad port"))?,
                None if after.is_empty() => 5683,
                None => return Err(bad("junk after ']'")),
            };
            (host.to_string(), port)
        } else if authority.matches(':').count() > 1 {
            // A bare IPv6 address without brackets.
            (authority.to_string(), 5683)
        } else if let Some((h, p)) = authority.split_once(':') {
            (h.to_string(), p.parse().map_err(|_| bad("bad port"))?)
        } else {
            (authority.to_string(), 5683)
        };
        if host.is_empty() || host.len() > 255 || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("bad host"));
        }
        // Empty segments are dropped; no segment at all (``, `/`, `//`) means the default.
        let mut path: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(str::to_string).collect();
        if path.is_empty() {
            path = vec!["suit".into(), "trigger".into()];
        }
        Ok(Target { host, port, path })
    }
}

/// The result for one device.
#[derive(Clone, Debug)]
pub struct NotifyResult {
    /// The device as given.
    pub device: String,
    /// The address it resolved to.
    pub address: Option<SocketAddr>,
    /// How it ended; `Err` for address or socket problems.
    pub outcome: Result<Outcome, String>,
    /// Transmissions made.
    pub transmissions: u32,
    /// Time until the outcome.
    pub elapsed: Duration,
}

/// Exchanges in flight across every caller of one [`Notifier`], by default.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// Which exchange a reply belongs to.
#[derive(Default)]
struct Routes {
    by_mid: HashMap<(SocketAddr, u16), u64>,
    by_token: HashMap<(SocketAddr, [u8; 8]), u64>,
    inboxes: HashMap<u64, tokio::sync::mpsc::Sender<Vec<u8>>>,
}

/// One shared socket and the exchanges waiting on it.
struct Endpoint {
    socket: tokio::net::UdpSocket,
    routes: Mutex<Routes>,
    next_mid: AtomicU16,
    next_id: AtomicU64,
}

/// An exchange's place in the routes; removed on drop.
struct Route {
    endpoint: Arc<Endpoint>,
    id: u64,
    peer: SocketAddr,
    mid: u16,
    token: [u8; 8],
}

impl Drop for Route {
    fn drop(&mut self) {
        if let Ok(mut r) = self.endpoint.routes.lock() {
            r.by_mid.remove(&(self.peer, self.mid));
            r.by_token.remove(&(self.peer, self.token));
            r.inboxes.remove(&self.id);
        }
    }
}

impl Endpoint {
    async fn bind(v6: bool) -> std::io::Result<Arc<Self>> {
        let addr: SocketAddr = if v6 {
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
        };
        let socket = tokio::net::UdpSocket::bind(addr).await?;
        Ok(Arc::new(Endpoint {
            socket,
            routes: Mutex::new(Routes::default()),
            next_mid: AtomicU16::new(random_seed(addr) as u16),
            next_id: AtomicU64::new(0),
        }))
    }

    /// Register an exchange with `peer`: a message id not in use with that peer and a fresh
    /// token; its replies arrive on the receiver.
    fn register(self: &Arc<Self>, peer: SocketAddr) -> Result<(Route, tokio::sync::mpsc::Receiver<Vec<u8>>), String> {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let mut r = self.routes.lock().map_err(|_| "notify routes poisoned".to_string())?;
        let mid = (0..=u16::MAX)
            .map(|_| self.next_mid.fetch_add(1, Ordering::Relaxed))
            .find(|m| !r.by_mid.contains_key(&(peer, *m)))
            .ok_or_else(|| format!("{peer}: every message id is in use"))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut token = random_seed(peer).wrapping_add(id).to_be_bytes();
        while r.by_token.contains_key(&(peer, token)) {
            token = random_seed(peer).to_be_bytes();
        }
        r.by_mid.insert((peer, mid), id);
        r.by_token.insert((peer, token), id);
        r.inboxes.insert(id, tx);
        let route = Route {
            endpoint: self.clone(),
            id,
            peer,
            mid,
            token,
        };
        Ok((route, rx))
    }

    /// Receive forever, handing each datagram to the exchange it belongs to.
    async fn receive(self: Arc<Self>) {
        let mut buf = vec![0u8; 1500];
        loop {
            let (n, peer) = match self.socket.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "notify socket receive error");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let d = &buf[..n];
            if d.len() < 4 || d[0] >> 6 != 1 {
                continue;
            }
            let (ty, tkl) = ((d[0] >> 4) & 3, usize::from(d[0] & 0x0f));
            let mid = u16::from_be_bytes([d[2], d[3]]);
            let inbox = {
                let Ok(r) = self.routes.lock() else { return };
                let id = if ty >= 2 {
                    // ACK or RST: matched by message id.
                    r.by_mid.get(&(peer, mid))
                } else {
                    // A separate response (CON/NON): matched by token.
                    d.get(4..4 + tkl)
                        .and_then(|t| <[u8; 8]>::try_from(t).ok())
                        .and_then(|t| r.by_token.get(&(peer, t)))
                };
                id.and_then(|id| r.inboxes.get(id)).cloned()
            };
            if let Some(tx) = inbox {
                let _ = tx.try_send(d.to_vec());
            }
        }
    }
}

/// The trigger sender: one UDP socket per address family, bound on first use and shared by
/// every exchange, and at most `max_in_flight` exchanges at once across all callers (the
/// others wait for a slot before their first transmission).
pub struct Notifier {
    config: NotifyConfig,
    permits: tokio::sync::Semaphore,
    endpoints: tokio::sync::Mutex<[Option<Arc<Endpoint>>; 2]>,
    receivers: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Drop for Notifier {
    fn drop(&mut self) {
        if let Ok(r) = self.receivers.lock() {
            r.iter().for_each(tokio::task::AbortHandle::abort);
        }
    }
}

impl Notifier {
    /// A notifier with these retransmission settings and bound.
    pub fn new(config: NotifyConfig, max_in_flight: usize) -> Self {
        Notifier {
            config,
            permits: tokio::sync::Semaphore::new(max_in_flight.max(1)),
            endpoints: tokio::sync::Mutex::new([None, None]),
            receivers: Mutex::new(Vec::new()),
        }
    }

    async fn endpoint(&self, v6: bool) -> Result<Arc<Endpoint>, String> {
        let mut eps = self.endpoints.lock().await;
        let slot = &mut eps[usize::from(v6)];
        if let Some(e) = slot {
            return Ok(e.clone());
        }
        let e = Endpoint::bind(v6).await.map_err(|e| format!("socket: {e}"))?;
        let task = tokio::spawn(e.clone().receive());
        if let Ok(mut r) = self.receivers.lock() {
            r.push(task.abort_handle());
        }
        *slot = Some(e.clone());
        Ok(e)
    }

    /// Notify one device (waits for a slot first); the NUL as configured.
    pub async fn notify(&self, device: &str, payload: &str) -> NotifyResult {
        self.notify_with(device, payload, self.config.trigger_nul).await
    }

    /// Notify one device, with or without the NUL after the URL as `nul` says.
    pub async fn notify_with(&self, device: &str, payload: &str, nul: TriggerNul) -> NotifyResult {
        let mut result = NotifyResult {
            device: device.to_string(),
            address: None,
            outcome: Err(String::new()),
            transmissions: 0,
            elapsed: Duration::ZERO,
        };
        let Ok(_permit) = self.permits.acquire().await else {
            result.outcome = Err("notifier closed".into());
            return result;
        };
        let start = Instant::now();
        result.outcome = self.run(device, payload, nul, &mut result).await;
        result.elapsed = start.elapsed();
        tracing::info!(
            target: "suitcase::audit",
            action = "notify",
            device,
            address = ?result.address,
            outcome = ?result.outcome,
            transmissions = result.transmissions,
        );
        result
    }

    async fn run(
        &self,
        device: &str,
        url: &str,
        nul: TriggerNul,
        result: &mut NotifyResult,
    ) -> Result<Outcome, String> {
        let target = Target::parse(device).map_err(|e| e.to_string())?;
        let addr = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
            .next()
            .ok_or_else(|| format!("{} resolves to nothing", target.host))?;
        result.address = Some(addr);
        let endpoint = self.endpoint(addr.is_ipv6()).await?;
        let (route, mut inbox) = endpoint.register(addr)?;
        let seed = random_seed(addr);
        let path: Vec<&str> = target.path.iter().map(String::as_str).collect();
        let jitter = (seed >> 11) as f64 / (1u64 << 53) as f64;
        let payload = trigger_payload(url, &target.path, nul);
        let mut ex = Exchange::new(
            self.config.clone(),
            route.mid,
            route.token.to_vec(),
            &path,
            &payload,
            Instant::now(),
            jitter,
        );
        loop {
            while let Some(d) = ex.poll_transmit() {
                if d.len() > 4 || d[1] != 0 {
                    result.transmissions += 1;
                }
                // A send error (no route, ICMP) is retried like a loss.
                let _ = endpoint.socket.send_to(&d, addr).await;
            }
            if let Some(o) = ex.outcome() {
                return Ok(o.clone());
            }
            let due = ex.poll_timeout().unwrap_or_else(Instant::now);
            tokio::select! {
                d = inbox.recv() => match d {
                    Some(d) => ex.handle_datagram(&d),
                    None => return Err("notify socket closed".into()),
                },
                () = tokio::time::sleep_until(due.into()) => ex.handle_timeout(Instant::now()),
            }
        }
    }

    /// Notify every device concurrently (within the bound); results in the order given.
    pub async fn notify_all(self: &Arc<Self>, devices: &[String], payload: &str) -> Vec<NotifyResult> {
        self.notify_all_with(devices, payload, None).await
    }

    /// [`Notifier::notify_all`], with the NUL after the URL as `nul` says (`None`: as
    /// configured).
    pub async fn notify_all_with(
        self: &Arc<Self>,
        devices: &[String],
        payload: &str,
        nul: Option<TriggerNul>,
    ) -> Vec<NotifyResult> {
        let nul = nul.unwrap_or(self.config.trigger_nul);
        let mut set = tokio::task::JoinSet::new();
        for (i, d) in devices.iter().enumerate() {
            let (this, d, payload) = (self.clone(), d.clone(), payload.to_string());
            set.spawn(async move { (i, this.notify_with(&d, &payload, nul).await) });
        }
        let mut out: Vec<Option<NotifyResult>> = vec![None; devices.len()];
        while let Some(r) = set.join_next().await {
            if let Ok((i, res)) = r {
                out[i] = Some(res);
            }
        }
        out.into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.unwrap_or_else(|| NotifyResult {
                    device: devices[i].clone(),
                    address: None,
                    outcome: Err("notify task failed".into()),
                    transmissions: 0,
                    elapsed: Duration::ZERO,
                })
            })
            .collect()
    }
}

/// Notify one device from a notifier of its own.
pub async fn notify(device: &str, payload: &str, config: &NotifyConfig) -> NotifyResult {
    Notifier::new(config.clone(), 1).notify(device, payload).await
}

/// Message IDs and tokens must not be guessable by an off-path attacker (RFC 7252 §5.3.1):
/// from the operating system's random source, or, if that fails, a per-process random hash.
fn random_seed(addr: SocketAddr) -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_ok() {
        return u64::from_be_bytes(b);
    }
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(addr.to_string().as_bytes());
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

/// Notify every device concurrently from a notifier of its own (bounded by
/// [`DEFAULT_MAX_IN_FLIGHT`]); results in the order given.
pub async fn notify_all(devices: &[String], payload: &str, config: &NotifyConfig) -> Vec<NotifyResult> {
    Arc::new(Notifier::new(config.clone(), DEFAULT_MAX_IN_FLIGHT))
        .notify_all(devices, payload)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = |s: &str| Target::parse(s).map(|t| (t.host, t.port, t.path.join("/")));
        assert_eq!(
            t("[2001:db8::1]"),
            Ok(("2001:db8::1".into(), 5683, "suit/trigger".into()))
        );
        assert_eq!(
            t("[fe80::1%tap0]:5684"),
            Ok(("fe80::1%tap0".into(), 5684, "suit/trigger".into()))
        );
        assert_eq!(t("10.0.0.7"), Ok(("10.0.0.7".into(), 5683, "suit/trigger".into())));
        assert_eq!(
            t("coap://node.local:99/x/y"),
            Ok(("node.local".into(), 99, "x/y".into()))
        );
        assert_eq!(
            t("2001:db8::2"),
            Ok(("2001:db8::2".into(), 5683, "suit/trigger".into()))
        );
        // Found by the `paths` fuzz target: a path of only slashes left no segment at all.
        assert_eq!(t("0.//"), Ok(("0.".into(), 5683, "suit/trigger".into())));
        for bad in ["", "[::1", "[::1]x", "h:port", "http://x", "a b"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_trigger_payload_ends_in_one_nul_for_suit_trigger_by_default() {
        let path = |s: &str| Target::parse(s).unwrap().path;
        let url = "coap://[2001:db8::1]/fw/a/riot.suit.latest.bin";
        let d = TriggerNul::default();
        let mut with_nul = url.as_bytes().to_vec();
        with_nul.push(0);
        assert_eq!(trigger_payload(url, &path("[::1]"), d), with_nul);
        assert_eq!(trigger_payload(url, &path("coap://[::1]/suit/trigger"), d), with_nul);
        assert_eq!(
            trigger_payload(url, &path("coap://[::1]/other/path"), d),
            url.as_bytes()
        );
        assert_eq!(trigger_payload(url, &path("[::1]"), TriggerNul::Never), url.as_bytes());
        assert_eq!(
            trigger_payload(url, &path("coap://[::1]/x"), TriggerNul::Always),
            with_nul
        );
        for n in [TriggerNul::Never, TriggerNul::SuitTrigger, TriggerNul::Always] {
            assert_eq!(n.name().parse::<TriggerNul>(), Ok(n));
        }
        assert!("sometimes".parse::<TriggerNul>().is_err());
    }

    fn reply(ty: MessageType, code: MessageClass, mid: u16, token: &[u8]) -> Vec<u8> {
        let mut p = Packet::new();
        p.header.set_type(ty);
        p.header.code = code;
        p.header.message_id = mid;
        p.set_token(token.to_vec());
        p.to_bytes().unwrap()
    }

    #[test]
    fn piggybacked_created() {
        let now = Instant::now();
        let mut ex = Exchange::new(
            NotifyConfig::default(),
            10,
            vec![1, 2],
            &["suit", "trigger"],
            b"coap://x/m",
            now,
            0.0,
        );
        let req = Packet::from_bytes(&ex.poll_transmit().unwrap()).unwrap();
        assert_eq!(req.header.get_type(), MessageType::Confirmable);
        assert_eq!(req.header.code, MessageClass::Request(RequestType::Post));
        assert_eq!(req.payload, b"coap://x/m");
        ex.handle_datagram(&reply(
            MessageType::Acknowledgement,
            MessageClass::Response(coap_lite::ResponseType::Created),
            10,
            &[1, 2],
        ));
        assert_eq!(ex.outcome().unwrap().code_text().as_deref(), Some("2.01"));
        assert!(ex.outcome().unwrap().is_success());
    }

    #[test]
    fn retransmits_with_backoff_then_times_out() {
        let t0 = Instant::now();
        let mut ex = Exchange::new(NotifyConfig::default(), 1, vec![], &["suit", "trigger"], b"u", t0, 0.0);
        let first = ex.poll_transmit().unwrap();
        let mut sends = 1;
        let mut now = t0;
        let mut gaps = vec![];
        while ex.outcome().is_none() {
            let due = ex.poll_timeout().unwrap();
            gaps.push((due - now).as_secs());
            now = due;
            ex.handle_timeout(now);
            if let Some(d) = ex.poll_transmit() {
                assert_eq!(d, first, "retransmissions repeat the request");
                sends += 1;
            }
        }
        assert_eq!(sends, 5);
        assert_eq!(gaps, vec![2, 4, 8, 16, 32]);
        assert_eq!(ex.outcome(), Some(&Outcome::Timeout));
    }

    /// Two devices behind one address answer out of order, one piggybacked and one with a
    /// separate response; each reply reaches its own exchange through the shared socket.
    #[tokio::test]
    async fn one_socket_demultiplexes_replies() {
        let device = tokio::net::UdpSocket::bind("[::1]:0").await.unwrap();
        let port = device.local_addr().unwrap().port();
        let n = Arc::new(Notifier::new(NotifyConfig::default(), 8));
        let devices = vec![format!("coap://[::1]:{port}/a"), format!("coap://[::1]:{port}/b")];
        let task = tokio::spawn({
            let n = n.clone();
            async move { n.notify_all(&devices, "coap://x/m").await }
        });
        let mut buf = [0u8; 1500];
        let mut reqs = Vec::new();
        while reqs.len() < 2 {
            let (len, from) = device.recv_from(&mut buf).await.unwrap();
            let p = Packet::from_bytes(&buf[..len]).unwrap();
            if !reqs
                .iter()
                .any(|(q, _): &(Packet, SocketAddr)| q.header.message_id == p.header.message_id)
            {
                reqs.push((p, from));
            }
        }
        assert_eq!(reqs[0].1, reqs[1].1, "one socket for both");
        reqs.sort_by_key(|(p, _)| p.get_option(CoapOption::UriPath).map(|o| o.front().cloned()));
        let (a, b) = (&reqs[0], &reqs[1]);
        // b first: empty ACK, then a separate CON 4.04 with b's token.
        device
            .send_to(
                &[0x60, 0, (b.0.header.message_id >> 8) as u8, b.0.header.message_id as u8],
                b.1,
            )
            .await
            .unwrap();
        let sep = reply(
            MessageType::Confirmable,
            MessageClass::Response(coap_lite::ResponseType::NotFound),
            999,
            b.0.get_token(),
        );
        device.send_to(&sep, b.1).await.unwrap();
        let ack = reply(
            MessageType::Acknowledgement,
            MessageClass::Response(coap_lite::ResponseType::Created),
            a.0.header.message_id,
            a.0.get_token(),
        );
        device.send_to(&ack, a.1).await.unwrap();
        let results = task.await.unwrap();
        let codes: Vec<_> = results
            .iter()
            .map(|r| r.outcome.as_ref().unwrap().code_text().unwrap())
            .collect();
        assert_eq!(codes, ["2.01", "4.04"]);
    }

    #[test]
    fn separate_response_and_reset() {
        let t0 = Instant::now();
        let mut ex = Exchange::new(NotifyConfig::default(), 5, vec![9], &["suit", "trigger"], b"u", t0, 0.0);
        ex.poll_transmit();
        ex.handle_datagram(&[0x60, 0, 0, 5]); // empty ACK
        assert!(ex.outcome().is_none());
        ex.handle_datagram(&reply(
            MessageType::Confirmable,
            MessageClass::Response(coap_lite::ResponseType::BadRequest),
            77,
            &[9],
        ));
        assert_eq!(ex.outcome().unwrap().code_text().as_deref(), Some("4.00"));
        assert_eq!(
            ex.poll_transmit(),
            Some(vec![0x60, 0, 0, 77]),
            "the separate response is acknowledged"
        );

        let mut ex = Exchange::new(NotifyConfig::default(), 6, vec![], &["suit", "trigger"], b"u", t0, 0.0);
        ex.poll_transmit();
        ex.handle_datagram(&[0x70, 0, 0, 6]);
        assert_eq!(ex.outcome(), Some(&Outcome::Reset));
    }
}
