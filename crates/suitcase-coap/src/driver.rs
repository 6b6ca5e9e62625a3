//! The thin tokio driver: one UDP socket, one task, datagrams and timers through [`Server`].

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::server::{Resources, Server, TransferDone};

/// Where the driver sends completed downloads.
pub type Events = tokio::sync::broadcast::Sender<TransferDone>;

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
    events: Option<Events>,
) -> io::Result<()> {
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
            send(&socket, &t.data, t.peer).await;
        }
        // Completed downloads to whoever listens; never waits (a lagging receiver loses
        // the oldest, as broadcast channels do).
        while let Some(d) = server.poll_transfer_done() {
            if let Some(tx) = &events {
                let _ = tx.send(d);
            }
        }
        let deadline = server
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Ok(()),
            r = socket.readable() => r?,
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
                    // Encoded straight into the batch's send buffer.
                    replies.queue_with(peer, |buf| server.handle_datagram_into(now, peer, datagram, buf));
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
            if let Some(reply) = server.handle_datagram(Instant::now(), peer, &buf[..n]) {
                send(&socket, reply, peer).await;
            }
        }
        if handled >= IO_LOOP_BOUND {
            // Let the runtime run anything else on this thread before the next round.
            tokio::task::yield_now().await;
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
    events: Option<Events>,
) -> io::Result<std::thread::JoinHandle<io::Result<()>>> {
    std::thread::Builder::new().name("coap".into()).spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let socket = UdpSocket::from_std(socket)?;
            run(socket, server, cancel, events).await
        })
    })
}
