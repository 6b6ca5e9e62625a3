//! The thin tokio driver: one UDP socket, one task, datagrams and timers through [`Server`].

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::server::{Resources, Server};

/// Socket buffer size asked for, so bursts from thousands of devices are not dropped.
pub const SOCKET_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// Bind a UDP socket for CoAP: dual-stack when `addr` is `[::]`, large buffers.
pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
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
    UdpSocket::from_std(socket.into())
}

/// Serve until `cancel` fires.
pub async fn run<R: Resources>(socket: UdpSocket, mut server: Server<R>, cancel: CancellationToken) -> io::Result<()> {
    let mut buf = vec![0u8; 1500];
    loop {
        let deadline = server
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Ok(()),
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, peer)) => {
                    if let Some(reply) = server.handle_datagram(Instant::now(), peer, &buf[..n]) {
                        if let Err(e) = socket.send_to(reply, peer).await {
                            tracing::debug!(%peer, error = %e, "send failed");
                        }
                    }
                }
                // ICMP port-unreachable from an earlier send shows up here on some OSes.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
                Err(e) => return Err(e),
            },
            () = tokio::time::sleep_until(deadline.into()) => server.handle_timeout(Instant::now()),
        }
        while let Some(t) = server.poll_transmit() {
            if let Err(e) = socket.send_to(&t.data, t.peer).await {
                tracing::debug!(peer = %t.peer, error = %e, "send failed");
            }
        }
    }
}
