//! The MQTT trigger client: one connection to one broker, kept up by a task on the tokio
//! runtime, over which [`Mqtt::publish`] sends QoS 1 messages and reports each as done only
//! once the broker acknowledged it (PUBACK).
//!
//! rumqttc does the protocol; what it does not say is which PUBACK belongs to which publish
//! (its client only queues requests), so this module matches them: a publish is queued into
//! rumqttc and its waiter appended to `queued` under one lock, rumqttc writes requests in
//! queue order and reports each with its packet id (`Outgoing::Publish(pkid)`, or
//! `AwaitAck(pkid)` when that id is still in flight and the publish waits for its PUBACK),
//! and the PUBACK carries the id. When the connection drops, every waiter fails at once and
//! the requests rumqttc still holds are dropped (clean session: nothing is re-sent after a
//! reconnect, so a publish reported failed is never delivered later by this client).
//!
//! TLS is rustls with the ring provider and a `ClientConfig` built here (rumqttc's own default
//! would bring its default provider); the trust anchors are the given CA file or the
//! platform's roots (rustls-native-certs). The password in the URL is never logged or put in
//! an error: [`Mqtt`] and [`MqttConfig`] print the URL as `user:***@host`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use tokio::sync::{oneshot, Semaphore};
use tokio_util::sync::{CancellationToken, DropGuard};

/// How long [`Mqtt::publish`] waits, in all (for a slot, then for the PUBACK).
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Publishes waiting for their PUBACK at most; further callers wait for a slot.
pub const MAX_IN_FLIGHT: usize = 1000;
/// The largest payload [`Mqtt::publish`] sends (a trigger is a small JSON object).
pub const MAX_PAYLOAD: usize = 256 * 1024;
/// The longest topic MQTT can carry (a UTF-8 string with a 16-bit length).
pub const MAX_TOPIC: usize = 65_535;

/// The first wait before reconnecting; it doubles up to [`MAX_BACKOFF`] while attempts fail.
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A connection that lasted this long resets the backoff when it drops.
const STABLE: Duration = Duration::from_secs(30);
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Where and how to connect (from `--mqtt URL`, `--mqtt-ca FILE`).
#[derive(Clone, Default)]
pub struct MqttConfig {
    /// `mqtt://[user[:password]@]host[:port]` or `mqtts://…` (ports 1883 and 8883 by
    /// default); user and password may be percent-encoded, an IPv6 address is in brackets.
    pub url: String,
    /// The CA certificate(s) (PEM) that sign the broker's certificate, for `mqtts://`;
    /// without one, the platform's trusted roots.
    pub ca: Option<PathBuf>,
    /// The MQTT client id; `suitcase-` and 8 random hex digits by default (two clients with
    /// one id take the connection from each other).
    pub client_id: Option<String>,
}

impl fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = Broker::parse(&self.url).map_or_else(|_| "<invalid URL>".to_string(), |b| b.to_string());
        f.debug_struct("MqttConfig")
            .field("url", &url)
            .field("ca", &self.ca)
            .field("client_id", &self.client_id)
            .finish()
    }
}

/// The broker a URL names.
#[derive(Clone, PartialEq, Eq)]
struct Broker {
    tls: bool,
    /// A host name or IP address (IPv6 without brackets).
    host: String,
    port: u16,
    user: Option<String>,
    password: Option<String>,
}

impl fmt::Display for Broker {
    /// The URL with the password replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", if self.tls { "mqtts" } else { "mqtt" })?;
        if let Some(user) = &self.user {
            write!(f, "{}", user.escape_debug())?;
            if self.password.is_some() {
                f.write_str(":***")?;
            }
            f.write_str("@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `%XX` sequences decoded; the result must be UTF-8 (MQTT user names and passwords are).
fn percent_decode(s: &str, what: &str) -> anyhow::Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| anyhow!("bad percent-encoding in the MQTT URL's {what}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| anyhow!("the MQTT URL's {what} is not UTF-8"))
}

impl Broker {
    /// Parse `mqtt[s]://[user[:password]@]host[:port][/]`. Errors never quote the URL (it may
    /// hold a password), only the part that is wrong when that part cannot be a secret.
    fn parse(url: &str) -> anyhow::Result<Broker> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| anyhow!("an MQTT URL starts with mqtt:// or mqtts://"))?;
        let tls = if scheme.eq_ignore_ascii_case("mqtt") {
            false
        } else if scheme.eq_ignore_ascii_case("mqtts") {
            true
        } else if !scheme.is_empty() && scheme.len() <= 16 && scheme.chars().all(|c| c.is_ascii_alphanumeric()) {
            bail!("unsupported MQTT URL scheme {scheme:?}: use mqtt:// or mqtts://");
        } else {
            bail!("an MQTT URL starts with mqtt:// or mqtts://");
        };
        // The authority ends where a path, query or fragment would start; only a bare "/"
        // may follow it.
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if !tail.is_empty() && tail != "/" {
            bail!("an MQTT URL has no path, query or fragment (percent-encode '/', '?' and '#' in a password)");
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (user, password) = match info.split_once(':') {
                    Some((u, p)) => (u, Some(percent_decode(p, "password")?)),
                    None => (info, None),
                };
                let user = percent_decode(user, "user name")?;
                if user.is_empty() {
                    bail!("the MQTT URL has an '@' but no user name");
                }
                (Some(user), password)
            }
        };
        let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| anyhow!("the MQTT URL's IPv6 address has no closing ']'"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                bail!("the MQTT URL's host [{}] is not an IPv6 address", host.escape_debug());
            }
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| anyhow!("unexpected text after the MQTT URL's IPv6 address"))?,
                ),
            };
            (host, port)
        } else if hostport.matches(':').count() > 1 {
            bail!("an IPv6 address in an MQTT URL goes in brackets (mqtt://[::1]:1883)");
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            bail!("the MQTT URL has no host");
        }
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':');
        if !host.chars().all(valid) {
            bail!("the MQTT URL's host {:?} is not a host name or IP address", host);
        }
        let port = match port {
            None => {
                if tls {
                    8883
                } else {
                    1883
                }
            }
            Some(p) => match p.parse::<u16>() {
                Ok(port) if port != 0 && p.bytes().all(|b| b.is_ascii_digit()) => port,
                _ => bail!("the MQTT URL's port {:?} is not a number from 1 to 65535", p),
            },
        };
        Ok(Broker {
            tls,
            host: host.to_string(),
            port,
            user,
            password,
        })
    }
}

/// Whether `topic` can be published to: not empty, no wildcard (`+`, `#`), no NUL, at most
/// 65,535 bytes.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("an MQTT topic cannot be empty".into());
    }
    if topic.len() > MAX_TOPIC {
        return Err(format!(
            "an MQTT topic is at most {MAX_TOPIC} bytes, not {}",
            topic.len()
        ));
    }
    if topic.contains(['+', '#']) {
        return Err(format!(
            "MQTT topic {topic:?}: a topic to publish to has no wildcards (+ #)"
        ));
    }
    if topic.contains('\0') {
        return Err(format!("MQTT topic {topic:?}: a topic cannot contain NUL"));
    }
    Ok(())
}

/// The rustls configuration: ring, the default protocol versions, and the CA file's
/// certificates or the platform's roots as trust anchors.
fn tls_config(ca: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    use rustls_pki_types::{pem::PemObject as _, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("MQTT CA file {}", path.display()))?;
            if certs.is_empty() {
                bail!("MQTT CA file {}: no certificate in it", path.display());
            }
            for cert in certs {
                roots
                    .add(cert)
                    .with_context(|| format!("MQTT CA file {}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                bail!("no trusted root certificates found on this system for mqtts:// (give the broker's CA file)");
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The end of one publish: `Ok` once the PUBACK came.
type Waiter = oneshot::Sender<Result<(), String>>;

/// What the publishers and the connection task share.
#[derive(Default)]
struct State {
    connected: bool,
    /// Why the last connection attempt failed or the connection dropped.
    last_error: Option<String>,
    /// Queued into rumqttc, in order, not yet written (no packet id yet).
    queued: VecDeque<Waiter>,
    /// Written, waiting for the PUBACK of their packet id.
    awaiting: HashMap<u16, Waiter>,
    /// One whose packet id was still in flight: rumqttc writes it after that id's PUBACK.
    collided: Option<(u16, Waiter)>,
}

impl State {
    /// rumqttc wrote the oldest queued publish (or the collided one) with packet id `pkid`.
    fn written(&mut self, pkid: u16) {
        let waiter = match self.collided.take() {
            Some((id, waiter)) if id == pkid => waiter,
            other => {
                self.collided = other;
                let Some(waiter) = self.queued.pop_front() else {
                    tracing::debug!(pkid, "MQTT publish written with no one waiting for it");
                    return;
                };
                waiter
            }
        };
        if let Some(old) = self.awaiting.insert(pkid, waiter) {
            let _ = old.send(Err(format!("MQTT packet id {pkid} was reused before its PUBACK")));
        }
    }

    /// The oldest queued publish waits for packet id `pkid` to be acknowledged.
    fn collided(&mut self, pkid: u16) {
        if let Some(waiter) = self.queued.pop_front() {
            if let Some((_, old)) = self.collided.replace((pkid, waiter)) {
                let _ = old.send(Err("MQTT packet id collision".into()));
            }
        }
    }

    fn acknowledged(&mut self, pkid: u16) {
        if let Some(waiter) = self.awaiting.remove(&pkid) {
            let _ = waiter.send(Ok(()));
        }
    }

    fn fail_all(&mut self, reason: &str) {
        let collided = self.collided.take().map(|(_, w)| w);
        let awaiting = self.awaiting.drain().map(|(_, w)| w);
        for waiter in self.queued.drain(..).chain(awaiting).chain(collided) {
            let _ = waiter.send(Err(reason.to_string()));
        }
    }
}

struct Inner {
    client: AsyncClient,
    state: Arc<Mutex<State>>,
    slots: Semaphore,
    /// The broker's URL, password redacted.
    broker: String,
    /// Stops the connection task when the last [`Mqtt`] is dropped.
    _stop: DropGuard,
}

/// A connection to an MQTT broker that publishes with QoS 1. Cheap to clone (shared); the
/// connection task stops when the last clone is dropped.
#[derive(Clone)]
pub struct Mqtt {
    inner: Arc<Inner>,
}

impl fmt::Debug for Mqtt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mqtt")
            .field("broker", &self.inner.broker)
            .field("connected", &self.connected())
            .finish()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Mqtt {
    /// Check the configuration (URL, CA file) and start connecting: a task on the current
    /// tokio runtime connects, and reconnects with a growing backoff (250 ms doubling to
    /// 10 s) whenever the broker is unreachable or the connection drops. Errors only for a
    /// bad configuration, never because the broker is down.
    pub fn start(cfg: &MqttConfig) -> anyhow::Result<Mqtt> {
        let broker = Broker::parse(&cfg.url)?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| anyhow!("the MQTT client must be started inside the tokio runtime"))?;
        let client_id = match &cfg.client_id {
            Some(id) if id.is_empty() || id.len() > MAX_TOPIC || id.contains('\0') => {
                bail!("the MQTT client id must be 1 to {MAX_TOPIC} bytes without NUL")
            }
            Some(id) => id.clone(),
            None => {
                let mut random = [0u8; 4];
                getrandom::fill(&mut random).map_err(|e| anyhow!("no randomness for the MQTT client id: {e}"))?;
                format!("suitcase-{}", hex::encode(random))
            }
        };
        // rumqttc joins host and port with ':' to resolve them: an IPv6 address needs its
        // brackets there, and rustls would then not read it as an address.
        let host = if broker.host.contains(':') {
            if broker.tls {
                bail!("{broker}: mqtts:// to an IPv6 address is not supported; use a host name");
            }
            format!("[{}]", broker.host)
        } else {
            broker.host.clone()
        };
        let mut options = MqttOptions::new(client_id.clone(), host, broker.port);
        options
            .set_keep_alive(KEEP_ALIVE)
            .set_clean_session(true)
            .set_inflight(MAX_IN_FLIGHT as u16)
            // Incoming: acknowledgements only. Outgoing: a payload, its topic and headers.
            .set_max_packet_size(64 * 1024, MAX_PAYLOAD + MAX_TOPIC + 16);
        if let Some(user) = &broker.user {
            options.set_credentials(user.clone(), broker.password.clone().unwrap_or_default());
        }
        if broker.tls {
            let config = tls_config(cfg.ca.as_deref())?;
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(config))));
        } else if cfg.ca.is_some() {
            bail!("an MQTT CA file was given but {broker} is not TLS: use mqtts://");
        }
        let (client, eventloop) = AsyncClient::new(options, MAX_IN_FLIGHT);
        let state = Arc::new(Mutex::new(State::default()));
        let stop = CancellationToken::new();
        let name = broker.to_string();
        tracing::info!(broker = %name, client_id, "MQTT client connecting");
        runtime.spawn(connection(eventloop, state.clone(), stop.clone(), name.clone()));
        Ok(Mqtt {
            inner: Arc::new(Inner {
                client,
                state,
                slots: Semaphore::new(MAX_IN_FLIGHT),
                broker: name,
                _stop: stop.drop_guard(),
            }),
        })
    }

    /// Publish `payload` to `topic` with QoS 1 (not retained). `Ok` once the broker's PUBACK
    /// arrived; `Err` at once for a bad topic or payload or while not connected (with the
    /// reason the connection failed), when the connection drops before the PUBACK, or after
    /// [`PUBLISH_TIMEOUT`] (which includes waiting for one of [`MAX_IN_FLIGHT`] slots). An
    /// `Err` after the publish was written may still have reached the broker (QoS 1 is at
    /// least once).
    pub async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), String> {
        validate_topic(topic)?;
        if payload.len() > MAX_PAYLOAD {
            return Err(format!(
                "an MQTT payload is at most {MAX_PAYLOAD} bytes here, not {}",
                payload.len()
            ));
        }
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + PUBLISH_TIMEOUT;
        let started = Instant::now();
        let attempt = async {
            let _slot = inner
                .slots
                .acquire()
                .await
                .map_err(|_| "the MQTT client stopped".to_string())?;
            let done = {
                let mut state = lock(&inner.state);
                if !state.connected {
                    return Err(match &state.last_error {
                        Some(e) => format!("not connected to the MQTT broker {} ({e})", inner.broker),
                        None => format!("not connected to the MQTT broker {} (yet)", inner.broker),
                    });
                }
                inner
                    .client
                    .try_publish(topic, QoS::AtLeastOnce, false, payload)
                    .map_err(|_| format!("the MQTT client's queue to {} is full", inner.broker))?;
                let (tx, rx) = oneshot::channel();
                state.queued.push_back(tx);
                rx
            };
            done.await
                .unwrap_or_else(|_| Err(format!("the MQTT client for {} stopped", inner.broker)))
        };
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no PUBACK from the MQTT broker {} within {} s",
                inner.broker,
                started.elapsed().as_secs()
            )),
        }
    }

    /// Whether the connection is up (the broker accepted it and it has not dropped since).
    pub fn connected(&self) -> bool {
        lock(&self.inner.state).connected
    }
}

/// Why a connection failed, for logs and errors.
fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => format!(
            "the broker refused the connection: {}",
            match code {
                ConnectReturnCode::BadUserNamePassword => "bad user name or password",
                ConnectReturnCode::NotAuthorized => "not authorized",
                ConnectReturnCode::BadClientId => "client id rejected",
                ConnectReturnCode::ServiceUnavailable => "service unavailable",
                ConnectReturnCode::RefusedProtocolVersion => "MQTT 3.1.1 not supported",
                ConnectReturnCode::Success => "success",
            }
        ),
        other => other.to_string(),
    }
}

/// The connection task: polls rumqttc's event loop, matches PUBACKs to waiters, and on an
/// error fails every waiter, drops what rumqttc still holds, and waits before reconnecting.
async fn connection(mut eventloop: EventLoop, state: Arc<Mutex<State>>, stop: CancellationToken, broker: String) {
    let mut backoff = MIN_BACKOFF;
    let mut connected_at: Option<Instant> = None;
    // The current failure (broker unreachable) was logged already.
    let mut failure_logged = false;
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                // A clean session: nothing from before is re-sent (those publishes failed).
                eventloop.pending.clear();
                let mut s = lock(&state);
                s.connected = true;
                s.last_error = None;
                connected_at = Some(Instant::now());
                failure_logged = false;
                tracing::info!(broker = %broker, "MQTT broker connected");
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => lock(&state).acknowledged(ack.pkid),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => lock(&state).written(pkid),
            Ok(Event::Outgoing(Outgoing::AwaitAck(pkid))) => lock(&state).collided(pkid),
            Ok(_) => {}
            Err(e) => {
                let reason = describe(&e);
                {
                    let mut s = lock(&state);
                    s.connected = false;
                    s.fail_all(&format!(
                        "MQTT connection to {broker} lost before the PUBACK ({reason})"
                    ));
                    s.last_error = Some(reason.clone());
                    // A publish queued since the connection dropped: into rumqttc's pending
                    // list, which the next connection clears. From here publishers see
                    // `connected == false` and queue nothing until the next ConnAck.
                    eventloop.clean();
                    // rumqttc keeps events buffered before the error (a publish written just
                    // before a failed flush) and would hand them out on the next connection,
                    // where they would be matched to new publishes; and a publish held back by
                    // a packet id collision would block the next session's queue.
                    eventloop.state.events.clear();
                    eventloop.state.collision = None;
                }
                match connected_at.take() {
                    Some(since) => {
                        tracing::warn!(broker = %broker, error = %reason, "MQTT connection lost; reconnecting");
                        if since.elapsed() >= STABLE {
                            backoff = MIN_BACKOFF;
                        }
                        failure_logged = true;
                    }
                    None if !failure_logged => {
                        tracing::warn!(broker = %broker, error = %reason, "MQTT broker unreachable; retrying");
                        failure_logged = true;
                    }
                    None => tracing::debug!(broker = %broker, error = %reason, "MQTT connection attempt failed"),
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    let mut s = lock(&state);
    s.connected = false;
    s.fail_all("the MQTT client stopped");
}

/// The test broker (shared with the integration tests).
#[cfg(test)]
#[path = "../tests/support/mosquitto.rs"]
mod mosquitto;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    use super::mosquitto::{self, Mosquitto, Options};

    fn parse(url: &str) -> Broker {
        Broker::parse(url).unwrap()
    }

    fn parse_err(url: &str) -> String {
        format!("{:#}", Broker::parse(url).unwrap_err())
    }

    #[test]
    fn urls() {
        let b = parse("mqtt://broker.example");
        assert_eq!(
            (b.tls, b.host.as_str(), b.port, b.user, b.password),
            (false, "broker.example", 1883, None, None)
        );
        let b = parse("MQTTS://10.0.0.1/");
        assert_eq!((b.tls, b.host.as_str(), b.port), (true, "10.0.0.1", 8883));
        let b = parse("mqtts://ota:s3%40cr%3At%2F@broker:9000");
        assert_eq!(b.user.as_deref(), Some("ota"));
        assert_eq!(b.password.as_deref(), Some("s3@cr:t/"));
        assert_eq!(b.port, 9000);
        assert_eq!(b.to_string(), "mqtts://ota:***@broker:9000");
        // A password with '@' in it, unencoded: the last '@' ends the user info.
        let b = parse("mqtt://u:p@ss@h");
        assert_eq!((b.password.as_deref(), b.host.as_str()), (Some("p@ss"), "h"));
        let b = parse("mqtt://user@[::1]:1884");
        assert_eq!((b.host.as_str(), b.port, b.password.as_deref()), ("::1", 1884, None));
        assert_eq!(b.to_string(), "mqtt://user@[::1]:1884");
        assert_eq!(parse("mqtt://[fe80::1]").port, 1883);
    }

    #[test]
    fn bad_urls_are_explained_without_the_password() {
        for (url, says) in [
            ("http://u:secret@h", "unsupported MQTT URL scheme \"http\""),
            ("broker:1883", "starts with mqtt:// or mqtts://"),
            ("mqtt://", "no host"),
            ("mqtt://u:secret@", "no host"),
            ("mqtt://u:secret@:1883", "no host"),
            ("mqtt://h:0", "port \"0\""),
            ("mqtt://h:99999", "port \"99999\""),
            ("mqtt://h:+1", "port \"+1\""),
            ("mqtt://u:sec/ret@h", "no path"),
            ("mqtt://h/topic", "no path"),
            ("mqtt://h?x=1", "no path"),
            ("mqtt://u:secret%zz@h", "percent-encoding in the MQTT URL's password"),
            ("mqtt://:secret@h", "no user name"),
            ("mqtt://[::1", "closing ']'"),
            ("mqtt://[nothost]:1", "not an IPv6 address"),
            ("mqtt://::1", "brackets"),
            ("mqtt://u:secret@fe80::1:1883", "brackets"),
            ("mqtt://h h", "not a host name"),
        ] {
            let e = parse_err(url);
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("secret") && !e.contains("sec/ret"), "{url}: {e}");
        }
        let cfg = MqttConfig {
            url: "mqtt://u:secret@h".into(),
            ..Default::default()
        };
        assert!(!format!("{cfg:?}").contains("secret"));
    }

    #[test]
    fn topics() {
        assert!(validate_topic("/switch/cmd/root").is_ok());
        assert!(validate_topic("a").is_ok());
        assert!(validate_topic(&"x".repeat(MAX_TOPIC)).is_ok());
        for bad in ["", "a/+/b", "a/#", "#", "a\0b"] {
            assert!(validate_topic(bad).is_err(), "{bad:?}");
        }
        assert!(validate_topic(&"x".repeat(MAX_TOPIC + 1)).is_err());
    }

    #[tokio::test]
    async fn bad_configurations_fail_at_start() {
        let start = |url: &str, ca: Option<&str>| {
            Mqtt::start(&MqttConfig {
                url: url.into(),
                ca: ca.map(PathBuf::from),
                client_id: None,
            })
            .map(|_| ())
            .map_err(|e| format!("{e:#}"))
        };
        assert!(start("mqtt://127.0.0.1:1", None).is_ok());
        assert!(start("mqtt://127.0.0.1:1", Some("/ca.pem"))
            .unwrap_err()
            .contains("not TLS"));
        let e = start("mqtts://u:secret@127.0.0.1:1", Some("/nonexistent/ca.pem")).unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem") && !e.contains("secret"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = start("mqtts://127.0.0.1:1", Some(empty.to_str().unwrap())).unwrap_err();
        assert!(e.contains("no certificate"), "{e}");
        assert!(start("mqtts://[::1]:1", None).unwrap_err().contains("IPv6"));
        let e = Mqtt::start(&MqttConfig {
            url: "mqtt://h".into(),
            ca: None,
            client_id: Some(String::new()),
        })
        .unwrap_err();
        assert!(e.to_string().contains("client id"));
    }

    #[test]
    fn start_outside_a_runtime_is_an_error() {
        let e = Mqtt::start(&MqttConfig {
            url: "mqtt://127.0.0.1:1".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("tokio runtime"), "{e}");
    }

    fn client(url: String, ca: Option<PathBuf>) -> Mqtt {
        Mqtt::start(&MqttConfig {
            url,
            ca,
            client_id: None,
        })
        .unwrap()
    }

    /// Wait until `mqtt` is connected (or fail after `limit`).
    async fn wait_connected(mqtt: &Mqtt, limit: Duration) {
        let start = Instant::now();
        while !mqtt.connected() {
            assert!(start.elapsed() < limit, "not connected after {limit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Publish until the error (which must come at once: the client is not connected) says
    /// `why`, the reason its connection attempts fail; at most 15 s (attempts back off from
    /// 250 ms; a loaded machine is slower). Returns the error.
    async fn failing(mqtt: &Mqtt, why: &str) -> String {
        let start = Instant::now();
        loop {
            let attempt = Instant::now();
            let e = mqtt.publish("t", b"x".to_vec()).await.unwrap_err();
            assert!(attempt.elapsed() < Duration::from_secs(1), "{e}");
            assert!(!mqtt.connected());
            if e.contains(why) {
                return e;
            }
            assert!(start.elapsed() < Duration::from_secs(15), "{e}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The subscriber's next message, waited for off the runtime's threads.
    async fn next(sub: &std::sync::Arc<mosquitto::Subscriber>) -> (String, Vec<u8>) {
        let sub = sub.clone();
        tokio::task::spawn_blocking(move || sub.recv(Duration::from_secs(10)))
            .await
            .unwrap()
            .expect("a message within 10 s")
    }

    /// A log sink for [`connection_changes_are_logged_once_and_never_the_password`].
    #[derive(Clone, Default)]
    struct LogBuf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for LogBuf {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn connection_changes_are_logged_once_and_never_the_password() {
        let options = Options {
            credentials: Some(("u".into(), "right".into())),
            tls: false,
        };
        let Some(mut broker) = Mosquitto::start_with(&options) else {
            return;
        };
        let logs = LogBuf::default();
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        // Other tests run in parallel on threads without this subscriber; the callsites'
        // cached interest is rebuilt so this thread's events reach it.
        tracing::callsite::rebuild_interest_cache();
        // One thread: the connection tasks log to this thread's subscriber.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let wrong = client(format!("mqtt://u:hunter2@127.0.0.1:{}", broker.port), None);
            let good = client(broker.url(), None);
            wait_connected(&good, Duration::from_secs(10)).await;
            // 250 + 500 + 1000 ms of backoff: three refused attempts.
            tokio::time::sleep(Duration::from_millis(2500)).await;
            let e = wrong.publish("t", b"x".to_vec()).await.unwrap_err();
            assert!(e.contains("u:***@127.0.0.1") && !e.contains("hunter2"), "{e}");
            broker.stop();
            let start = std::time::Instant::now();
            while good.connected() {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "still connected to a stopped broker"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Its reconnection attempts fail for a while.
            tokio::time::sleep(Duration::from_millis(1000)).await;
        });
        let log = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        assert!(!log.contains("hunter2"), "{log}");
        // Once each, however many attempts failed. (tracing's callsite cache is shared with
        // the tests running in parallel, so an event of this thread can go unseen: at most
        // once, not exactly once.)
        assert!(log.matches("MQTT broker unreachable").count() <= 1, "{log}");
        assert!(log.matches("MQTT broker connected").count() <= 1, "{log}");
        assert!(log.matches("MQTT connection lost").count() <= 1, "{log}");
        assert!(log.contains("broker=mqtt://u:***@127.0.0.1"), "{log}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publishes_reach_a_subscriber() {
        let Some(broker) = Mosquitto::start() else { return };
        let sub = Arc::new(broker.subscribe("ota/#"));
        let mqtt = client(broker.url(), None);
        wait_connected(&mqtt, Duration::from_secs(10)).await;
        let payload = br#"{"type":"ota_trigger","url":"coap://[::1]/x/v/1/riot.suit.1.bin"}"#.to_vec();
        mqtt.publish("ota/dev1", payload.clone()).await.unwrap();
        assert_eq!(next(&sub).await, ("ota/dev1".to_string(), payload));
        // Binary and empty payloads arrive byte for byte.
        let binary: Vec<u8> = (0..=255).collect();
        mqtt.publish("ota/bin", binary.clone()).await.unwrap();
        assert_eq!(next(&sub).await, ("ota/bin".to_string(), binary));
        mqtt.publish("ota/empty", Vec::new()).await.unwrap();
        assert_eq!(next(&sub).await, ("ota/empty".to_string(), Vec::new()));
        // Bad topics and payloads fail before anything is sent.
        assert!(mqtt.publish("ota/+", vec![1]).await.unwrap_err().contains("wildcards"));
        assert!(mqtt.publish("", vec![1]).await.is_err());
        assert!(mqtt.publish("ota/big", vec![0; MAX_PAYLOAD + 1]).await.is_err());
        assert!(mqtt.connected());

        // Many at once, more than rumqttc's and our in-flight limit: each caller's PUBACK is
        // its own, and every message arrives once.
        let n = MAX_IN_FLIGHT + 500;
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let mqtt = mqtt.clone();
                tokio::spawn(async move { mqtt.publish(&format!("ota/many/{i}"), i.to_string().into_bytes()).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let sub2 = sub.clone();
        let got = tokio::task::spawn_blocking(move || {
            let mut got = std::collections::BTreeSet::new();
            while got.len() < n {
                let (topic, payload) = sub2.recv(Duration::from_secs(10)).expect("all messages");
                assert_eq!(topic.strip_prefix("ota/many/").unwrap().as_bytes(), payload);
                assert!(got.insert(payload), "duplicate");
            }
            got
        })
        .await
        .unwrap();
        assert_eq!(got.len(), n);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn user_and_password() {
        let options = Options {
            credentials: Some(("suitcase".into(), "pa:ss@w/rd".into())),
            tls: false,
        };
        let Some(broker) = Mosquitto::start_with(&options) else {
            return;
        };
        let sub = Arc::new(broker.subscribe("t"));
        let mqtt = client(broker.url(), None);
        wait_connected(&mqtt, Duration::from_secs(10)).await;
        mqtt.publish("t", b"authorized".to_vec()).await.unwrap();
        assert_eq!(next(&sub).await.1, b"authorized");

        // A wrong password: never connected, and publish says why at once (no hang).
        let wrong = client(format!("mqtt://suitcase:wrong@127.0.0.1:{}", broker.port), None);
        let anonymous = client(format!("mqtt://127.0.0.1:{}", broker.port), None);
        for mqtt in [&wrong, &anonymous] {
            let e = failing(mqtt, "refused the connection: not authorized").await;
            assert!(!e.contains("wrong") && !format!("{mqtt:?}").contains("wrong"), "{e}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_with_a_ca_file() {
        let options = Options {
            credentials: Some(("u".into(), "p".into())),
            tls: true,
        };
        let Some(broker) = Mosquitto::start_with(&options) else {
            return;
        };
        let sub = Arc::new(broker.subscribe("secure/#"));
        let mqtt = client(broker.tls_url().unwrap(), broker.ca.clone());
        wait_connected(&mqtt, Duration::from_secs(10)).await;
        mqtt.publish("secure/x", b"over TLS".to_vec()).await.unwrap();
        assert_eq!(next(&sub).await, ("secure/x".to_string(), b"over TLS".to_vec()));

        // The platform's roots do not trust the test CA: no connection, and a TLS error.
        let untrusted = client(broker.tls_url().unwrap(), None);
        failing(&untrusted, "UnknownIssuer").await;
        // Plain MQTT to the TLS port fails as well, without hanging.
        let plain = client(format!("mqtt://u:p@127.0.0.1:{}", broker.tls_port.unwrap()), None);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(1) {
            assert!(!plain.connected());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(plain.publish("secure/x", b"x".to_vec()).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connects_when_the_broker_comes_up_and_after_it_restarts() {
        let Some(mut broker) = Mosquitto::prepare(&Options::default()) else {
            return;
        };
        let mqtt = client(broker.url(), None);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!mqtt.connected());
        let e = mqtt.publish("t", b"x".to_vec()).await.unwrap_err();
        assert!(e.contains("not connected"), "{e}");
        broker.launch();
        // Backoff is 10 s at most.
        wait_connected(&mqtt, Duration::from_secs(12)).await;
        let sub = Arc::new(broker.subscribe("t"));
        mqtt.publish("t", b"first".to_vec()).await.unwrap();
        assert_eq!(next(&sub).await.1, b"first");
        drop(sub);

        // Broker gone: publish fails at once, well within the timeout.
        broker.stop();
        let start = Instant::now();
        while mqtt.connected() {
            assert!(start.elapsed() < Duration::from_secs(5), "still connected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let start = Instant::now();
        let e = mqtt.publish("t", b"lost".to_vec()).await.unwrap_err();
        assert!(start.elapsed() < PUBLISH_TIMEOUT, "{e}");

        // Back again: the client reconnects and publishes again.
        broker.launch();
        wait_connected(&mqtt, Duration::from_secs(12)).await;
        let sub = Arc::new(broker.subscribe("t"));
        mqtt.publish("t", b"again".to_vec()).await.unwrap();
        assert_eq!(next(&sub).await.1, b"again");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broker_that_stops_answering_times_out_and_one_that_dies_fails_waiters() {
        let Some(mut broker) = Mosquitto::start() else { return };
        let mqtt = client(broker.url(), None);
        wait_connected(&mqtt, Duration::from_secs(10)).await;
        mqtt.publish("t", b"ok".to_vec()).await.unwrap();
        let pid = broker.pid().unwrap().to_string();
        // Frozen (SIGSTOP): the connection stays up but no PUBACK comes.
        assert!(std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success());
        let start = Instant::now();
        let e = mqtt.publish("t", b"frozen".to_vec()).await.unwrap_err();
        let took = start.elapsed();
        assert!(e.contains("no PUBACK"), "{e}");
        assert!(
            took >= PUBLISH_TIMEOUT - Duration::from_millis(100) && took < PUBLISH_TIMEOUT + Duration::from_secs(2)
        );

        // Publishes waiting for their PUBACK fail as soon as the connection drops.
        let waiting = {
            let mqtt = mqtt.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                (mqtt.publish("t", b"waiting".to_vec()).await, start.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        broker.stop(); // SIGKILL works on a stopped process
        let (result, took) = waiting.await.unwrap();
        let e = result.unwrap_err();
        assert!(e.contains("lost"), "{e}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert!(!mqtt.connected());
    }
}
