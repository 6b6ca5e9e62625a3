//! The one path resolver: what a request path under a publish-id names. CoAP
//! (`coap://host/<path>`), HTTP `/files/<path>`, the ESP routes and the URIs the signer puts
//! into manifests all go through here, so they can never disagree.
//!
//! Paths, as segments:
//! * `<id>/v/<n>/<file>`: file `<file>` of version `<n>` (immutable; what manifests carry).
//!   `<n>` is written in exactly one way: decimal, no sign, no leading zero.
//! * `<id>/manifest` and `<id>/riot.suit.latest.bin`: the newest version's manifest.
//! * `<id>/<file>`: `<file>` of the newest version that has it (so the URIs signed into an
//!   older manifest keep resolving after newer publishes).
//!
//! Every segment must be a valid id or file segment (`[A-Za-z0-9._+-]`, never `/`), so a
//! path has one spelling and joining its segments with `/` is unambiguous. Publish-ids never
//! contain `v` or `manifest` segments, so an id can never shadow another id's versions.

use std::sync::Arc;

use crate::id::segment_ok;
use crate::{FileEntry, Store, Version};

/// A resolved file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    /// The version it belongs to.
    pub version: Arc<Version>,
    /// The file (possibly the version's manifest).
    pub entry: FileEntry,
}

/// The immutable path of `name` in version `seq` of `publish_id`: `<id>/v/<seq>/<name>`.
pub fn version_file_path(publish_id: &str, seq: u64, name: &str) -> String {
    format!("{publish_id}/v/{seq}/{name}")
}

/// A version number as written in a path: decimal digits, no sign, no leading zero.
pub fn parse_version_number(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Are these segments a well-formed path (every segment a valid name segment)?
pub fn segments_ok(segments: &[&str]) -> bool {
    !segments.is_empty() && segments.len() <= 64 && segments.iter().all(|s| segment_ok(s))
}

fn manifest_alias(name: &str) -> bool {
    // RIOT's build names the newest signed manifest riot.suit.latest.bin.
    name == "manifest" || name == "riot.suit.latest.bin"
}

fn in_version(v: &Arc<Version>, name: &str) -> Option<Located> {
    let entry = if manifest_alias(name) {
        v.manifest.as_ref().map(|m| &m.file)
    } else {
        v.file(name)
    }?;
    Some(Located {
        version: v.clone(),
        entry: entry.clone(),
    })
}

/// Resolve `segments` against `store`; `None` when they name nothing.
pub fn resolve(store: &dyn Store, segments: &[&str]) -> Option<Located> {
    if !segments_ok(segments) {
        return None;
    }
    // A publish-id may contain '/': try the longest prefix that names one. Ids hold no
    // reserved segment, so at most one split can match a `v/<n>/<file>` or `manifest` tail.
    for split in (1..segments.len()).rev() {
        let id_segments = &segments[..split];
        if id_segments.iter().any(|s| crate::id::RESERVED_SEGMENTS.contains(s)) {
            continue;
        }
        let id = id_segments.join("/");
        let Some(latest) = store.latest(&id) else { continue };
        return match &segments[split..] {
            ["v", n, name] => {
                let v = store.version(&id, parse_version_number(n)?)?;
                in_version(&v, name)
            }
            [name] if manifest_alias(name) => in_version(&latest, name),
            [name] => store.versions(&id).iter().rev().find_map(|v| in_version(v, name)),
            _ => continue,
        };
    }
    None
}

/// Resolve `segments` as [`resolve`] does, then hold an alias (`<id>/manifest`,
/// `<id>/<file>`) to what `allowed` lets the requester see: the same name in the newest
/// version it may have. Immutable paths (`<id>/v/<n>/<file>`) are never held back.
pub fn resolve_allowed(
    store: &dyn Store,
    segments: &[&str],
    allowed: impl FnOnce(&str) -> crate::gate::Allowed,
) -> Option<Located> {
    use crate::gate::Allowed;
    let l = resolve(store, segments)?;
    let name = segments.last()?;
    if is_immutable(segments) {
        return Some(l);
    }
    let max = match allowed(&l.version.publish_id) {
        Allowed::Newest => return Some(l),
        Allowed::Nothing => return None,
        Allowed::UpTo(max) if l.version.seq <= max => return Some(l),
        Allowed::UpTo(max) => max,
    };
    let older = store
        .versions(&l.version.publish_id)
        .iter()
        .rev()
        .filter(|v| v.seq <= max)
        .find_map(|v| in_version(v, name));
    match older {
        Some(o) => Some(o),
        // A name only newer versions hold (RIOT's `riot.suit.<seq>.bin`) names one version,
        // not "the newest": it is not held back. The manifest aliases always are.
        None if !manifest_alias(name) => Some(l),
        None => None,
    }
}

/// Whether `segments` name a file of one version (`<id>/v/<n>/<file>`), which never changes.
pub fn is_immutable(segments: &[&str]) -> bool {
    segments.len() >= 3 && segments[segments.len() - 3] == "v"
}

/// Find a version by what a user calls it: `latest` (or nothing), a version number, a
/// manifest sequence number (RIOT's `riot.suit.<seq>.bin`; preferred over the version number
/// when both match) or a semantic version (`1.2.0`, `v1.2.0`).
pub fn find_version(store: &dyn Store, id: &str, which: Option<&str>) -> Result<Arc<Version>, FindVersionError> {
    let versions = store.versions(id);
    if versions.is_empty() {
        return Err(FindVersionError::NoPublishId(id.to_string()));
    }
    let which = which.map(str::trim).filter(|w| !w.is_empty()).unwrap_or("latest");
    let found = if which == "latest" {
        versions.last().cloned()
    } else if let Ok(n) = which.parse::<u64>() {
        versions
            .iter()
            .rev()
            .find(|v| v.manifest.as_ref().and_then(|m| m.sequence_number) == Some(n))
            .or_else(|| versions.iter().find(|v| v.seq == n))
            .cloned()
    } else {
        let sv = semver::Version::parse(which.trim_start_matches('v'))
            .map_err(|_| FindVersionError::Spec(which.to_string()))?;
        versions.iter().rev().find(|v| v.semver.as_ref() == Some(&sv)).cloned()
    };
    found.ok_or_else(|| FindVersionError::NoVersion(id.to_string(), which.to_string()))
}

/// Why [`find_version`] found nothing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FindVersionError {
    /// No such publish-id.
    #[error("no publish-id {0:?}")]
    NoPublishId(String),
    /// Not a version as written.
    #[error("version {0:?}: latest, a number or a semver")]
    Spec(String),
    /// No such version.
    #[error("{0:?} has no version {1:?}")]
    NoVersion(String, String),
}

/// The path of `v`'s manifest a device is told to fetch: the immutable
/// `<id>/v/<n>/<manifest>`, or for RIOT's manifests `<id>/riot.suit.<seq>.bin` (shorter:
/// RIOT takes URLs of at most 128 bytes); with `latest`, the alias of the newest.
pub fn manifest_path(v: &Version, latest: bool) -> Option<String> {
    let m = v.manifest.as_ref()?;
    let riot = m.file.name.starts_with("riot.suit.");
    Some(match (latest, riot) {
        (true, true) => format!("{}/riot.suit.latest.bin", v.publish_id),
        (true, false) => format!("{}/manifest", v.publish_id),
        (false, true) => format!("{}/{}", v.publish_id, m.file.name),
        (false, false) => version_file_path(&v.publish_id, v.seq, &m.file.name),
    })
}

/// The file `segments` named when its content's SHA-256 began with `prefix` (a download in
/// progress of an alias whose newest version changed since): the version named by the path
/// if it matches, else the newest older version whose file under that name matches.
pub fn resolve_with_prefix(store: &dyn Store, segments: &[&str], prefix: &[u8]) -> Option<Located> {
    let matches = |l: &Located| l.entry.sha256.0.starts_with(prefix);
    if let Some(l) = resolve(store, segments).filter(matches) {
        return Some(l);
    }
    // Only aliases (`<id>/<name>`, `<id>/manifest`) ever change; their id is all but the
    // last segment.
    let (name, id_segments) = segments.split_last()?;
    if id_segments.is_empty() || !segments_ok(segments) || id_segments.contains(&"v") {
        return None;
    }
    let id = id_segments.join("/");
    store
        .versions(&id)
        .iter()
        .rev()
        .find_map(|v| in_version(v, name).filter(matches))
}

/// Resolve a `/`-separated path (HTTP routes).
pub fn resolve_path(store: &dyn Store, path: &str) -> Option<Located> {
    let segments: Vec<&str> = path.split('/').collect();
    resolve(store, &segments)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{LocalStore, NewFile, NewManifest, PublishRequest};

    fn publish(s: &LocalStore, id: &str, files: &[&str], manifest: Option<u64>) -> Arc<Version> {
        s.publish(
            PublishRequest {
                publish_id: id.into(),
                files: files
                    .iter()
                    .map(|n| NewFile {
                        name: (*n).into(),
                        data: format!("{id}:{n}").into_bytes().into(),
                    })
                    .collect(),
                semver: None,
                unique_semver: false,
                block_size: None,
            },
            Box::new(move |d| {
                Ok(manifest.map(|n| NewManifest {
                    name: format!("m.{}.suit", d.seq),
                    data: format!("manifest {n}").into_bytes().into(),
                    sequence_number: Some(n),
                    server_built: false,
                }))
            }),
        )
        .unwrap()
    }

    fn name(s: &LocalStore, path: &str) -> Option<(u64, String)> {
        resolve_path(s, path).map(|l| (l.version.seq, l.entry.name))
    }

    #[test]
    fn one_spelling_per_resource() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(dir.path()).unwrap();
        publish(&s, "fw/app", &["app.bin", "old.bin"], Some(10));
        publish(&s, "fw/app", &["app.bin"], Some(11));
        assert_eq!(name(&s, "fw/app/v/1/app.bin"), Some((1, "app.bin".into())));
        assert_eq!(name(&s, "fw/app/app.bin"), Some((2, "app.bin".into())));
        assert_eq!(
            name(&s, "fw/app/old.bin"),
            Some((1, "old.bin".into())),
            "newest holding it"
        );
        assert_eq!(name(&s, "fw/app/manifest"), Some((2, "m.2.suit".into())));
        assert_eq!(name(&s, "fw/app/riot.suit.latest.bin"), Some((2, "m.2.suit".into())));
        assert_eq!(name(&s, "fw/app/v/1/manifest"), Some((1, "m.1.suit".into())));
        for bad in [
            "fw/app/v/01/app.bin",
            "fw/app/v/001/app.bin",
            "fw/app/v/+1/app.bin",
            "fw/app/v/0/app.bin",
            "fw/app/v/1/app.bin/x",
            "fw/app/v/3/app.bin",
            "fw//app/app.bin",
            "fw/app/./app.bin",
            "fw/app/../app/app.bin",
            "fw/app",
            "fw",
            "",
        ] {
            assert_eq!(name(&s, bad), None, "{bad}");
        }
        // A segment holding '/' is no path at all, even if its join would be one.
        assert_eq!(resolve(&s, &["fw", "app/app.bin"]), None);
        assert!(resolve(&s, &["fw", "app", "app.bin"]).is_some());
    }

    #[test]
    fn an_id_cannot_shadow_another_ids_versions() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(dir.path()).unwrap();
        publish(&s, "fw/app", &["app.bin"], None);
        let err = s
            .publish(
                PublishRequest {
                    publish_id: "fw/app/v/1".into(),
                    files: vec![NewFile {
                        name: "app.bin".into(),
                        data: b"evil".to_vec().into(),
                    }],
                    semver: None,
                    unique_semver: false,
                    block_size: None,
                },
                Box::new(|_| Ok(None)),
            )
            .unwrap_err();
        assert!(err.to_string().contains("reserved"), "{err}");
        // Nested ids still work.
        publish(&s, "fw/app/board", &["x.bin"], None);
        assert_eq!(name(&s, "fw/app/board/x.bin"), Some((1, "x.bin".into())));
        assert_eq!(name(&s, "fw/app/v/1/app.bin"), Some((1, "app.bin".into())));
        assert_eq!(version_file_path("fw/app", 7, "a.bin"), "fw/app/v/7/a.bin");
    }
}
