//! One simulated device downloading one image.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use crate::coap;
use crate::rng::Rng;

/// How a device behaves.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    /// Server address.
    pub server: SocketAddr,
    /// Uri-Path segments.
    pub path: Vec<String>,
    /// Block size exponent asked for.
    pub szx: u8,
    /// Initial retransmission timeout (doubled on each retry).
    pub ack_timeout: Duration,
    /// Retransmissions before giving up.
    pub max_retransmit: u32,
    /// Probability of dropping an outgoing request or an incoming reply (fault injection).
    pub loss: f64,
    /// Send an empty token (as RIOT does).
    pub empty_token: bool,
    /// Device `id` binds local port `base_port + id` (so a fleet of known addresses can be
    /// registered beforehand); `None`: an ephemeral port.
    pub base_port: Option<u16>,
    /// coaps://: handshake first (PSK), then every request and reply through the session.
    pub dtls: Option<suitcase_dtls::ClientContext>,
}

/// What one download did.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Blocks received and checked.
    pub blocks: u64,
    /// Retransmissions.
    pub retransmissions: u64,
    /// Wall time of the whole download (the handshake included).
    pub elapsed: Duration,
    /// Time the DTLS handshake took.
    pub handshake: Duration,
    /// The first error, if the download failed.
    pub error: Option<String>,
}

/// Download the image once, checking every block against `expected`.
pub async fn download(cfg: &DeviceConfig, id: u64, expected: &[u8]) -> Outcome {
    let start = Instant::now();
    let mut out = Outcome::default();
    match run(cfg, id, expected, &mut out).await {
        Ok(()) => {}
        Err(e) => out.error = Some(e),
    }
    out.elapsed = start.elapsed();
    out
}

async fn run(cfg: &DeviceConfig, id: u64, expected: &[u8], out: &mut Outcome) -> Result<(), String> {
    let mut bind: SocketAddr = if cfg.server.is_ipv6() { "[::1]:0" } else { "127.0.0.1:0" }
        .parse()
        .map_err(|e| format!("{e}"))?;
    if let Some(base) = cfg.base_port {
        let port = u16::try_from(u64::from(base) + id).map_err(|_| format!("device {id}: port beyond 65535"))?;
        bind.set_port(port);
    }
    let sock = UdpSocket::bind(bind).await.map_err(|e| format!("bind: {e}"))?;
    sock.connect(cfg.server).await.map_err(|e| format!("connect: {e}"))?;
    let mut dtls = match &cfg.dtls {
        Some(ctx) => {
            let t = Instant::now();
            let c = handshake(ctx, &sock, cfg.server).await?;
            out.handshake = t.elapsed();
            Some(c)
        }
        None => None,
    };
    let mut plain = vec![0u8; 2048];
    let path: Vec<&str> = cfg.path.iter().map(String::as_str).collect();
    let mut rng = Rng::from_state(0x9e37_79b9_7f4a_7c15 ^ (id.wrapping_mul(0x2545_f491_4f6c_dd1d)) | 1);
    let mut mid = (id as u16).wrapping_mul(7919);
    let token_bytes = (id as u32).to_be_bytes();
    let token: &[u8] = if cfg.empty_token { &[] } else { &token_bytes };
    let mut req = Vec::with_capacity(128);
    let mut buf = vec![0u8; 2048];
    let mut etag: Option<Vec<u8>> = None;
    let mut num = 0u32;
    let mut received = 0usize;
    loop {
        mid = mid.wrapping_add(1);
        coap::get(&mut req, mid, token, &path, Some((num, cfg.szx)));
        let mut timeout = cfg.ack_timeout;
        let mut attempt = 0;
        let n = 'exchange: loop {
            if !rng.chance(cfg.loss) {
                match &mut dtls {
                    Some(c) => {
                        c.send(&req).map_err(|e| e.to_string())?;
                        flush(c, &sock).await;
                    }
                    None => {
                        sock.send(&req).await.map_err(|e| format!("send: {e}"))?;
                    }
                }
            }
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                    Ok(Ok(n)) => {
                        if rng.chance(cfg.loss) {
                            continue;
                        }
                        let n = match &mut dtls {
                            Some(c) => {
                                c.handle_datagram(&buf[..n]).map_err(|e| e.to_string())?;
                                let Some(m) = c.recv(&mut plain).map_err(|e| e.to_string())? else {
                                    continue;
                                };
                                buf[..m].copy_from_slice(&plain[..m]);
                                m
                            }
                            None => n,
                        };
                        let Some(r) = coap::parse(&buf[..n]) else {
                            return Err("unparsable reply".into());
                        };
                        if r.mid != mid {
                            continue; // a late reply to an earlier retransmission
                        }
                        break 'exchange n;
                    }
                    Ok(Err(e)) => return Err(format!("recv: {e}")),
                    Err(_) => break,
                }
            }
            attempt += 1;
            if attempt > cfg.max_retransmit {
                return Err(format!("block {num}: no reply after {attempt} transmissions"));
            }
            out.retransmissions += 1;
            timeout *= 2;
        };
        let r = coap::parse(&buf[..n]).ok_or("unparsable reply")?;
        if r.ty != 2 {
            return Err(format!("block {num}: reply type {} is not ACK", r.ty));
        }
        if r.token != token {
            return Err(format!("block {num}: token mismatch"));
        }
        if r.code != 0x45 {
            return Err(format!("block {num}: code {}.{:02}", r.code >> 5, r.code & 0x1f));
        }
        let (rnum, more, rszx) = r.block2.ok_or_else(|| format!("block {num}: no Block2 in the reply"))?;
        if rnum != num || rszx != cfg.szx {
            return Err(format!("block {num}: reply is block {rnum} szx {rszx}"));
        }
        match (&etag, r.etag) {
            (None, e) => etag = e.map(<[u8]>::to_vec),
            (Some(a), Some(b)) if a.as_slice() == b => {}
            (Some(_), _) => return Err(format!("block {num}: ETag changed")),
        }
        let off = num as usize * (16usize << cfg.szx);
        let want = expected
            .get(off..off + r.payload.len())
            .ok_or_else(|| format!("block {num}: beyond the image"))?;
        if want != r.payload {
            return Err(format!("block {num}: content differs from the image"));
        }
        received += r.payload.len();
        out.blocks += 1;
        if !more {
            if received != expected.len() {
                return Err(format!("got {received} bytes, want {}", expected.len()));
            }
            if let Some(c) = &mut dtls {
                c.close();
                flush(c, &sock).await;
            }
            return Ok(());
        }
        num += 1;
    }
}

/// Send what the session has to send. Awaited, not `try_send`: tokio answers `try_send` on a
/// socket its reactor has not polled yet with WouldBlock, which would lose the ClientHello.
async fn flush(c: &mut suitcase_dtls::Client, sock: &UdpSocket) {
    let mut out = Vec::new();
    c.drain(|d| out.push(d.to_vec()));
    for d in out {
        let _ = sock.send(&d).await;
    }
}

/// A DTLS handshake over the connected socket, with OpenSSL's retransmissions, at most 30 s.
async fn handshake(
    ctx: &suitcase_dtls::ClientContext,
    sock: &UdpSocket,
    server: SocketAddr,
) -> Result<suitcase_dtls::Client, String> {
    let mut c = suitcase_dtls::Client::connect(ctx, server).map_err(|e| e.to_string())?;
    let give_up = Instant::now() + Duration::from_secs(30);
    let mut buf = vec![0u8; 2048];
    while !c.is_established() {
        flush(&mut c, sock).await;
        if Instant::now() >= give_up {
            return Err("DTLS handshake timed out".into());
        }
        let wait = c
            .poll_timeout()
            .unwrap_or(Duration::from_millis(500))
            .max(Duration::from_millis(5));
        match tokio::time::timeout(wait, sock.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                c.handle_datagram(&buf[..n]).map_err(|e| format!("handshake: {e}"))?;
            }
            Ok(Err(e)) => return Err(format!("recv: {e}")),
            Err(_) => c.handle_timeout().map_err(|e| e.to_string())?,
        }
    }
    flush(&mut c, sock).await;
    Ok(c)
}

/// Handshake `count` times in a row, each from a fresh socket, closing each session: the
/// handshake durations.
pub async fn handshakes(cfg: &DeviceConfig, count: usize) -> Result<Vec<Duration>, String> {
    let ctx = cfg.dtls.as_ref().ok_or("handshakes need --psk")?;
    let bind: SocketAddr = if cfg.server.is_ipv6() { "[::1]:0" } else { "127.0.0.1:0" }
        .parse()
        .map_err(|e| format!("{e}"))?;
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let sock = UdpSocket::bind(bind).await.map_err(|e| format!("bind: {e}"))?;
        sock.connect(cfg.server).await.map_err(|e| format!("connect: {e}"))?;
        let t = Instant::now();
        let mut c = handshake(ctx, &sock, cfg.server).await?;
        times.push(t.elapsed());
        c.close();
        flush(&mut c, &sock).await;
    }
    Ok(times)
}
