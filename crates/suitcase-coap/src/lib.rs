//! CoAP for suitcase: a sans-IO firmware server core ([`Server`]: datagram in, datagram out,
//! RFC 7252 messaging + RFC 7959 Block2 with ETag and Size2, 20-bit block numbers) and a thin
//! tokio UDP [`driver`]. The hot-path codec is our own (`message`); coap-lite is the notify
//! client's codec and the tests' reference.

#[cfg(target_os = "linux")]
pub mod batch;
pub mod block;
pub mod driver;
pub mod message;
pub mod notify;
pub mod resources;
pub mod server;

pub use resources::StoreResources;
pub use server::{Body, Config, RangeSource, Resource, Resources, Server, Stats, TransferDone, Transmit};
