//! What the server hands to the application instead of answering itself: POSTs it accepts
//! (device reports), answered later through [`Server::answer`](super::Server::answer), and
//! the blocks it served, for fleet tracking. Both are bounded; neither ever waits.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;

use super::Token;
use crate::message::MsgType;

/// A request for the application (a POST the resources accept), to be answered with
/// [`Server::answer`](super::Server::answer) before the configured timeout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppRequest {
    /// Pass it back to `answer`.
    pub id: u64,
    /// Who sent it.
    pub peer: SocketAddr,
    /// The Uri-Path, segments joined with `/`.
    pub path: String,
    /// Its Content-Format, when given.
    pub content_format: Option<u16>,
    /// Its payload (at most one datagram: Block1 is refused).
    pub payload: Bytes,
}

/// One block (or a whole representation) served to a peer: a compact, allocation-free
/// record for the fleet's progress tracking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockServed {
    /// Who got it.
    pub peer: SocketAddr,
    /// The representation's ETag.
    pub etag: [u8; 8],
    /// The offset just past the block's last byte.
    pub end: u64,
    /// The representation's size.
    pub size: u64,
}

/// A request waiting for the application's answer.
pub(super) struct Deferred {
    pub(super) peer: SocketAddr,
    pub(super) mid: u16,
    pub(super) token: Token,
    pub(super) reply_type: MsgType,
    pub(super) reply_mid: u16,
    /// Largest reply allowed (an unverified address under the amplification limit).
    pub(super) limit: Option<usize>,
}

/// Requests handed out and not answered yet, and those not collected yet.
#[derive(Default)]
pub(super) struct Apps {
    pub(super) pending: HashMap<u64, Deferred>,
    /// Expiry of each handed-out id, oldest first (answered ids stay until they expire).
    pub(super) expiry: VecDeque<(Instant, u64)>,
    pub(super) queue: VecDeque<AppRequest>,
    next_id: u64,
}

impl Apps {
    pub(super) fn full(&self, max: usize) -> bool {
        self.pending.len() >= max
    }

    pub(super) fn defer(&mut self, expires: Instant, d: Deferred, mut req: AppRequest) {
        self.next_id = self.next_id.wrapping_add(1);
        req.id = self.next_id;
        self.expiry.push_back((expires, req.id));
        self.pending.insert(req.id, d);
        self.queue.push_back(req);
    }

    /// The next expired request that was never answered.
    pub(super) fn expired(&mut self, now: Instant) -> Option<Deferred> {
        while let Some(&(at, id)) = self.expiry.front() {
            if at > now {
                return None;
            }
            self.expiry.pop_front();
            if let Some(d) = self.pending.remove(&id) {
                // Not collected either: withdraw it, so nobody answers it late.
                self.queue.retain(|r| r.id != id);
                return Some(d);
            }
        }
        None
    }

    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.expiry.front().map(|(t, _)| *t)
    }
}
