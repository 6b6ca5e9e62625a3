//! Observe (RFC 7641) on the server: registrations (one per peer and resource, at most
//! `max_observers_per_peer` per host), acknowledgements, change notifications and the
//! liveness check of silent observers.

use std::cmp::Reverse;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Config, ObsKey, Observer, Pending, Resources, Server, Token, Transmit};
use crate::block::BlockValue;
use crate::message::{self, Code, MsgType, ResponseSpec};

impl<R: Resources> Server<R> {
    pub(super) fn register(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        path: Arc<[String]>,
        token: Token,
        szx: Option<u8>,
        etag: [u8; 8],
    ) -> bool {
        let key = (peer, path);
        if let Some(o) = self.observers.get_mut(&key) {
            // Re-registration (same peer and resource): replace the token.
            o.token = token;
            o.szx = szx;
            o.etag = etag;
            o.heard = now;
            return true;
        }
        if self.observers.len() >= self.config.max_observers {
            self.stats.observers_refused += 1;
            tracing::warn!(
                observers = self.observers.len(),
                "observer limit reached, serving without Observe"
            );
            return false;
        }
        let of_peer = self.observers_of.get(&host_key(peer)).copied().unwrap_or(0);
        if of_peer >= self.config.max_observers_per_peer {
            self.stats.observers_refused += 1;
            tracing::debug!(%peer, observations = of_peer, "per-peer observe limit reached, serving without Observe");
            return false;
        }
        tracing::debug!(peer = %key.0, path = %key.1.join("/"), "observer registered");
        *self.observers_of.entry(host_key(peer)).or_default() += 1;
        self.observers.insert(
            key,
            Observer {
                token,
                szx,
                etag,
                pending: None,
                heard: now,
            },
        );
        true
    }

    pub(super) fn deregister(&mut self, key: &ObsKey) {
        if let Some(o) = self.observers.remove(key) {
            tracing::debug!(peer = %key.0, path = %key.1.join("/"), "observer removed");
            if let Some(p) = o.pending {
                self.pending_mids.remove(&(key.0, p.mid));
            }
            let host = host_key(key.0);
            if let Some(n) = self.observers_of.get_mut(&host) {
                *n -= 1;
                if *n == 0 {
                    self.observers_of.remove(&host);
                }
            }
        }
    }

    pub(super) fn peer_answered(&mut self, now: Instant, peer: SocketAddr, mid: u16, reset: bool) {
        let Some(path) = self.pending_mids.remove(&(peer, mid)) else {
            return;
        };
        let key = (peer, path);
        if reset {
            // RST to a notification: the client lost interest (RFC 7641 §3.6).
            self.deregister(&key);
        } else if let Some(o) = self.observers.get_mut(&key) {
            o.pending = None;
            o.heard = now;
        }
    }

    /// Observers not heard from for `observe_lifetime` get a confirmable notification of
    /// the current state; one that never acknowledges it is removed by the retransmission
    /// timer.
    pub(super) fn check_liveness(&mut self, now: Instant) {
        let stale: Vec<ObsKey> = self
            .observers
            .iter()
            .filter(|(_, o)| {
                o.pending.is_none() && now.saturating_duration_since(o.heard) >= self.config.observe_lifetime
            })
            .map(|(k, _)| k.clone())
            .collect();
        if !stale.is_empty() {
            tracing::debug!(
                observers = stale.len(),
                "checking that silent observers are still there"
            );
        }
        for key in stale {
            self.notify(now, key, true);
        }
    }

    pub(super) fn notify_changed(&mut self, now: Instant) {
        let keys: Vec<ObsKey> = self.observers.keys().cloned().collect();
        for key in keys {
            self.notify(now, key, false);
        }
    }

    /// Send `key` a confirmable notification if its resource changed (or `always`).
    pub(super) fn notify(&mut self, now: Instant, key: ObsKey, always: bool) {
        {
            let segments: Vec<&str> = key.1.iter().map(String::as_str).collect();
            let Some(res) = self.resources.resolve_for(key.0, &segments) else {
                // The resource is gone (its versions were removed): a final 4.04 ends the
                // observation (RFC 7641 §4.2).
                if let Some(token) = self.observers.get(&key).map(|o| o.token) {
                    let mut data = Vec::new();
                    let spec = ResponseSpec::error(Code::NOT_FOUND, "removed");
                    let mid = self.mid();
                    message::encode(&mut data, MsgType::Non, mid, token.as_slice(), &spec);
                    self.transmits.push_back(Transmit { peer: key.0, data });
                }
                self.deregister(&key);
                return;
            };
            let Some(o) = self.observers.get(&key) else { return };
            if o.etag == res.etag && !always {
                return;
            }
            let block = o.szx.map(|szx| BlockValue {
                num: 0,
                more: false,
                szx,
            });
            let Ok(mut spec) = self.content(&res, block, false) else {
                return;
            };
            self.observe_seq = (self.observe_seq + 1) & 0x00ff_ffff;
            spec.observe = Some(self.observe_seq);
            let mid = self.mid();
            let timeout = self.config.ack_timeout.mul_f64(self.random_factor());
            let Some(o) = self.observers.get_mut(&key) else {
                return;
            };
            let mut data = Vec::new();
            message::encode(&mut data, MsgType::Con, mid, o.token.as_slice(), &spec);
            o.etag = res.etag;
            if let Some(old) = o.pending.take() {
                self.pending_mids.remove(&(key.0, old.mid));
            }
            let due = now + timeout;
            o.pending = Some(Pending {
                mid,
                attempts: 0,
                timeout,
                due,
                data: data.clone(),
            });
            self.pending_mids.insert((key.0, mid), key.1.clone());
            self.timers.push(Reverse((due, key.0, key.1.clone())));
            self.stats.notifications += 1;
            tracing::debug!(peer = %key.0, path = %key.1.join("/"), seq = self.observe_seq, "notification queued");
            self.transmits.push_back(Transmit { peer: key.0, data });
        }
    }
}

/// Who counts as one host for the per-host Observe limit: an IPv4 address (IPv4-mapped
/// IPv6 included) or an IPv6 /64 prefix.
pub(super) type HostKey = std::net::IpAddr;

pub(super) fn host_key(peer: SocketAddr) -> HostKey {
    match peer.ip().to_canonical() {
        std::net::IpAddr::V6(a) => {
            let s = a.segments();
            std::net::IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// How often observers are checked for staleness.
pub(super) fn liveness_interval(config: &Config) -> Duration {
    (config.observe_lifetime / 4).clamp(Duration::from_millis(10), Duration::from_secs(60))
}
