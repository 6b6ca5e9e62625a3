//! The trigger exchange, sans-IO: a confirmable CoAP POST of a manifest URL to
//! `coap://<device>/suit/trigger` (RIOT's contract: the device answers 2.01 and starts the
//! update), retransmitted per RFC 7252 §4.2. [`Exchange`] is one request's state machine
//! (datagrams and time in, datagrams out); [`Target`] parses a device address as users write
//! it. The tokio client that drives many exchanges from one socket is `suitcase-coap`'s
//! `notify`.
//!
//! The payload is the URL, followed by one NUL byte when [`TriggerNul`] says so (by default
//! for the path `suit/trigger`): every RIOT since 2025.01 measures the URL with `strlen()` on
//! its packet buffer, so without the NUL it picks up stale bytes after the URL and fails
//! with `error getting manifest`; a NUL after the URL is harmless to it.

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

/// Build a CON GET of the Uri-Path `path` (e.g. RIOT's `suit/slot/active`).
pub fn get_request(mid: u16, token: &[u8], path: &[&str]) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_type(MessageType::Confirmable);
    p.header.code = MessageClass::Request(RequestType::Get);
    p.header.message_id = mid;
    p.set_token(token.to_vec());
    for seg in path {
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    p.to_bytes_unlimited().unwrap_or_default()
}

impl Exchange {
    /// Start a POST exchange; `jitter` in [0, 1) picks the initial timeout within
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
        Self::with_request(config, mid, token, request, now, jitter)
    }

    /// Start an exchange of a confirmable `request` already encoded with `mid` and `token`
    /// (see [`post_request`], [`get_request`]).
    pub fn with_request(
        config: NotifyConfig,
        mid: u16,
        token: Vec<u8>,
        request: Vec<u8>,
        now: Instant,
        jitter: f64,
    ) -> Self {
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
    pub fn handle_datagram(&mut self, now: Instant, data: &[u8]) {
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
                        due: now + self.config.separate_timeout,
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
/// `10.0.0.7`, `node.local:5684`, optionally with `coap://` (or `coaps://`: DTLS, port 5684
/// by default) and a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `coaps://`: the trigger goes over DTLS.
    pub secure: bool,
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
        let (secure, t) = match t.strip_prefix("coaps://") {
            Some(rest) => (true, rest),
            None => (false, t.strip_prefix("coap://").unwrap_or(t)),
        };
        let default_port = if secure { 5684 } else { 5683 };
        if t.is_empty() || t.contains("://") {
            return Err(bad("expected host, [ipv6] or coap[s]://host[:port][/path]"));
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
                None if after.is_empty() => default_port,
                None => return Err(bad("junk after ']'")),
            };
            (host.to_string(), port)
        } else if authority.matches(':').count() > 1 {
            // A bare IPv6 address without brackets.
            (authority.to_string(), default_port)
        } else if let Some((h, p)) = authority.split_once(':') {
            (h.to_string(), p.parse().map_err(|_| bad("bad port"))?)
        } else {
            (authority.to_string(), default_port)
        };
        if host.is_empty() || host.len() > 255 || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("bad host"));
        }
        // Empty segments are dropped; no segment at all (``, `/`, `//`) means the default.
        let mut path: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(str::to_string).collect();
        if path.is_empty() {
            path = vec!["suit".into(), "trigger".into()];
        }
        Ok(Target {
            secure,
            host,
            port,
            path,
        })
    }
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
        assert_eq!(
            t("coaps://[2001:db8::3]"),
            Ok(("2001:db8::3".into(), 5684, "suit/trigger".into()))
        );
        assert!(Target::parse("coaps://n:1").unwrap().secure);
        assert!(!Target::parse("coap://n:1").unwrap().secure);
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
        ex.handle_datagram(
            now,
            &reply(
                MessageType::Acknowledgement,
                MessageClass::Response(coap_lite::ResponseType::Created),
                10,
                &[1, 2],
            ),
        );
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
        ex.handle_datagram(t0, &[0x60, 0, 0, 5]); // empty ACK
        assert!(ex.outcome().is_none());
        ex.handle_datagram(
            t0,
            &reply(
                MessageType::Confirmable,
                MessageClass::Response(coap_lite::ResponseType::BadRequest),
                77,
                &[9],
            ),
        );
        assert_eq!(ex.outcome().unwrap().code_text().as_deref(), Some("4.00"));
        assert_eq!(
            ex.poll_transmit(),
            Some(vec![0x60, 0, 0, 77]),
            "the separate response is acknowledged"
        );

        let mut ex = Exchange::new(NotifyConfig::default(), 6, vec![], &["suit", "trigger"], b"u", t0, 0.0);
        ex.poll_transmit();
        ex.handle_datagram(t0, &[0x70, 0, 0, 6]);
        assert_eq!(ex.outcome(), Some(&Outcome::Reset));
    }
}
