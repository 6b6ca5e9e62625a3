//! Rollout gates: which version of a publish-id a requester may see through the paths that
//! name "the newest" (`<id>/manifest`, `<id>/riot.suit.latest.bin`, `<id>/<file>`, the ESP
//! routes). The fleet's rollouts hold one per publish-id while a staged rollout governs it;
//! the CoAP and HTTP servers ask it per request. Immutable paths (`<id>/v/<n>/<file>`, what
//! manifests carry) are never gated: a device told to fetch a version gets it.

use std::net::SocketAddr;

/// Who asks.
#[derive(Clone, Copy, Debug, Default)]
pub struct Requester<'a> {
    /// Its address (CoAP peer, HTTP client).
    pub addr: Option<SocketAddr>,
    /// The identity it gave (ESP MAC, esp32FOTA `addr`, device token name).
    pub identity: Option<&'a str>,
}

/// What a gate allows a requester.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allowed {
    /// No gate on this publish-id: the newest version.
    Newest,
    /// Versions up to this version number.
    UpTo(u64),
    /// No version at all (the gated version is the first one).
    Nothing,
}

impl Allowed {
    /// Whether version number `version` may be seen.
    pub fn admits(self, version: u64) -> bool {
        match self {
            Allowed::Newest => true,
            Allowed::UpTo(max) => version <= max,
            Allowed::Nothing => false,
        }
    }
}

/// A source of gates (implemented by the fleet).
pub trait Gate: Send + Sync + 'static {
    /// Whether any publish-id is gated (checked first, so an ungated server pays one load).
    fn active(&self) -> bool;
    /// What `who` may see of `publish_id`.
    fn allowed(&self, publish_id: &str, who: &Requester<'_>) -> Allowed;
    /// A number that grows whenever any answer may have changed (observers are re-checked).
    fn generation(&self) -> u64;
}
