//! Embed suitcase's CoAP server with resources of your own: a sans-IO [`Server`] over any
//! [`Resources`], driven by the crate's UDP driver on its own thread.
//!
//! ```sh
//! cargo run -p suitcase-coap --example custom_resources -- '[::1]:5683'
//! coap-client-notls -m get -b 64 'coap://[::1]/hello'          # block-wise, ETag, Size2
//! coap-client-notls -m get 'coap://[::1]/.well-known/core'   # not served here: 4.04
//! ```

#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use suitcase_coap::server::content_format;
use suitcase_coap::{driver, Config, Resource, Resources, Server};
use tokio_util::sync::CancellationToken;

/// Fixed resources by path: the content's first 8 SHA-256 bytes would make a better ETag;
/// here the length does.
struct Fixed(HashMap<String, Resource>);

impl Resources for Fixed {
    fn resolve(&self, segments: &[&str]) -> Option<Resource> {
        self.0.get(&segments.join("/")).cloned()
    }
}

fn resource(body: Vec<u8>) -> Resource {
    let mut etag = [0u8; 8];
    etag.copy_from_slice(&(body.len() as u64).to_be_bytes());
    Resource {
        body: Bytes::from(body).into(),
        etag,
        content_format: content_format::OCTET_STREAM,
        default_szx: None,
    }
}

fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("[::1]:5683")
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("address: {e}")))?;
    let mut map = HashMap::new();
    map.insert("hello".to_string(), resource(b"hello from suitcase-coap\n".repeat(20)));
    map.insert("big".to_string(), resource((0..100_000u32).map(|i| i as u8).collect()));
    let server = Server::new(Config::default(), Fixed(map), Instant::now(), 1);
    let socket = driver::bind(addr)?;
    println!("serving coap://{} (hello, big); Ctrl-C stops", socket.local_addr()?);
    let cancel = CancellationToken::new();
    let thread = driver::spawn_thread(socket, server, cancel.clone(), None)?;
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
