//! The trigger client over tokio: [`TriggerClient`] drives many trigger exchanges
//! ([`Exchange`], sans-IO, from `suitcase-coap-proto`) from one shared UDP socket per address
//! family, demultiplexing replies by (peer, message id) for ACK/RST and (peer, token) for
//! separate responses, with a global bound on the exchanges in flight across all callers
//! (more wait their turn). So a notify of any number of devices costs the process two file
//! descriptors, not one per device.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use suitcase_coap_proto::trigger::*;

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

/// What an exchange sends.
enum Method<'a> {
    /// A trigger: the URL, and whether a NUL follows it.
    Post(&'a str, TriggerNul),
    /// A GET of this path.
    Get(&'a [&'a str]),
}

/// A device's PSK identity and key.
pub type DevicePsk = (Vec<u8>, zeroize::Zeroizing<Vec<u8>>);

/// Where a trigger to a `coaps://` device finds that device's pre-shared key.
pub trait DtlsKeys: Send + Sync {
    /// The PSK identity and key of the device at `device` (its address as written).
    fn psk<'a>(
        &'a self,
        device: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<DevicePsk>> + Send + 'a>>;
}

/// Exchanges in flight across every caller of one [`TriggerClient`], by default.
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
pub struct TriggerClient {
    config: NotifyConfig,
    permits: tokio::sync::Semaphore,
    endpoints: tokio::sync::Mutex<[Option<Arc<Endpoint>>; 2]>,
    receivers: Mutex<Vec<tokio::task::AbortHandle>>,
    dtls_keys: Option<Arc<dyn DtlsKeys>>,
}

impl Drop for TriggerClient {
    fn drop(&mut self) {
        if let Ok(r) = self.receivers.lock() {
            r.iter().for_each(tokio::task::AbortHandle::abort);
        }
    }
}

impl TriggerClient {
    /// A notifier with these retransmission settings and bound.
    pub fn new(config: NotifyConfig, max_in_flight: usize) -> Self {
        TriggerClient {
            config,
            permits: tokio::sync::Semaphore::new(max_in_flight.max(1)),
            endpoints: tokio::sync::Mutex::new([None, None]),
            receivers: Mutex::new(Vec::new()),
            dtls_keys: None,
        }
    }

    /// Send triggers to `coaps://` devices over DTLS, with the keys `keys` finds.
    pub fn with_dtls_keys(mut self, keys: Arc<dyn DtlsKeys>) -> Self {
        self.dtls_keys = Some(keys);
        self
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
        let result = self.exchange(device, Method::Post(payload, nul)).await;
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

    /// GET `path` of the device at `device` (its address as for a trigger; its own path is
    /// replaced by `path`), with the same retransmissions and bound as triggers. (RIOT's
    /// `suit/slot/active` tells which slot it booted from.)
    pub async fn get(&self, device: &str, path: &[&str]) -> NotifyResult {
        self.exchange(device, Method::Get(path)).await
    }

    /// One exchange with `device`, once a slot is free.
    async fn exchange(&self, device: &str, method: Method<'_>) -> NotifyResult {
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
        result.outcome = self.run(device, method, &mut result).await;
        result.elapsed = start.elapsed();
        result
    }

    async fn run(&self, device: &str, method: Method<'_>, result: &mut NotifyResult) -> Result<Outcome, String> {
        let target = Target::parse(device).map_err(|e| e.to_string())?;
        let addr = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
            .next()
            .ok_or_else(|| format!("{} resolves to nothing", target.host))?;
        result.address = Some(addr);
        if target.secure {
            return self.run_dtls(device, &target, addr, method, result).await;
        }
        let endpoint = self.endpoint(addr.is_ipv6()).await?;
        let (route, mut inbox) = endpoint.register(addr)?;
        let seed = random_seed(addr);
        let path: Vec<&str> = target.path.iter().map(String::as_str).collect();
        let jitter = (seed >> 11) as f64 / (1u64 << 53) as f64;
        let request = match method {
            Method::Post(url, nul) => {
                post_request(route.mid, &route.token, &path, &trigger_payload(url, &target.path, nul))
            }
            Method::Get(path) => get_request(route.mid, &route.token, path),
        };
        let mut ex = Exchange::with_request(
            self.config.clone(),
            route.mid,
            route.token.to_vec(),
            request,
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
                    Some(d) => ex.handle_datagram(Instant::now(), &d),
                    None => return Err("notify socket closed".into()),
                },
                () = tokio::time::sleep_until(due.into()) => ex.handle_timeout(Instant::now()),
            }
        }
    }

    /// One exchange over DTLS: a socket of its own, a PSK handshake with the device's key (its
    /// flights retransmitted by OpenSSL's timer, the whole handshake bounded like an exchange),
    /// then the same [`Exchange`] with every datagram through the session.
    async fn run_dtls(
        &self,
        device: &str,
        target: &Target,
        addr: SocketAddr,
        method: Method<'_>,
        result: &mut NotifyResult,
    ) -> Result<Outcome, String> {
        let keys = self
            .dtls_keys
            .as_ref()
            .ok_or("coaps:// triggers are not available here (no DTLS keys)")?;
        let (identity, key) = keys.psk(device).await.ok_or_else(|| {
            format!(
                "no DTLS key for {device}: add the device with this address and give it one (suitcase token create ID --device --psk)"
            )
        })?;
        let local: SocketAddr = if addr.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let socket = tokio::net::UdpSocket::bind(local)
            .await
            .map_err(|e| format!("socket: {e}"))?;
        socket.connect(addr).await.map_err(|e| format!("socket: {e}"))?;
        let ctx = suitcase_dtls::ClientConfig::psk(&identity, &key)
            .context()
            .map_err(|e| e.to_string())?;
        let mut dtls = suitcase_dtls::Client::connect(&ctx, addr).map_err(|e| e.to_string())?;
        // As long as a whole exchange may take (RFC 7252 MAX_TRANSMIT_WAIT with our settings).
        let limit = self
            .config
            .ack_timeout
            .saturating_mul(
                2u32.saturating_pow(self.config.max_retransmit.saturating_add(1))
                    .saturating_sub(1),
            )
            .max(Duration::from_secs(1));
        let give_up = Instant::now() + limit;
        let mut buf = vec![0u8; 2048];
        let mut plain = vec![0u8; 2048];
        // Awaited sends: tokio's try_send on a socket its reactor has not polled yet says
        // WouldBlock, which would lose the ClientHello to a one-second retransmission.
        async fn send(dtls: &mut suitcase_dtls::Client, socket: &tokio::net::UdpSocket) {
            let mut out = Vec::new();
            dtls.drain(|d| out.push(d.to_vec()));
            for d in out {
                let _ = socket.send(&d).await;
            }
        }
        while !dtls.is_established() {
            send(&mut dtls, &socket).await;
            let wait = dtls
                .poll_timeout()
                .unwrap_or(Duration::from_millis(500))
                .max(Duration::from_millis(10));
            if Instant::now() >= give_up {
                return Err(format!(
                    "DTLS handshake with {addr}: no answer (wrong key or no DTLS server)"
                ));
            }
            tokio::select! {
                r = socket.recv(&mut buf) => {
                    let n = r.map_err(|e| format!("socket: {e}"))?;
                    dtls.handle_datagram(&buf[..n])
                        .map_err(|e| format!("DTLS handshake with {addr}: {e}"))?;
                }
                () = tokio::time::sleep(wait) => dtls.handle_timeout().map_err(|e| e.to_string())?,
            }
        }
        let (mid, token) = (
            random_seed(addr) as u16,
            (random_seed(addr) ^ 0x9e37_79b9_7f4a_7c15).to_be_bytes(),
        );
        let path: Vec<&str> = target.path.iter().map(String::as_str).collect();
        let request = match method {
            Method::Post(url, nul) => post_request(mid, &token, &path, &trigger_payload(url, &target.path, nul)),
            Method::Get(path) => get_request(mid, &token, path),
        };
        let jitter = (random_seed(addr) >> 11) as f64 / (1u64 << 53) as f64;
        let mut ex = Exchange::with_request(
            self.config.clone(),
            mid,
            token.to_vec(),
            request,
            Instant::now(),
            jitter,
        );
        let outcome = loop {
            while let Some(d) = ex.poll_transmit() {
                if d.len() > 4 || d[1] != 0 {
                    result.transmissions += 1;
                }
                dtls.send(&d).map_err(|e| e.to_string())?;
            }
            send(&mut dtls, &socket).await;
            if let Some(o) = ex.outcome() {
                break o.clone();
            }
            let due = ex.poll_timeout().unwrap_or_else(Instant::now);
            tokio::select! {
                r = socket.recv(&mut buf) => {
                    let n = r.map_err(|e| format!("socket: {e}"))?;
                    dtls.handle_datagram(&buf[..n]).map_err(|e| e.to_string())?;
                    while let Some(n) = dtls.recv(&mut plain).map_err(|e| e.to_string())? {
                        ex.handle_datagram(Instant::now(), &plain[..n]);
                    }
                }
                () = tokio::time::sleep_until(due.into()) => ex.handle_timeout(Instant::now()),
            }
        };
        dtls.close();
        send(&mut dtls, &socket).await;
        Ok(outcome)
    }

    /// Notify every device concurrently (within the bound); results in the order given.
    pub async fn notify_all(self: &Arc<Self>, devices: &[String], payload: &str) -> Vec<NotifyResult> {
        self.notify_all_with(devices, payload, None).await
    }

    /// [`TriggerClient::notify_all`], with the NUL after the URL as `nul` says (`None`: as
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
    TriggerClient::new(config.clone(), 1).notify(device, payload).await
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
    Arc::new(TriggerClient::new(config.clone(), DEFAULT_MAX_IN_FLIGHT))
        .notify_all(devices, payload)
        .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use coap_lite::{CoapOption, MessageClass, MessageType, Packet};

    /// A device's reply as coap-lite writes it (an independent encoder).
    fn reply(ty: MessageType, code: MessageClass, mid: u16, token: &[u8]) -> Vec<u8> {
        let mut p = Packet::new();
        p.header.set_type(ty);
        p.header.code = code;
        p.header.message_id = mid;
        p.set_token(token.to_vec());
        p.to_bytes().unwrap()
    }

    /// Two devices behind one address answer out of order, one piggybacked and one with a
    /// separate response; each reply reaches its own exchange through the shared socket.
    #[tokio::test]
    async fn one_socket_demultiplexes_replies() {
        let device = tokio::net::UdpSocket::bind("[::1]:0").await.unwrap();
        let port = device.local_addr().unwrap().port();
        let n = Arc::new(TriggerClient::new(NotifyConfig::default(), 8));
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
}
