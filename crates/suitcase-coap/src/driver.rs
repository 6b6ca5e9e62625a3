//! The thin tokio driver: one UDP socket, one task, datagrams and timers through [`Server`].

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::message::Code;
use crate::server::{AppRequest, BlockServed, Resources, Server, TransferDone};

/// Where the driver sends completed downloads.
pub type Events = tokio::sync::broadcast::Sender<TransferDone>;

/// Where the driver sends the blocks it served (fleet tracking): a batch when
/// [`BLOCK_BATCH`] have gathered or [`BLOCK_INTERVAL`] has passed, with `try_send`; a batch
/// that does not fit is dropped and its events counted in `dropped`. The server never waits
/// for the tracker, and wakes it a few times a second, not once per round (on a loaded core
/// every cross-thread wake-up is a context switch taken from serving).
#[derive(Clone, Debug)]
pub struct BlockSink {
    /// The channel.
    pub tx: mpsc::Sender<Vec<BlockServed>>,
    /// Events dropped because the channel was full.
    pub dropped: Arc<AtomicU64>,
}

/// Block events sent in one batch at most once this many have gathered.
pub const BLOCK_BATCH: usize = 8192;
/// Block events wait at most this long before they are sent.
pub const BLOCK_INTERVAL: Duration = Duration::from_millis(100);

/// An application's answer to an [`AppRequest`].
#[derive(Clone, Debug)]
pub struct AppReply {
    /// The request's id.
    pub id: u64,
    /// The response code.
    pub code: Code,
    /// A diagnostic or empty payload.
    pub payload: Bytes,
}

/// Where the application takes the requests the server hands it and returns its answers.
#[derive(Debug)]
pub struct AppChannel {
    /// Requests go here (`try_send`: when full, the request is answered 5.03 at once).
    pub requests: mpsc::Sender<AppRequest>,
    /// Answers come back here.
    pub replies: mpsc::Receiver<AppReply>,
}

/// Counters of the CoAP server for metrics: datagrams and replies counted as they pass
/// (one relaxed atomic add each), the server's own counters copied once per round.
#[derive(Debug)]
pub struct Metrics {
    /// Datagrams received.
    pub datagrams_in: AtomicU64,
    /// Datagrams sent (replies, notifications, retransmissions).
    pub datagrams_out: AtomicU64,
    /// Replies by their code byte (class << 5 | detail).
    pub replies: [AtomicU64; 256],
    /// The server's counters, observers and downloads in progress, as of the last round.
    pub server: parking_lot::Mutex<(crate::Stats, usize, usize)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            datagrams_in: AtomicU64::new(0),
            datagrams_out: AtomicU64::new(0),
            replies: std::array::from_fn(|_| AtomicU64::new(0)),
            server: parking_lot::Mutex::new(Default::default()),
        }
    }
}

/// What the driver hands to the rest of the process besides datagrams.
#[derive(Debug, Default)]
pub struct Hooks {
    /// Counters for `/metrics`.
    pub metrics: Option<Arc<Metrics>>,
    /// Completed downloads (notify's watch).
    pub transfers: Option<Events>,
    /// Served blocks (fleet tracking).
    pub blocks: Option<BlockSink>,
    /// Requests for the application (device reports).
    pub app: Option<AppChannel>,
}

/// Socket buffer size asked for, so bursts from thousands of devices are not dropped.
pub const SOCKET_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// Bind a UDP socket for CoAP: dual-stack when `addr` is `[::]`, large buffers, non-blocking
/// (ready for [`spawn_thread`] or `UdpSocket::from_std`).
pub fn bind(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Serve IPv4 too on [::] where the OS allows it.
        let _ = socket.set_only_v6(false);
    }
    if let Err(e) = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES) {
        tracing::warn!(error = %e, "could not enlarge the UDP receive buffer");
    }
    if let Err(e) = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES) {
        tracing::warn!(error = %e, "could not enlarge the UDP send buffer");
    }
    match socket.recv_buffer_size() {
        Ok(n) if n < SOCKET_BUFFER_BYTES => tracing::info!(
            bytes = n,
            "UDP receive buffer is smaller than asked (raise net.core.rmem_max for large fleets)"
        ),
        _ => {}
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Datagrams handled per wake-up at most (quinn's IO_LOOP_BOUND idea): then timers,
/// notifications and shutdown get their turn, however fast datagrams arrive.
pub const IO_LOOP_BOUND: usize = 256;

/// Largest datagram accepted; longer ones arrive truncated and are dropped (a request of
/// this server is a GET with a path: far smaller).
pub const MAX_DATAGRAM: usize = 1500;

/// Serve until `cancel` fires. Each wake-up handles up to [`IO_LOOP_BOUND`] queued datagrams
/// before it services timers and looks at `cancel` again, so a burst costs one readiness
/// event, not one per datagram, and a flood cannot starve Observe retransmissions or
/// shutdown; on Linux the datagrams come in and the replies go out in batches of up to 32
/// per system call.
pub async fn run<R: Resources>(
    socket: UdpSocket,
    mut server: Server<R>,
    cancel: CancellationToken,
    hooks: Hooks,
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
    #[cfg(target_os = "linux")]
    let mut batch = crate::batch::Batch::default();
    #[cfg(not(target_os = "linux"))]
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        if cancel.is_cancelled() {
            return Ok(());
        }
        // Timers first, every round: under load the readable branch is always ready.
        let now = Instant::now();
        if server.poll_timeout().is_some_and(|t| t <= now) {
            server.handle_timeout(now);
        }
        while let Some(t) = server.poll_transmit() {
            metrics.datagrams_out.fetch_add(1, Ordering::Relaxed);
            send(&socket, &t.data, t.peer).await;
        }
        *metrics.server.lock() = (
            server.stats().clone(),
            server.observer_count(),
            server.transfers_in_progress(),
        );
        // Completed downloads to whoever listens; never waits (a lagging receiver loses
        // the oldest, as broadcast channels do).
        while let Some(d) = server.poll_transfer_done() {
            if let Some(tx) = &events {
                let _ = tx.send(d);
            }
        }
        hand_over(&mut server, blocks.as_ref(), app_tx.as_ref(), &mut blocks_sent, now);
        while let Some(t) = server.poll_transmit() {
            metrics.datagrams_out.fetch_add(1, Ordering::Relaxed);
            send(&socket, &t.data, t.peer).await;
        }
        let mut deadline = server
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        if blocks.is_some() && server.pending_blocks() > 0 {
            deadline = deadline.min(blocks_sent + BLOCK_INTERVAL);
        }
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Ok(()),
            r = socket.readable() => r?,
            Some(reply) = next_reply(&mut app_rx) => {
                server.answer(reply.id, reply.code, reply.payload);
                while let Ok(reply) = app_rx.as_mut().map_or(Err(mpsc::error::TryRecvError::Empty), mpsc::Receiver::try_recv) {
                    server.answer(reply.id, reply.code, reply.payload);
                }
                continue;
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                server.handle_timeout(Instant::now());
                continue;
            }
        }
        let mut handled = 0;
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let fd = socket.as_raw_fd();
            while handled < IO_LOOP_BOUND {
                match socket.try_io(tokio::io::Interest::READABLE, || batch.recv(fd)) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // ICMP errors from earlier sends surface here; they concern other peers.
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
                let now = Instant::now();
                handled += batch.received.len().max(1);
                batch.each_received(|peer, datagram, replies| {
                    metrics.datagrams_in.fetch_add(1, Ordering::Relaxed);
                    // Encoded straight into the batch's send buffer.
                    replies.queue_with(peer, |buf| {
                        let start = buf.len();
                        let replied = server.handle_datagram_into(now, peer, datagram, buf);
                        if let (true, Some(code)) = (replied, buf.get(start + 1)) {
                            metrics.replies[usize::from(*code)].fetch_add(1, Ordering::Relaxed);
                            metrics.datagrams_out.fetch_add(1, Ordering::Relaxed);
                        }
                        replied
                    });
                });
                for (peer, data) in batch.flush(fd) {
                    send(&socket, &data, peer).await;
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        while handled < IO_LOOP_BOUND {
            handled += 1;
            let (n, peer) = match socket.try_recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ICMP port-unreachable from an earlier send shows up here on some OSes.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => continue,
                Err(e) => return Err(e),
            };
            if n > MAX_DATAGRAM {
                tracing::trace!(%peer, "dropping a datagram longer than {MAX_DATAGRAM} bytes");
                continue;
            }
            metrics.datagrams_in.fetch_add(1, Ordering::Relaxed);
            if let Some(reply) = server.handle_datagram(Instant::now(), peer, &buf[..n]) {
                if let Some(code) = reply.get(1) {
                    metrics.replies[usize::from(*code)].fetch_add(1, Ordering::Relaxed);
                }
                metrics.datagrams_out.fetch_add(1, Ordering::Relaxed);
                send(&socket, reply, peer).await;
            }
        }
        if handled >= IO_LOOP_BOUND {
            // Let the runtime run anything else on this thread before the next round.
            tokio::task::yield_now().await;
        }
    }
}

pub(crate) async fn next_reply(rx: &mut Option<mpsc::Receiver<AppReply>>) -> Option<AppReply> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Give the blocks served and the requests received this round to whoever takes them,
/// without waiting: what does not fit is dropped (blocks, counted) or answered 5.03
/// (requests).
pub(crate) fn hand_over<R: Resources>(
    server: &mut Server<R>,
    blocks: Option<&BlockSink>,
    app: Option<&mpsc::Sender<AppRequest>>,
    blocks_sent: &mut Instant,
    now: Instant,
) {
    if let Some(sink) = blocks {
        let n = server.pending_blocks();
        if n >= BLOCK_BATCH || (n > 0 && now.saturating_duration_since(*blocks_sent) >= BLOCK_INTERVAL) {
            *blocks_sent = now;
            let batch = server.take_blocks();
            let n = batch.len() as u64;
            if sink.tx.try_send(batch).is_err() {
                sink.dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
    while let Some(req) = server.poll_request() {
        let id = req.id;
        let sent = app.is_some_and(|tx| tx.try_send(req).is_ok());
        if !sent {
            server.answer(
                id,
                Code::SERVICE_UNAVAILABLE,
                Bytes::from_static(b"busy: try again later"),
            );
        }
    }
}

async fn send(socket: &UdpSocket, data: &[u8], peer: SocketAddr) {
    let r = match socket.try_send_to(data, peer) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => socket.send_to(data, peer).await,
        r => r,
    };
    if let Err(e) = r {
        tracing::debug!(%peer, error = %e, "send failed");
    }
}

/// Run the server on a thread of its own with a single-threaded runtime (the CoAP loop is
/// one task; keeping it off the HTTP runtime's workers avoids cross-thread wake-ups).
pub fn spawn_thread<R: Resources + Send + 'static>(
    socket: std::net::UdpSocket,
    server: Server<R>,
    cancel: CancellationToken,
    hooks: Hooks,
) -> io::Result<std::thread::JoinHandle<io::Result<()>>> {
    std::thread::Builder::new().name("coap".into()).spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let socket = UdpSocket::from_std(socket)?;
            run(socket, server, cancel, hooks).await
        })
    })
}
