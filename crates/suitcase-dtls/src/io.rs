//! The BIO under each OpenSSL session: one datagram in at a time, datagrams out into one
//! outbox the endpoint drains after every call (no allocation per datagram).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// Bytes an outbox holds at most before further datagrams are dropped (the endpoint drains it
/// after every call, so only a burst of retransmissions to many peers comes near).
const OUTBOX_MAX_BYTES: usize = 4 << 20;

/// Datagrams to send, packed in one buffer.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    buf: Vec<u8>,
    items: Vec<(SocketAddr, usize, usize)>,
    pub(crate) dropped: u64,
}

impl Outbox {
    fn push(&mut self, peer: SocketAddr, data: &[u8]) {
        if self.buf.len() + data.len() > OUTBOX_MAX_BYTES {
            self.dropped += 1;
            return;
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(data);
        self.items.push((peer, start, self.buf.len()));
    }

    /// Hand every datagram to `send` and empty the outbox.
    pub(crate) fn drain(&mut self, mut send: impl FnMut(SocketAddr, &[u8])) {
        for &(peer, a, b) in &self.items {
            if let Some(d) = self.buf.get(a..b) {
                send(peer, d);
            }
        }
        self.items.clear();
        self.buf.clear();
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// One session's datagram "socket": `read` gives the datagram being handled (once), `write`
/// queues one datagram to the session's peer.
#[derive(Debug)]
pub(crate) struct Dgram {
    pub(crate) peer: SocketAddr,
    rx: Vec<u8>,
    has_rx: bool,
    out: Arc<Mutex<Outbox>>,
}

impl Dgram {
    pub(crate) fn new(peer: SocketAddr, out: Arc<Mutex<Outbox>>) -> Self {
        Dgram {
            peer,
            rx: Vec::new(),
            has_rx: false,
            out,
        }
    }

    /// The next `read` returns `data`.
    pub(crate) fn feed(&mut self, data: &[u8]) {
        self.rx.clear();
        self.rx.extend_from_slice(data);
        self.has_rx = true;
    }

    /// Forget a datagram OpenSSL did not read.
    pub(crate) fn clear(&mut self) {
        self.has_rx = false;
        if self.rx.capacity() > 2048 {
            self.rx = Vec::new();
        }
    }
}

impl Read for Dgram {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.has_rx {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.has_rx = false;
        // A datagram longer than the buffer is cut, as a socket would (OpenSSL's buffer
        // holds the largest record).
        let n = self.rx.len().min(buf.len());
        buf[..n].copy_from_slice(&self.rx[..n]);
        Ok(n)
    }
}

impl Write for Dgram {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.lock().push(self.peer, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
