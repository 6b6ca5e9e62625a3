//! The thin tokio driver of `coaps://`: one UDP socket, one task; each datagram goes through
//! the DTLS [`Endpoint`] (sessions, cookies, handshakes), each plaintext CoAP message through
//! the same sans-IO [`Server`] as plain CoAP, and each reply back through its session.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use suitcase_dtls::{Endpoint, Received};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::driver::{hand_over, next_reply, Hooks, BLOCK_INTERVAL, IO_LOOP_BOUND, MAX_DATAGRAM};
use crate::server::{Resources, Server};

/// Told of every session that completes its handshake: the peer and its device (the token's name).
pub type OnSession = Box<dyn Fn(SocketAddr, &str) + Send>;

/// What the DTLS endpoint counted, for metrics (copied once per round).
pub type DtlsStats = std::sync::Arc<parking_lot::Mutex<(suitcase_dtls::Stats, usize)>>;

/// Serve `coaps://` until `cancel` fires.
pub async fn run<R: Resources>(
    socket: UdpSocket,
    mut server: Server<R>,
    mut endpoint: Endpoint,
    cancel: CancellationToken,
    hooks: Hooks,
    on_session: Option<OnSession>,
    stats: Option<DtlsStats>,
) -> io::Result<()> {
    let Hooks {
        transfers: events,
        blocks,
        app,
        metrics,
    } = hooks;
    let metrics = metrics.unwrap_or_default();
    let (app_tx, mut app_rx) = match app {
        Some(a) => (Some(a.requests), Some(a.replies)),
        None => (None, None),
    };
    let mut blocks_sent = Instant::now();
    // A datagram (batches on Linux), the plaintext of one record, one reply.
    #[cfg(target_os = "linux")]
    let mut batch = crate::batch::Batch::default();
    #[cfg(not(target_os = "linux"))]
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let mut plain = vec![0u8; 16 * 1024 + 256];
    let mut reply = Vec::with_capacity(MAX_DATAGRAM);
    // Datagrams the socket would not take at once (a full send buffer): sent after the
    // drain, waiting for room as the plain driver does.
    let mut blocked: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    loop {
        if cancel.is_cancelled() {
            return Ok(());
        }
        let now = Instant::now();
        if server.poll_timeout().is_some_and(|t| t <= now) {
            server.handle_timeout(now);
        }
        if endpoint.poll_timeout() <= now {
            endpoint.handle_timeout(now);
        }
        while let Some(d) = server.poll_transfer_done() {
            if let Some(tx) = &events {
                let _ = tx.send(d);
            }
        }
        hand_over(&mut server, blocks.as_ref(), app_tx.as_ref(), &mut blocks_sent, now);
        while let Some(t) = server.poll_transmit() {
            endpoint.send(now, t.peer, &t.data);
        }
        send_all(&mut endpoint, &socket, &metrics, &mut blocked).await;
        *metrics.server.lock() = (
            server.stats().clone(),
            server.observer_count(),
            server.transfers_in_progress(),
        );
        if let Some(s) = &stats {
            *s.lock() = (endpoint.stats(), endpoint.sessions());
        }
        let mut deadline = endpoint.poll_timeout();
        if let Some(t) = server.poll_timeout() {
            deadline = deadline.min(t);
        }
        if blocks.is_some() && server.pending_blocks() > 0 {
            deadline = deadline.min(blocks_sent + BLOCK_INTERVAL);
        }
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Ok(()),
            r = socket.readable() => r?,
            Some(r) = next_reply(&mut app_rx) => {
                server.answer(r.id, r.code, r.payload);
                while let Ok(r) = app_rx.as_mut().map_or(Err(mpsc::error::TryRecvError::Empty), mpsc::Receiver::try_recv) {
                    server.answer(r.id, r.code, r.payload);
                }
                // Answers are sent from the loop's top (through their sessions).
                while let Some(t) = server.poll_transmit() {
                    endpoint.send(Instant::now(), t.peer, &t.data);
                }
                continue;
            }
            () = tokio::time::sleep_until(deadline.max(now + Duration::from_millis(1)).into()) => continue,
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let fd = socket.as_raw_fd();
            let mut handled = 0;
            while handled < IO_LOOP_BOUND {
                match socket.try_io(tokio::io::Interest::READABLE, || batch.recv(fd)) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
                        ) =>
                    {
                        handled += 1;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                handled += batch.received.len().max(1);
                let now = Instant::now();
                batch.each_received(|peer, datagram, replies| {
                    handle(
                        &mut endpoint,
                        &mut server,
                        &metrics,
                        on_session.as_ref(),
                        now,
                        peer,
                        datagram,
                        &mut plain,
                        &mut reply,
                    );
                    endpoint.drain(|p, d| {
                        metrics.datagrams_out.fetch_add(1, Ordering::Relaxed);
                        replies.queue(p, d);
                    });
                });
                for (peer, data) in batch.flush(fd) {
                    if let Err(e) = socket.send_to(&data, peer).await {
                        tracing::debug!(%peer, error = %e, "coaps send failed");
                    }
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        for _ in 0..IO_LOOP_BOUND {
            let (n, peer) = match socket.try_recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            };
            if n > MAX_DATAGRAM {
                continue;
            }
            handle(
                &mut endpoint,
                &mut server,
                &metrics,
                on_session.as_ref(),
                Instant::now(),
                peer,
                &buf[..n],
                &mut plain,
                &mut reply,
            );
            send_all(&mut endpoint, &socket, &metrics, &mut blocked).await;
        }
        tokio::task::yield_now().await;
    }
}

/// Run [`run`] on a thread of its own with a single-threaded runtime, like the plain driver.
pub fn spawn_thread<R: Resources + Send + 'static>(
    socket: std::net::UdpSocket,
    server: Server<R>,
    endpoint: Endpoint,
    cancel: CancellationToken,
    hooks: Hooks,
    on_session: Option<OnSession>,
    stats: Option<DtlsStats>,
) -> io::Result<std::thread::JoinHandle<io::Result<()>>> {
    std::thread::Builder::new().name("coaps".into()).spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let stop = cancel.clone();
        let r = rt.block_on(async move {
            let socket = UdpSocket::from_std(socket)?;
            run(socket, server, endpoint, cancel, hooks, on_session, stats).await
        });
        if let Err(e) = &r {
            // Never serve on without the coaps side the operator asked for.
            tracing::error!(error = %e, "the coaps server failed; stopping");
            stop.cancel();
        }
        r
    })
}

async fn send_all(
    endpoint: &mut Endpoint,
    socket: &UdpSocket,
    metrics: &crate::driver::Metrics,
    blocked: &mut Vec<(SocketAddr, Vec<u8>)>,
) {
    endpoint.drain(|peer, d| {
        metrics.datagrams_out.fetch_add(1, Ordering::Relaxed);
        match socket.try_send_to(d, peer) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => blocked.push((peer, d.to_vec())),
            Err(e) => tracing::debug!(%peer, error = %e, "coaps send failed"),
            Ok(_) => {}
        }
    });
    for (peer, d) in blocked.drain(..) {
        if let Err(e) = socket.send_to(&d, peer).await {
            tracing::debug!(%peer, error = %e, "coaps send failed");
        }
    }
}

/// One datagram: through the session table, and each plaintext request through the server;
/// replies go back into the session (drained by the caller).
// The loop's state, borrowed apart so the batch can lend its buffers meanwhile.
#[allow(clippy::too_many_arguments)]
fn handle<R: Resources>(
    endpoint: &mut Endpoint,
    server: &mut Server<R>,
    metrics: &crate::driver::Metrics,
    on_session: Option<&OnSession>,
    now: Instant,
    peer: SocketAddr,
    datagram: &[u8],
    plain: &mut [u8],
    reply: &mut Vec<u8>,
) {
    metrics.datagrams_in.fetch_add(1, Ordering::Relaxed);
    match endpoint.handle_datagram(now, peer, datagram) {
        Received::Connected(device) => {
            if let Some(f) = on_session {
                f(peer, &device);
            }
        }
        Received::Data => {
            while let Some(len) = endpoint.recv(peer, plain) {
                reply.clear();
                if server.handle_datagram_into(now, peer, &plain[..len], reply) {
                    if let Some(code) = reply.get(1) {
                        metrics.replies[usize::from(*code)].fetch_add(1, Ordering::Relaxed);
                    }
                    endpoint.send(now, peer, reply);
                }
            }
        }
        Received::Nothing | Received::Closed => {}
    }
}
