//! Echo values (RFC 9175 §2.4) that prove a peer receives at its source address, checked
//! without per-peer state: `time (4 bytes, seconds since start) || MAC (8 bytes)` where the
//! MAC is HMAC-SHA-256 over the time and the peer's address under a per-process secret.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// How long an Echo value is accepted after it was sent.
const FRESHNESS: Duration = Duration::from_secs(60);

pub(super) struct EchoKeys {
    secret: [u8; 32],
    start: Instant,
}

impl EchoKeys {
    pub(super) fn new(secret: [u8; 32], start: Instant) -> Self {
        EchoKeys { secret, start }
    }

    fn mac(&self, t: [u8; 4], peer: SocketAddr) -> Option<Hmac<Sha256>> {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.secret).ok()?;
        m.update(&t);
        match peer {
            SocketAddr::V4(a) => m.update(&a.ip().to_ipv6_mapped().octets()),
            SocketAddr::V6(a) => m.update(&a.ip().octets()),
        }
        m.update(&peer.port().to_be_bytes());
        Some(m)
    }

    fn secs(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.start).as_secs()).unwrap_or(u32::MAX)
    }

    /// The Echo value for `peer` now.
    pub(super) fn value(&self, now: Instant, peer: SocketAddr) -> [u8; 12] {
        let t = self.secs(now).to_be_bytes();
        let mut out = [0u8; 12];
        out[..4].copy_from_slice(&t);
        if let Some(m) = self.mac(t, peer) {
            out[4..].copy_from_slice(&m.finalize().into_bytes()[..8]);
        }
        out
    }

    /// Is `echoed` a value this server gave `peer` within the freshness window?
    pub(super) fn check(&self, now: Instant, peer: SocketAddr, echoed: &[u8]) -> bool {
        let Ok(v) = <[u8; 12]>::try_from(echoed) else {
            return false;
        };
        let t = [v[0], v[1], v[2], v[3]];
        let age = self.secs(now).checked_sub(u32::from_be_bytes(t));
        if age.is_none_or(|a| u64::from(a) > FRESHNESS.as_secs()) {
            return false;
        }
        self.mac(t, peer)
            .is_some_and(|m| m.verify_truncated_left(&v[4..]).is_ok())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn values_verify_for_their_peer_only_and_expire() {
        let t0 = Instant::now();
        let k = EchoKeys::new([7; 32], t0);
        let a: SocketAddr = "[2001:db8::1]:5683".parse().unwrap();
        let b: SocketAddr = "[2001:db8::1]:5684".parse().unwrap();
        let v = k.value(t0, a);
        assert!(k.check(t0 + Duration::from_secs(5), a, &v));
        assert!(!k.check(t0, b, &v), "another port");
        assert!(!k.check(t0 + Duration::from_secs(61), a, &v), "too old");
        let mut forged = v;
        forged[11] ^= 1;
        assert!(!k.check(t0, a, &forged));
        assert!(!k.check(t0, a, &v[..11]));
        let other = EchoKeys::new([8; 32], t0);
        assert!(!other.check(t0, a, &v), "another secret");
    }
}
