//! HelloVerifyRequest cookies (RFC 6347 §4.2.1) checked without per-peer state:
//! `window (2 bytes) || HMAC-SHA-256(secret, window || address || port)[..16]`, where the
//! window counts [`WINDOW`]s since the endpoint started; a cookie of this window or the
//! one before is accepted (so it lives between one and two windows).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// How long one cookie window is.
pub(crate) const WINDOW: Duration = Duration::from_secs(30);
/// Cookie length: 2 bytes of window and 16 of MAC.
pub(crate) const LEN: usize = 18;

/// What the cookie callbacks need to know of the datagram being handled.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Context {
    pub(crate) peer: SocketAddr,
    pub(crate) now: Instant,
}

pub(crate) struct Keys {
    secret: [u8; 32],
    start: Instant,
}

impl Keys {
    pub(crate) fn new(secret: [u8; 32], start: Instant) -> Self {
        Keys { secret, start }
    }

    fn window(&self, now: Instant) -> u16 {
        let w = now.saturating_duration_since(self.start).as_secs() / WINDOW.as_secs();
        // Wraps after 22 days of 30 s windows; the previous window is then 0xffff.
        (w & 0xffff) as u16
    }

    fn mac(&self, window: u16, peer: SocketAddr) -> [u8; 16] {
        let mut out = [0u8; 16];
        let Ok(mut m) = Hmac::<Sha256>::new_from_slice(&self.secret) else {
            return out;
        };
        m.update(&window.to_be_bytes());
        match peer {
            SocketAddr::V4(a) => m.update(&a.ip().to_ipv6_mapped().octets()),
            SocketAddr::V6(a) => m.update(&a.ip().octets()),
        }
        m.update(&peer.port().to_be_bytes());
        out.copy_from_slice(&m.finalize().into_bytes()[..16]);
        out
    }

    /// Write the cookie for `cx` into `buf`; its length.
    pub(crate) fn generate(&self, cx: Context, buf: &mut [u8]) -> usize {
        let Some(buf) = buf.get_mut(..LEN) else { return 0 };
        let w = self.window(cx.now);
        buf[..2].copy_from_slice(&w.to_be_bytes());
        buf[2..].copy_from_slice(&self.mac(w, cx.peer));
        LEN
    }

    /// Whether `cookie` was made for `cx.peer` in this window or the one before.
    pub(crate) fn verify(&self, cx: Context, cookie: &[u8]) -> bool {
        if cookie.len() != LEN {
            return false;
        }
        let w = u16::from_be_bytes([cookie[0], cookie[1]]);
        let now = self.window(cx.now);
        if w != now && w != now.wrapping_sub(1) {
            return false;
        }
        let expected = self.mac(w, cx.peer);
        // Constant time: a timing oracle would let a spoofer forge a cookie byte by byte.
        let mut diff = 0u8;
        for (a, b) in expected.iter().zip(&cookie[2..]) {
            diff |= a ^ b;
        }
        diff == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_holds_for_its_peer_and_two_windows_only() {
        let start = Instant::now();
        let k = Keys::new([7; 32], start);
        let a: SocketAddr = "[2001:db8::1]:5684".parse().unwrap();
        let b: SocketAddr = "[2001:db8::1]:5685".parse().unwrap();
        let mut c = [0u8; 32];
        let n = k.generate(Context { peer: a, now: start }, &mut c);
        assert_eq!(n, LEN);
        assert!(k.verify(Context { peer: a, now: start }, &c[..n]));
        assert!(k.verify(
            Context {
                peer: a,
                now: start + WINDOW
            },
            &c[..n]
        ));
        assert!(!k.verify(
            Context {
                peer: a,
                now: start + 2 * WINDOW
            },
            &c[..n]
        ));
        assert!(!k.verify(Context { peer: b, now: start }, &c[..n]));
        let mut bad = c;
        bad[5] ^= 1;
        assert!(!k.verify(Context { peer: a, now: start }, &bad[..n]));
        assert!(!k.verify(Context { peer: a, now: start }, &c[..n - 1]));
        // Another server's secret.
        let other = Keys::new([8; 32], start);
        assert!(!other.verify(Context { peer: a, now: start }, &c[..n]));
    }
}
