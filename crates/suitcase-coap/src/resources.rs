//! The store's files as CoAP resources:
//! `/<publish-id>/manifest`, `/<publish-id>/<file>`, `/<publish-id>/v/<seq>/<file>` and
//! `/.well-known/core`. Paths are resolved by the store's one resolver
//! ([`suitcase_store::paths`]), which accepts exactly one spelling per resource.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use suitcase_store::{paths, Blob, FileEntry, Gate, Requester, Sha256, Store};

use crate::server::{content_format, Body, RangeSource, Resource, Resources};

/// What a path resolved to in one store generation: a file's identity, never its content
/// (contents live in the store's weighted cache, so this table stays small).
#[derive(Clone)]
struct Resolution {
    generation: u64,
    file: Option<Arc<(FileEntry, Option<u16>)>>,
}

/// Resolves CoAP paths against a [`Store`].
pub struct StoreResources {
    store: Arc<dyn Store>,
    /// Canonical path → resolution (the hot path of every block). Bounded in entries; each
    /// entry is a path and a file entry (a few hundred bytes at most).
    resolved: quick_cache::sync::Cache<String, Resolution>,
    /// `/.well-known/core`, rebuilt when the store's generation moves.
    link_format: Mutex<Option<(u64, Resource)>>,
    /// Whether `POST /<publish-id>/report` is taken (by the fleet).
    reports: bool,
    /// Rollouts' gates: which version of a publish-id each peer sees through the aliases.
    gate: Option<Arc<dyn Gate>>,
    /// Serve nothing but `/.well-known/core` (plain CoAP when DTLS is required).
    discovery_only: bool,
    /// The last lookup found its file but the store could not read it now (cleared at the
    /// start of every lookup; read by [`Resources::unavailable`] right after it).
    unavailable: AtomicBool,
}

/// Paths remembered (unknown paths included, so scans stay cheap).
const MAX_RESOLVED: usize = 4096;

#[derive(Debug)]
struct FileSource(Blob);

impl RangeSource for FileSource {
    fn len(&self) -> u64 {
        self.0.len()
    }
    fn range(&self, start: u64, end: u64) -> Option<Bytes> {
        match self.0.range(start, end) {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::error!(error = %e, "stored file cannot be read");
                None
            }
        }
    }
}

fn etag_of(digest: &Sha256) -> [u8; 8] {
    let mut etag = [0u8; 8];
    etag.copy_from_slice(&digest.0[..8]);
    etag
}

impl StoreResources {
    /// Serve `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        StoreResources {
            store,
            resolved: quick_cache::sync::Cache::new(MAX_RESOLVED),
            link_format: Mutex::new(None),
            reports: false,
            gate: None,
            discovery_only: false,
            unavailable: AtomicBool::new(false),
        }
    }

    /// Serve nothing but `/.well-known/core`: every other path is 4.04 and no POST is taken
    /// (`--coap-require-dtls`: files only over `coaps://`).
    pub fn discovery_only(mut self) -> Self {
        self.discovery_only = true;
        self
    }

    /// Let `gate` decide which version each peer sees through `<id>/manifest` and the other
    /// aliases of "the newest" (staged rollouts).
    pub fn with_gate(mut self, gate: Arc<dyn Gate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Take device reports: `POST /<publish-id>/report` for a publish-id of the store goes to
    /// the application ([`crate::Server::poll_request`]).
    pub fn with_reports(mut self) -> Self {
        self.reports = true;
        self
    }

    fn file(&self, entry: &FileEntry, block_size: Option<u16>) -> Option<Resource> {
        match self.store.blob(entry) {
            Ok(blob) => Some(Resource {
                body: match blob {
                    Blob::Memory(b) => Body::Memory(b),
                    file => Body::Source(Arc::new(FileSource(file))),
                },
                etag: etag_of(&entry.sha256),
                content_format: content_format::OCTET_STREAM,
                default_szx: block_size.map(|b| (b.trailing_zeros().saturating_sub(4)) as u8),
            }),
            Err(e) => {
                if matches!(e, suitcase_store::StoreError::Unavailable(_)) {
                    tracing::warn!(file = %entry.name, error = %e, "stored file unavailable for now");
                    self.unavailable.store(true, Ordering::Relaxed);
                } else {
                    tracing::error!(file = %entry.name, error = %e, "stored file cannot be read");
                }
                None
            }
        }
    }

    fn well_known_core(&self) -> Resource {
        let generation = self.store.generation();
        if let Some((g, r)) = self.link_format.lock().as_ref() {
            if *g == generation {
                return r.clone();
            }
        }
        let mut out = String::new();
        for id in self.store.publish_ids() {
            let Some(v) = self.store.latest(&id) else { continue };
            if let Some(m) = &v.manifest {
                let _ = write!(out, "</{id}/manifest>;rt=\"suit.manifest\";ct=42;sz={},", m.file.size);
            }
            for f in &v.files {
                let _ = write!(out, "</{id}/{}>;ct=42;sz={},", f.name, f.size);
            }
        }
        out.pop();
        let body = Bytes::from(out);
        let r = Resource {
            etag: etag_of(&Sha256::of(&body)),
            body: Body::Memory(body),
            content_format: content_format::LINK_FORMAT,
            default_szx: None,
        };
        *self.link_format.lock() = Some((generation, r.clone()));
        r
    }
}

impl Resources for StoreResources {
    fn generation(&self) -> u64 {
        // Both only grow: the sum moves whenever either does.
        let gate = self.gate.as_ref().map_or(0, |g| g.generation());
        self.store.generation().wrapping_add(gate)
    }

    fn resolve_for(&self, peer: std::net::SocketAddr, segments: &[&str]) -> Option<Resource> {
        let Some(gate) = self.gate.as_ref().filter(|g| g.active() && !self.discovery_only) else {
            return self.resolve(segments);
        };
        // Immutable paths (`<id>/v/<n>/<file>`) and `/.well-known/core` are never gated.
        if segments.len() < 2 || paths::is_immutable(segments) || segments == [".well-known", "core"] {
            return self.resolve(segments);
        }
        self.unavailable.store(false, Ordering::Relaxed);
        let who = Requester {
            addr: Some(peer),
            identity: None,
        };
        let l = paths::resolve_allowed(self.store.as_ref(), segments, |id| gate.allowed(id, &who))?;
        self.file(&l.entry, l.version.block_size)
    }

    fn resolve(&self, segments: &[&str]) -> Option<Resource> {
        self.unavailable.store(false, Ordering::Relaxed);
        if segments == [".well-known", "core"] {
            return Some(self.well_known_core());
        }
        if self.discovery_only {
            return None;
        }
        // Only well-formed paths are looked up or remembered: their segments never hold
        // '/', so the joined key names exactly one path.
        if !paths::segments_ok(segments) {
            return None;
        }
        let key = segments.join("/");
        let generation = self.store.generation();
        let file = match self.resolved.get(&key) {
            Some(r) if r.generation == generation => r.file,
            _ => {
                let file =
                    paths::resolve(self.store.as_ref(), segments).map(|l| Arc::new((l.entry, l.version.block_size)));
                self.resolved.insert(
                    key,
                    Resolution {
                        generation,
                        file: file.clone(),
                    },
                );
                file
            }
        };
        let (entry, block_size) = file.as_deref()?;
        self.file(entry, *block_size)
    }

    fn unavailable(&self, segments: &[&str]) -> bool {
        // Set by the lookup just before this one (each lookup clears it first).
        let _ = segments;
        self.unavailable.swap(false, Ordering::Relaxed)
    }

    fn accepts_post(&self, segments: &[&str]) -> bool {
        match segments.split_last() {
            Some((&"report", id))
                if self.reports && !self.discovery_only && !id.is_empty() && paths::segments_ok(id) =>
            {
                let id = id.join("/");
                suitcase_store::validate_publish_id(&id).is_ok() && self.store.latest(&id).is_some()
            }
            _ => false,
        }
    }

    fn resolve_etag(&self, segments: &[&str], etag: &[u8; 8]) -> Option<Resource> {
        if self.discovery_only {
            return self.resolve(segments).filter(|r| r.etag == *etag);
        }
        if let Some(r) = self.resolve(segments).filter(|r| r.etag == *etag) {
            return Some(r);
        }
        let l = paths::resolve_with_prefix(self.store.as_ref(), segments, etag)?;
        self.file(&l.entry, l.version.block_size)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use suitcase_store::{LocalStore, NewFile, PublishRequest};

    #[test]
    fn a_path_segment_holding_a_slash_cannot_poison_the_real_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalStore::open(dir.path()).unwrap());
        store
            .publish(
                PublishRequest {
                    publish_id: "fw/app".into(),
                    files: vec![NewFile {
                        name: "board".into(),
                        data: Bytes::from_static(b"image"),
                    }],
                    semver: None,
                    unique_semver: false,
                    block_size: None,
                },
                Box::new(|_| Ok(None)),
            )
            .unwrap();
        let r = StoreResources::new(store);
        // One datagram with the segments `fw`, `app/board`: before, its 4.04 was cached
        // under "fw/app/board" and every device got 4.04 for the real file.
        assert!(r.resolve(&["fw", "app/board"]).is_none());
        assert!(r.resolve(&["fw/app", "board"]).is_none());
        let ok = r.resolve(&["fw", "app", "board"]).unwrap();
        assert_eq!(ok.body.slice(0, 5).unwrap(), Bytes::from_static(b"image"));
        assert!(r.resolve(&["fw", "app", "v", "01", "board"]).is_none());
        assert!(r.resolve(&["fw", "app", "v", "1", "board"]).is_some());
        let only = StoreResources::new(r.store.clone()).with_reports().discovery_only();
        for path in [&["fw", "app", "board"][..], &["fw", "app", "v", "1", "board"]] {
            assert!(only.resolve(path).is_none());
            assert!(only.resolve_for("[::1]:1".parse().unwrap(), path).is_none());
            assert!(only.resolve_etag(path, &ok.etag).is_none());
        }
        assert!(!only.accepts_post(&["fw", "app", "report"]));
        assert!(only.resolve(&[".well-known", "core"]).is_some());
    }
}
