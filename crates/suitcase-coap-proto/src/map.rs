//! [`MapResources`]: resources held in a map by path, for embedding the server with content of
//! your own (see `suitcase-coap`'s `custom_resources` example), for tests and for fuzzing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use bytes::Bytes;

use crate::server::{content_format, Resource, Resources};

/// Resources by path (`a/b/c`), changeable while a server serves them: every change moves
/// the generation, so observers are notified.
#[derive(Default)]
pub struct MapResources {
    map: RwLock<HashMap<String, Resource>>,
    posts: RwLock<std::collections::HashSet<String>>,
    /// Paths that exist but cannot be read now (answered 5.03).
    unavailable: RwLock<std::collections::HashSet<String>>,
    generation: AtomicU64,
}

impl MapResources {
    /// No resources.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serve `body` at `path` (segments joined by `/`) as application/octet-stream with `etag`.
    pub fn set(&self, path: &str, body: impl Into<Bytes>, etag: [u8; 8]) {
        let r = Resource {
            body: body.into().into(),
            etag,
            content_format: content_format::OCTET_STREAM,
            default_szx: None,
        };
        if let Ok(mut m) = self.map.write() {
            m.insert(path.to_string(), r);
        }
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Hand POSTs to `path` to the application ([`crate::Server::poll_request`]).
    pub fn accept_posts(&self, path: &str) {
        if let Ok(mut p) = self.posts.write() {
            p.insert(path.to_string());
        }
    }

    /// Say that `path` exists but cannot be read now (`false`: not any more): a GET is
    /// answered 5.03 with Max-Age instead of 4.04. Only a path without a resource is.
    pub fn set_unavailable(&self, path: &str, unavailable: bool) {
        if let Ok(mut u) = self.unavailable.write() {
            if unavailable {
                u.insert(path.to_string());
            } else {
                u.remove(path);
            }
        }
    }

    /// Stop serving `path`.
    pub fn remove(&self, path: &str) {
        if let Ok(mut m) = self.map.write() {
            m.remove(path);
        }
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The whole body at `path`, if any.
    pub fn body(&self, path: &str) -> Option<Bytes> {
        let m = self.map.read().ok()?;
        let b = &m.get(path)?.body;
        b.slice(0, b.len())
    }
}

impl Resources for MapResources {
    fn resolve(&self, segments: &[&str]) -> Option<Resource> {
        self.map.read().ok()?.get(&segments.join("/")).cloned()
    }
    fn accepts_post(&self, segments: &[&str]) -> bool {
        self.posts.read().is_ok_and(|p| p.contains(&segments.join("/")))
    }
    fn unavailable(&self, segments: &[&str]) -> bool {
        self.unavailable.read().is_ok_and(|u| u.contains(&segments.join("/")))
    }
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}
