//! A CoAP load generator shaped like a fleet of devices: each simulated device has its own
//! UDP socket, sends confirmable Block2 GETs with one request in flight (NSTART = 1),
//! retransmits with exponential back-off, and compares every block with the expected image.
//!
//! The binary is `loadgen`; `coap.rs` holds the few bytes of CoAP it needs, written here
//! rather than borrowed from the server under test. `fleetsim` (module `fleet`) simulates a
//! fleet being updated: devices that take CoAP triggers or observe the manifest, download
//! and check the image the signed manifest names, and report the result. `charts` (the
//! binary and the module) draws the benchmark scripts' TSV results as SVG.

pub mod charts;
pub mod coap;
pub mod device;
pub mod fleet;
pub mod rng;
