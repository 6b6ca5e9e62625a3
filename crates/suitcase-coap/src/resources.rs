//! The store's files as CoAP resources:
//! `/<publish-id>/manifest`, `/<publish-id>/<file>`, `/<publish-id>/v/<seq>/<file>` and
//! `/.well-known/core`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use suitcase_store::{FileEntry, Store, Version};

use crate::server::{content_format, Resource, Resources};

/// Resolves CoAP paths against a [`Store`].
pub struct StoreResources {
    store: Arc<dyn Store>,
    /// path → resolution, valid for one store generation (the hot path of every block).
    resolved: Mutex<(u64, HashMap<String, Option<Resource>>)>,
    /// `/.well-known/core`, rebuilt when the store's generation moves.
    link_format: Mutex<Option<(u64, Resource)>>,
}

impl StoreResources {
    /// Serve `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        StoreResources {
            store,
            resolved: Mutex::new((u64::MAX, HashMap::new())),
            link_format: Mutex::new(None),
        }
    }

    fn file(&self, entry: &FileEntry) -> Option<Resource> {
        match self.store.read(&entry.sha256) {
            Ok(body) => {
                let mut etag = [0u8; 8];
                etag.copy_from_slice(&entry.sha256.0[..8]);
                Some(Resource {
                    body,
                    etag,
                    content_format: content_format::OCTET_STREAM,
                })
            }
            Err(e) => {
                tracing::error!(file = %entry.name, error = %e, "stored file cannot be read");
                None
            }
        }
    }

    fn in_version(&self, v: &Version, rest: &[&str]) -> Option<Resource> {
        match rest {
            // RIOT's build names the newest signed manifest riot.suit.latest.bin.
            ["manifest"] | ["riot.suit.latest.bin"] => self.file(&v.manifest.as_ref()?.file),
            [name] => self.file(v.file(name)?),
            _ => None,
        }
    }

    /// `/<id>/<name>`: the newest version holding `name`, so the URIs signed into an older
    /// manifest (RIOT signs `…/<id>/slot0.<ver>.bin`) keep resolving after newer publishes.
    fn newest_with(&self, id: &str, name: &str) -> Option<Resource> {
        let versions = self.store.versions(id);
        let v = versions.iter().rev().find(|v| v.file(name).is_some())?;
        self.file(v.file(name)?)
    }

    fn well_known_core(&self) -> Resource {
        let generation = self.store.generation();
        if let Ok(cache) = self.link_format.lock() {
            if let Some((g, r)) = cache.as_ref() {
                if *g == generation {
                    return r.clone();
                }
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
        let digest = suitcase_store::Sha256::of(&body);
        let mut etag = [0u8; 8];
        etag.copy_from_slice(&digest.0[..8]);
        let r = Resource {
            body,
            etag,
            content_format: content_format::LINK_FORMAT,
        };
        if let Ok(mut cache) = self.link_format.lock() {
            *cache = Some((generation, r.clone()));
        }
        r
    }
}

impl Resources for StoreResources {
    fn generation(&self) -> u64 {
        self.store.generation()
    }

    fn resolve(&self, segments: &[&str]) -> Option<Resource> {
        let key = segments.join("/");
        let generation = self.store.generation();
        if let Ok(cache) = self.resolved.lock() {
            if cache.0 == generation {
                if let Some(r) = cache.1.get(&key) {
                    return r.clone();
                }
            }
        }
        let r = self.resolve_uncached(segments);
        if let Ok(mut cache) = self.resolved.lock() {
            if cache.0 != generation || cache.1.len() >= MAX_RESOLVED {
                cache.1.clear();
                cache.0 = generation;
            }
            cache.1.insert(key, r.clone());
        }
        r
    }
}

/// Paths remembered per store generation (unknown paths included, so scans stay cheap).
const MAX_RESOLVED: usize = 4096;

impl StoreResources {
    fn resolve_uncached(&self, segments: &[&str]) -> Option<Resource> {
        if segments == [".well-known", "core"] {
            return Some(self.well_known_core());
        }
        // A publish-id may contain '/': try the longest prefix that names one.
        for split in (1..segments.len()).rev() {
            let id = segments[..split].join("/");
            let Some(latest) = self.store.latest(&id) else { continue };
            let rest = &segments[split..];
            if let ["v", seq, tail @ ..] = rest {
                if let Ok(seq) = seq.parse::<u64>() {
                    if let Some(v) = self.store.version(&id, seq) {
                        if let Some(r) = self.in_version(&v, tail) {
                            return Some(r);
                        }
                    }
                }
            }
            if let Some(r) = self.in_version(&latest, rest) {
                return Some(r);
            }
            if let [name] = rest {
                if let Some(r) = self.newest_with(&id, name) {
                    return Some(r);
                }
            }
        }
        None
    }
}
