//! suitcase's manifest policy, apart from any protocol: how the server builds and signs the
//! manifests of publishes that bring none ([`signer`]: sequence numbers above every one a
//! publish-id ever had, URIs from the store's one path resolver, RIOT's limits for riot09),
//! and which uploaded manifests it accepts ([`uploads`]: every image digest and size must be
//! a file of the publish or one already stored).

pub mod signer;
pub mod uploads;

pub use signer::{BuildRequest, Signer, RIOT_MAX_MANIFEST, RIOT_MAX_URL, RIOT_VENDOR_DOMAIN};
