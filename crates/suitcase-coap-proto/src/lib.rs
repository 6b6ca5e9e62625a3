//! CoAP for suitcase, sans-IO: datagrams and time in, datagrams out. No sockets, no async
//! runtime, no store: the dependency graph says so (this crate depends on neither tokio nor
//! `suitcase-store`), and `suitcase-coap` drives it over UDP.
//!
//! * [`server::Server`]: the firmware server core (RFC 7252 messaging, RFC 7959 Block2 with
//!   ETag and Size2, 20-bit block numbers, Observe, Echo, downloads in progress).
//! * [`message`] and [`block`]: the hot-path codec (zero-copy request view, response encoder).
//! * [`trigger`]: the confirmable POST that tells a device to update, as a state machine.

pub mod block;
pub mod map;
pub mod message;
pub mod server;
pub mod trigger;

pub use map::MapResources;
pub use server::{
    AppRequest, BlockServed, Body, Config, RangeSource, Resource, Resources, Server, Stats, TransferDone, Transmit,
};
