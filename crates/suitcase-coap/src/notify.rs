//! The notify client: a confirmable CoAP POST of a manifest URL to
//! `coap://<device>/suit/trigger` (RIOT's contract: the device answers 2.01 and starts the
//! update), retransmitted per RFC 7252 §4.2, with a result per device.
//!
//! [`Exchange`] is the sans-IO state machine of one request; [`notify_all`] drives many over
//! tokio, each from its own socket.

use std::net::SocketAddr;
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
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            ack_timeout: Duration::from_secs(2),
            ack_random_factor: 1.5,
            max_retransmit: 4,
            separate_timeout: Duration::from_secs(30),
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

/// Notify one device.
pub async fn notify(device: &str, payload: &str, config: &NotifyConfig) -> NotifyResult {
    let start = Instant::now();
    let mut result = NotifyResult {
        device: device.to_string(),
        address: None,
        outcome: Err(String::new()),
        transmissions: 0,
        elapsed: Duration::ZERO,
    };
    result.outcome = run(device, payload, config, &mut result).await;
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

async fn run(device: &str, payload: &str, config: &NotifyConfig, result: &mut NotifyResult) -> Result<Outcome, String> {
    let target = Target::parse(device).map_err(|e| e.to_string())?;
    let addr = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
        .next()
        .ok_or_else(|| format!("{} resolves to nothing", target.host))?;
    result.address = Some(addr);
    let bind: SocketAddr = if addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
        .parse()
        .map_err(|e| format!("{e}"))?;
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("socket: {e}"))?;
    sock.connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    let seed = random_seed(addr);
    let token = seed.to_be_bytes()[..4].to_vec();
    let path: Vec<&str> = target.path.iter().map(String::as_str).collect();
    let jitter = (seed >> 11) as f64 / (1u64 << 53) as f64;
    let mut ex = Exchange::new(
        config.clone(),
        seed as u16,
        token,
        &path,
        payload.as_bytes(),
        Instant::now(),
        jitter,
    );
    let mut buf = vec![0u8; 1500];
    loop {
        while let Some(d) = ex.poll_transmit() {
            if d.len() > 4 || d[1] != 0 {
                result.transmissions += 1;
            }
            // A send error (ICMP unreachable) is retried like a loss.
            let _ = sock.send(&d).await;
        }
        if let Some(o) = ex.outcome() {
            return Ok(o.clone());
        }
        let due = ex.poll_timeout().unwrap_or_else(Instant::now);
        tokio::select! {
            r = sock.recv(&mut buf) => match r {
                Ok(n) => ex.handle_datagram(&buf[..n]),
                // ICMP port unreachable: nothing listens there, retrying will not help.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Err(format!("{addr}: port unreachable (nothing listens there)"))
                }
                Err(e) => return Err(format!("receive: {e}")),
            },
            () = tokio::time::sleep_until(due.into()) => ex.handle_timeout(Instant::now()),
        }
    }
}

fn random_seed(addr: SocketAddr) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(addr.to_string().as_bytes());
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

/// Notify every device concurrently; results in the order given.
pub async fn notify_all(devices: &[String], payload: &str, config: &NotifyConfig) -> Vec<NotifyResult> {
    let mut set = tokio::task::JoinSet::new();
    for (i, d) in devices.iter().enumerate() {
        let (d, payload, config) = (d.clone(), payload.to_string(), config.clone());
        set.spawn(async move { (i, notify(&d, &payload, &config).await) });
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
