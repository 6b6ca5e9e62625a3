//! Embed suitcase's CoAP server with resources of your own: a sans-IO [`Server`] over any
//! [`Resources`], driven by the crate's UDP driver on its own thread.
//!
//! ```sh
//! cargo run -p suitcase-coap --example custom_resources -- '[::1]:5683'
//! coap-client-notls -m get -b 64 'coap://[::1]/hello'          # block-wise, ETag, Size2
//! coap-client-notls -m get 'coap://[::1]/.well-known/core'   # not served here: 4.04
//! ```

#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::time::Instant;

use suitcase_coap::{driver, Config, MapResources, Server};
use tokio_util::sync::CancellationToken;

fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("[::1]:5683")
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("address: {e}")))?;
    // Resources of your own: any `Resources` implementation; here the crate's map, whose
    // contents may change while it is served (observers are notified).
    let resources = MapResources::new();
    resources.set("hello", b"hello from suitcase-coap\n".repeat(20), *b"hello-01");
    resources.set(
        "big",
        (0..100_000u32).map(|i| i as u8).collect::<Vec<u8>>(),
        *b"big---01",
    );
    let server = Server::new(Config::default(), resources, Instant::now(), 1);
    let socket = driver::bind(addr)?;
    println!("serving coap://{} (hello, big); Ctrl-C stops", socket.local_addr()?);
    let cancel = CancellationToken::new();
    let thread = driver::spawn_thread(socket, server, cancel.clone(), driver::Hooks::default())?;
    // Stop on Ctrl-C: a tiny runtime only for the signal.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
    cancel.cancel();
    thread
        .join()
        .map_err(|_| std::io::Error::other("the CoAP thread panicked"))?
}
