//! CoAP for suitcase over UDP: the thin tokio [`driver`] (with Linux datagram batching) that
//! runs `suitcase-coap-proto`'s sans-IO [`Server`], the store's files as CoAP
//! [`resources`], and the tokio [`trigger_client`] that sends triggers. The protocol itself (codec,
//! Block2, server core, trigger exchange) lives in `suitcase-coap-proto`, re-exported here.

#[cfg(target_os = "linux")]
pub mod batch;
pub mod driver;
pub mod dtls_driver;
pub mod resources;
pub mod trigger_client;

pub use resources::StoreResources;
pub use suitcase_coap_proto::{block, map, message, server, trigger};
pub use suitcase_coap_proto::{
    AppRequest, BlockServed, Body, Config, MapResources, RangeSource, Resource, Resources, Server, Stats, TransferDone,
    Transmit,
};
