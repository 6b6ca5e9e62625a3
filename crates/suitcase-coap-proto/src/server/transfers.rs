//! Block-wise downloads in progress, per peer and path: which version a peer is getting (so
//! a publish in the middle of a download of a latest alias cannot splice two versions into
//! one image, for clients that ignore the ETag), and what to log when a download completes.
//!
//! Bounded: two generations rotated every EXCHANGE_LIFETIME, so an abandoned download is
//! forgotten after one to two lifetimes; a full generation (`max` entries) admits no new
//! download until the next rotation, so a flood of new downloads (spoofed sources included)
//! cannot evict the pins of downloads in progress, and the table never holds more than
//! `2 × max` entries. Downloads started while it is full are served unpinned (and not logged).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::block::BlockValue;

/// One download in progress.
#[derive(Clone, Debug)]
pub(super) struct Transfer {
    /// The path, segments joined with `/` (written once, at the first block).
    pub path: String,
    /// The representation being downloaded (its ETag).
    pub etag: [u8; 8],
    /// First block served.
    pub started: Instant,
    /// Blocks served (first transmissions).
    pub blocks: u32,
    /// Duplicated requests answered from the deduplication table.
    pub duplicates: u32,
    /// Block size of the last block served.
    pub block_size: usize,
}

/// A peer and a hash of the path's segments: looked up on every block without allocating.
/// Two paths of one peer with the same 64-bit hash are told apart by the stored path.
type Key = (SocketAddr, u64);

/// foldhash (randomly seeded per table): the table is on the path of every block, and
/// SipHash cost a measurable share of it.
type Hasher = foldhash::fast::RandomState;

fn same_path(t: &Transfer, segments: &[&str]) -> bool {
    let mut rest = t.path.as_str();
    for (i, s) in segments.iter().enumerate() {
        if i > 0 {
            match rest.strip_prefix('/') {
                Some(r) => rest = r,
                None => return false,
            }
        }
        match rest.strip_prefix(s) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    rest.is_empty()
}

pub(super) struct Transfers {
    current: HashMap<Key, Transfer, Hasher>,
    previous: HashMap<Key, Transfer, Hasher>,
    /// Hashes paths into keys.
    paths: Hasher,
    rotated: Instant,
    lifetime: Duration,
    max: usize,
    /// Completion log lines left in this second (log flooding is a denial of service too).
    log_budget: u32,
    log_window: Instant,
    suppressed: u64,
    /// Downloads not tracked because the table was full.
    pub untracked: u64,
}

/// Completion lines logged per second at most; the rest are counted and summarised.
const LOGS_PER_SECOND: u32 = 200;

impl Transfers {
    pub(super) fn new(now: Instant, lifetime: Duration, max: usize) -> Self {
        Transfers {
            current: HashMap::default(),
            previous: HashMap::default(),
            paths: Hasher::default(),
            rotated: now,
            lifetime,
            max: max.max(1),
            log_budget: LOGS_PER_SECOND,
            log_window: now,
            suppressed: 0,
            untracked: 0,
        }
    }

    /// The path's key: a hash of its segments (each followed by a separator byte, so
    /// `["a", "b/c"]` and `["a/b", "c"]` differ).
    fn path_hash(&self, segments: &[&str]) -> u64 {
        use std::hash::{BuildHasher as _, Hasher as _};
        let mut h = self.paths.build_hasher();
        for s in segments {
            h.write(s.as_bytes());
            h.write_u8(0xff);
        }
        h.finish()
    }

    pub(super) fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub(super) fn rotate(&mut self, now: Instant) {
        if now.saturating_duration_since(self.rotated) >= self.lifetime {
            self.previous = std::mem::take(&mut self.current);
            self.rotated = now;
        }
    }

    /// The ETag a peer's download of `path` is pinned to.
    pub(super) fn pinned(&self, peer: SocketAddr, path: &[&str]) -> Option<[u8; 8]> {
        let key = (peer, self.path_hash(path));
        self.current
            .get(&key)
            .or_else(|| self.previous.get(&key))
            .filter(|t| same_path(t, path))
            .map(|t| t.etag)
    }

    fn entry(&mut self, now: Instant, peer: SocketAddr, path: &[&str]) -> Option<&mut Transfer> {
        self.rotate(now);
        let key: Key = (peer, self.path_hash(path));
        if !self.current.contains_key(&key) {
            let moved = self.previous.remove(&key)?;
            self.current.insert(key, moved);
        }
        self.current.get_mut(&key).filter(|t| same_path(t, path))
    }

    /// A duplicated request of `path` from `peer` was answered again.
    pub(super) fn duplicate(&mut self, now: Instant, peer: SocketAddr, path: &[&str]) {
        if let Some(t) = self.entry(now, peer, path) {
            t.duplicates = t.duplicates.saturating_add(1);
        }
    }

    /// `block` of the representation `etag` was served; returns the finished transfer after
    /// its last block.
    pub(super) fn served(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        path: &[&str],
        etag: [u8; 8],
        block: BlockValue,
    ) -> Option<Transfer> {
        self.rotate(now);
        let key = (peer, self.path_hash(path));
        if let Some(moved) = self.previous.remove(&key) {
            self.current.insert(key, moved);
        }
        let same = |t: &Transfer| block.num != 0 && t.etag == etag && same_path(t, path);
        match self.current.get_mut(&key) {
            Some(t) if same(t) => {
                t.blocks = t.blocks.saturating_add(1);
                t.block_size = block.size();
            }
            // A new download, or the same key restarting (replaced in place, no new entry);
            // a full generation admits no new key.
            existing => {
                if existing.is_none() && self.current.len() >= self.max {
                    self.untracked += 1;
                    return None;
                }
                let t = Transfer {
                    path: path.join("/"),
                    etag,
                    started: now,
                    blocks: 1,
                    duplicates: 0,
                    block_size: block.size(),
                };
                self.current.insert(key, t);
            }
        }
        if block.more {
            return None;
        }
        self.current.remove(&key)
    }

    /// Whether a completion line may be logged now (at most [`LOGS_PER_SECOND`]).
    pub(super) fn may_log(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.log_window) >= Duration::from_secs(1) {
            if self.suppressed > 0 {
                tracing::info!(
                    suppressed = self.suppressed,
                    "coap transfer lines suppressed in the last second"
                );
            }
            self.log_window = now;
            self.log_budget = LOGS_PER_SECOND;
            self.suppressed = 0;
        }
        if self.log_budget == 0 {
            self.suppressed += 1;
            return false;
        }
        self.log_budget -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn blk(num: u32, size: usize, more: bool) -> BlockValue {
        BlockValue {
            num,
            more,
            szx: (size.trailing_zeros() - 4) as u8,
        }
    }

    #[test]
    fn a_download_is_pinned_until_its_last_block_and_forgotten_when_abandoned() {
        let t0 = Instant::now();
        let mut t = Transfers::new(t0, Duration::from_secs(10), 100);
        let p: SocketAddr = "[::1]:1".parse().unwrap();
        assert!(t.served(t0, p, &["a", "f"][..], [1; 8], blk(0, 64, true)).is_none());
        assert_eq!(t.pinned(p, &["a", "f"][..]), Some([1; 8]));
        assert_eq!(t.pinned(p, &["a", "g"][..]), None);
        t.duplicate(t0, p, &["a", "f"][..]);
        assert!(t.served(t0, p, &["a", "f"][..], [1; 8], blk(1, 64, true)).is_none());
        let done = t.served(t0, p, &["a", "f"][..], [1; 8], blk(2, 64, false)).unwrap();
        assert_eq!((done.blocks, done.duplicates, done.block_size), (3, 1, 64));
        assert_eq!(done.path, "a/f");
        assert_eq!(t.pinned(p, &["a", "f"][..]), None, "finished");
        // A segment holding '/' is another path, though it joins the same.
        t.served(t0, p, &["a", "f"][..], [1; 8], blk(0, 64, true));
        assert_eq!(t.pinned(p, &["a/f"][..]), None);
        // Abandoned after block 0: gone after two lifetimes.
        t.served(t0, p, &["a", "f"][..], [2; 8], blk(0, 64, true));
        t.rotate(t0 + Duration::from_secs(11));
        assert_eq!(t.pinned(p, &["a", "f"][..]), Some([2; 8]));
        t.rotate(t0 + Duration::from_secs(22));
        assert_eq!(t.pinned(p, &["a", "f"][..]), None);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn the_table_is_bounded_and_a_flood_cannot_evict_a_pin() {
        let t0 = Instant::now();
        let mut t = Transfers::new(t0, Duration::from_secs(1000), 50);
        let device: SocketAddr = "[2001:db8::7]:5683".parse().unwrap();
        t.served(t0, device, &["a", "f"][..], [7; 8], blk(0, 64, true));
        for port in 0..1000u16 {
            let p: SocketAddr = format!("[::1]:{port}").parse().unwrap();
            t.served(t0, p, &["a", "f"][..], [1; 8], blk(0, 64, true));
        }
        assert!(t.len() <= 100, "{}", t.len());
        assert_eq!(t.untracked, 951);
        assert_eq!(
            t.pinned(device, &["a", "f"][..]),
            Some([7; 8]),
            "the device's pin survived the flood"
        );
        assert!(t
            .served(t0, device, &["a", "f"][..], [7; 8], blk(1, 64, false))
            .is_some());
    }

    #[test]
    fn completion_lines_are_rate_limited() {
        let t0 = Instant::now();
        let mut t = Transfers::new(t0, Duration::from_secs(10), 10);
        let allowed = (0..1000).filter(|_| t.may_log(t0)).count();
        assert_eq!(allowed, LOGS_PER_SECOND as usize);
        assert!(t.may_log(t0 + Duration::from_secs(1)));
    }
}
