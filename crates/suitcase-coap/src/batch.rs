//! Linux datagram batching for the driver: `recvmmsg` takes up to [`BATCH`] queued requests
//! in one system call and `sendmmsg` sends their replies in one, instead of two calls per
//! block. Other systems use the plain per-datagram path in `driver.rs`.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};

/// Datagrams per system call.
pub const BATCH: usize = 32;
const MTU: usize = crate::driver::MAX_DATAGRAM;

/// Reusable buffers for one batch in and one batch out.
pub struct Batch {
    rx: Vec<Vec<u8>>,
    rx_headers: MultiHeaders<SockaddrStorage>,
    tx_headers: MultiHeaders<SockaddrStorage>,
    /// (length, peer) of each datagram received by the last [`Batch::recv`]; a datagram
    /// that did not fit the buffer (MSG_TRUNC) has no peer, so it is never handled.
    pub received: Vec<(usize, Option<SocketAddr>)>,
    out: Vec<u8>,
    queued: Vec<(SocketAddr, usize, usize)>,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            rx: vec![vec![0u8; MTU]; BATCH],
            rx_headers: MultiHeaders::preallocate(BATCH, None),
            tx_headers: MultiHeaders::preallocate(BATCH, None),
            received: Vec::with_capacity(BATCH),
            out: Vec::with_capacity(BATCH * 1200),
            queued: Vec::with_capacity(BATCH),
        }
    }
}

fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v6) = a.as_sockaddr_in6() {
        return Some(SocketAddr::V6(SocketAddrV6::new(
            v6.ip(),
            v6.port(),
            v6.flowinfo(),
            v6.scope_id(),
        )));
    }
    a.as_sockaddr_in()
        .map(|v4| SocketAddr::V4(SocketAddrV4::new(v4.ip(), v4.port())))
}

/// The outgoing half of a [`Batch`], lent to [`Batch::each_received`].
pub struct Replies<'a> {
    out: &'a mut Vec<u8>,
    queued: &'a mut Vec<(SocketAddr, usize, usize)>,
}

impl Replies<'_> {
    /// Queue a reply (copied).
    pub fn queue(&mut self, peer: SocketAddr, reply: &[u8]) {
        let start = self.out.len();
        self.out.extend_from_slice(reply);
        self.queued.push((peer, start, self.out.len()));
    }

    /// Queue the reply `write` appends to the batch's buffer in place (no copy); `write`
    /// says whether it appended one.
    pub fn queue_with(&mut self, peer: SocketAddr, write: impl FnOnce(&mut Vec<u8>) -> bool) {
        let start = self.out.len();
        if write(self.out) {
            self.queued.push((peer, start, self.out.len()));
        } else {
            self.out.truncate(start);
        }
    }
}

impl Batch {
    /// Receive what is queued, up to [`BATCH`] datagrams, without blocking
    /// (`WouldBlock` when nothing is).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.received.clear();
        let mut iovs: Vec<[IoSliceMut<'_>; 1]> = self.rx.iter_mut().map(|b| [IoSliceMut::new(&mut b[..])]).collect();
        let results = recvmmsg(fd, &mut self.rx_headers, iovs.iter_mut(), MsgFlags::MSG_DONTWAIT, None)
            .map_err(io::Error::from)?;
        for r in results {
            // A truncated datagram is not the request that was sent: drop it (answering
            // what is left would reject or misread a message that was never seen whole).
            let whole = !r.flags.contains(MsgFlags::MSG_TRUNC);
            self.received
                .push((r.bytes, r.address.as_ref().and_then(to_std).filter(|_| whole)));
        }
        Ok(self.received.len())
    }

    /// Hand each received datagram (with a known peer) to `f`, which may queue replies.
    pub fn each_received(&mut self, mut f: impl FnMut(SocketAddr, &[u8], &mut Replies<'_>)) {
        let mut replies = Replies {
            out: &mut self.out,
            queued: &mut self.queued,
        };
        for (i, (len, peer)) in self.received.iter().enumerate() {
            if let Some(peer) = peer {
                f(*peer, &self.rx[i][..(*len).min(MTU)], &mut replies);
            }
        }
    }

    /// Send every queued reply with `sendmmsg`; what it could not take goes through `fallback`
    /// one by one. Returns the replies that are left for the fallback, in order.
    pub fn flush(&mut self, fd: RawFd) -> Vec<(SocketAddr, Vec<u8>)> {
        if self.queued.is_empty() {
            return Vec::new();
        }
        let sent = {
            let iovs: Vec<[IoSlice<'_>; 1]> = self
                .queued
                .iter()
                .map(|(_, a, b)| [IoSlice::new(&self.out[*a..*b])])
                .collect();
            let addrs: Vec<Option<SockaddrStorage>> = self
                .queued
                .iter()
                .map(|(p, _, _)| Some(SockaddrStorage::from(*p)))
                .collect();
            match sendmmsg(fd, &mut self.tx_headers, iovs.iter(), addrs, [], MsgFlags::MSG_DONTWAIT) {
                Ok(r) => r.count(),
                Err(_) => 0,
            }
        };
        let rest = self.queued[sent.min(self.queued.len())..]
            .iter()
            .map(|(p, a, b)| (*p, self.out[*a..*b].to_vec()))
            .collect();
        self.queued.clear();
        self.out.clear();
        rest
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn many_in_one_call_and_back() {
        let server = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let client = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let addr = server.local_addr().unwrap();
        for i in 0..40u8 {
            client.send_to(&[i; 10], addr).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut b = Batch::default();
        let n = b.recv(server.as_raw_fd()).unwrap();
        assert_eq!(n, BATCH);
        let mut first_bytes = Vec::new();
        b.each_received(|_, d, _| first_bytes.push((d.len(), d[0])));
        assert_eq!(first_bytes, (0..32u8).map(|i| (10, i)).collect::<Vec<_>>());
        assert_eq!(b.received[0].1, Some(client.local_addr().unwrap()));
        let n2 = b.recv(server.as_raw_fd()).unwrap();
        assert_eq!(n2, 8);
        // Answer the first three of this batch (32, 33, 34) with 100, 101, 102.
        b.each_received(|peer, d, replies| {
            if d[0] < 35 {
                replies.queue(peer, &[d[0] - 32 + 100; 7]);
            }
        });
        assert!(b.flush(server.as_raw_fd()).is_empty());
        assert_eq!(
            b.recv(server.as_raw_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        let mut buf = [0u8; 64];
        for i in 0..3u8 {
            let (n, from) = client.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from), (&[100 + i; 7][..], addr));
        }
        assert!(client.set_nonblocking(true).is_ok());
        assert!(client.recv_from(&mut buf).is_err(), "only three replies were queued");
    }
}
