//! HTTP downloads of stored files: strong ETag (the content's SHA-256), If-None-Match → 304,
//! and single byte ranges (RFC 9110 §14) → 206, unsatisfiable → 416.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use suitcase_store::{Blob, FileEntry, Version};

use crate::{ApiError, AppState};

/// `GET /files/<path>`: every path CoAP serves (`<id>/<file>`, `<id>/v/<n>/<file>`,
/// `<id>/manifest`), resolved by the store's one resolver so both protocols agree.
pub(crate) async fn files(
    State(st): State<AppState>,
    peer: Peer,
    headers: HeaderMap,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    let segments: Vec<&str> = path.split('/').collect();
    let found = suitcase_store::paths::resolve_allowed(st.store.as_ref(), &segments, |id| st.allowed(id, &peer, None))
        .ok_or_else(|| ApiError::not_found(format!("no file at {path:?}")))?;
    let data = read(&st, &found.entry).await?;
    let r = serve(&headers, data, &found.entry, "application/octet-stream");
    Ok(track(&st, &peer, None, None, &found.entry, r))
}

/// The peer of a request and the device token it showed, when known.
pub(crate) struct Peer {
    pub(crate) addr: Option<std::net::SocketAddr>,
    pub(crate) token: Option<String>,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ext = &parts.extensions;
        let addr = ext
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0)
            .or_else(|| {
                ext.get::<axum::extract::connect_info::MockConnectInfo<std::net::SocketAddr>>()
                    .map(|c| c.0)
            });
        let token = ext.get::<crate::auth::DeviceName>().map(|d| d.0.clone());
        Ok(Peer { addr, token })
    }
}

/// Bytes per piece of a tracked response body.
const TRACK_CHUNK: usize = 16 * 1024;

/// Report the bytes of a 200/206 answer to the fleet as they are sent (per chunk).
pub(crate) fn track(
    st: &AppState,
    peer: &Peer,
    identity: Option<String>,
    running: Option<String>,
    entry: &FileEntry,
    r: Response,
) -> Response {
    let (Some(fleet), Some(addr)) = (st.fleet.clone(), peer.addr) else {
        return r;
    };
    let start = match r.status() {
        StatusCode::OK => 0,
        StatusCode::PARTIAL_CONTENT => r
            .headers()
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes "))
            .and_then(|v| v.split('-').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0),
        _ => return r,
    };
    let mut etag = [0u8; 8];
    etag.copy_from_slice(&entry.sha256.0[..8]);
    let size = entry.size;
    // A device token names the device better than a header it chose itself.
    let identity = peer.token.clone().or(identity);
    let (parts, body) = r.into_parts();
    let mut sent = start;
    // In pieces of TRACK_CHUNK, so progress follows what the connection takes (a file held
    // in memory is otherwise one chunk, "sent" the moment the response starts).
    let pieces = futures_util::StreamExt::flat_map(body.into_data_stream(), |chunk| {
        let items: Vec<Result<bytes::Bytes, axum::Error>> = match chunk {
            Ok(b) => (0..b.len())
                .step_by(TRACK_CHUNK)
                .map(|i| Ok(b.slice(i..(i + TRACK_CHUNK).min(b.len()))))
                .collect(),
            Err(e) => vec![Err(e)],
        };
        futures_util::stream::iter(items)
    });
    let stream = futures_util::StreamExt::map(pieces, move |chunk| {
        if let Ok(c) = &chunk {
            sent += c.len() as u64;
            fleet.http_served(suitcase_fleet::HttpServed {
                peer: addr,
                identity: identity.clone(),
                running_semver: running.clone(),
                etag,
                end: sent,
                size,
            });
        }
        chunk
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

/// A stored file for serving, fetched off the async workers (a cache miss of a small file
/// reads it whole and checks its SHA-256; a large file is only opened).
pub(crate) async fn read(st: &AppState, entry: &FileEntry) -> Result<Blob, ApiError> {
    let (store, entry) = (st.store.clone(), entry.clone());
    Ok(tokio::task::spawn_blocking(move || store.blob(&entry))
        .await
        .map_err(ApiError::internal)??)
}

/// Bytes read from a file per chunk of a streamed body.
const CHUNK: u64 = 64 * 1024;

/// The body of bytes `start..end` of `blob`: a slice of a memory blob, or a stream of
/// positional reads (one chunk at a time, off the async workers) of a large file, so a
/// download never holds more than a chunk of it in memory.
fn body(blob: Blob, start: u64, end: u64) -> Body {
    match blob {
        Blob::Memory(b) => Body::from(b.slice(start as usize..end as usize)),
        file => Body::from_stream(futures_util::stream::unfold(
            (file, start),
            move |(file, pos)| async move {
                if pos >= end {
                    return None;
                }
                let n = CHUNK.min(end - pos);
                let f = file.clone();
                let chunk = tokio::task::spawn_blocking(move || f.range(pos, pos + n)).await;
                let item = match chunk {
                    Ok(Ok(bytes)) if bytes.len() as u64 == n => Ok(bytes),
                    Ok(Ok(_)) => Err(std::io::Error::other("the stored file is shorter than recorded")),
                    Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
                    Err(e) => Err(std::io::Error::other(e.to_string())),
                };
                // After an error the stream ends (the client sees a short body).
                let next = if item.is_ok() { pos + n } else { end };
                Some((item, (file, next)))
            },
        )),
    }
}

/// The strong entity tag of a stored file.
pub(crate) fn etag(entry: &FileEntry) -> String {
    format!("\"{}\"", entry.sha256.to_hex())
}

/// Whether `If-None-Match` names `tag` (weak comparison, or `*`).
pub(crate) fn if_none_match(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t == tag || t.strip_prefix("W/") == Some(tag)
        })
}

/// A single range `bytes=a-b`, `bytes=a-`, `bytes=-n` against `len`: `Some(Ok((start, end)))`
/// (end exclusive), `Some(Err(()))` when unsatisfiable, `None` to send the whole body
/// (no Range, several ranges, or a unit other than bytes).
fn range(headers: &HeaderMap, len: u64) -> Option<Result<(u64, u64), ()>> {
    let v = headers.get(header::RANGE)?.to_str().ok()?;
    let spec = v.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let r = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        // A suffix of nothing, or any suffix of an empty file, selects no byte (RFC 9110 §14.1.2).
        if n == 0 || len == 0 {
            return Some(Err(()));
        }
        (len.saturating_sub(n), len)
    } else {
        let start: u64 = a.parse().ok()?;
        let end = if b.is_empty() {
            len
        } else {
            b.parse::<u64>().ok()?.saturating_add(1).min(len)
        };
        if start >= len || end <= start {
            return Some(Err(()));
        }
        (start, end)
    };
    Some(Ok(r))
}

/// Serve `data` with ETag, conditional and range handling.
pub(crate) fn serve(headers: &HeaderMap, data: Blob, entry: &FileEntry, content_type: &'static str) -> Response {
    let tag = etag(entry);
    let len = data.len();
    let mut builder = Response::builder()
        .header(header::ETAG, &tag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, content_type)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    if if_none_match(headers, &tag) {
        return builder
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .unwrap_or_default();
    }
    match range(headers, len) {
        None => builder = builder.status(StatusCode::OK).header(header::CONTENT_LENGTH, len),
        // `range` never yields an empty range; checked anyway so no input can underflow.
        Some(Ok((start, end))) if start < end && end <= len => {
            return builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {start}-{}/{len}", end - 1))
                .header(header::CONTENT_LENGTH, end - start)
                .body(body(data, start, end))
                .unwrap_or_default()
        }
        Some(_) => {
            return builder
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .body(Body::empty())
                .unwrap_or_default()
        }
    }
    builder.body(body(data, 0, len)).unwrap_or_default()
}

/// The newest version's first firmware file (what an HTTP-updating device gets).
pub(crate) fn main_file(v: &Version) -> Option<&FileEntry> {
    v.files
        .iter()
        .find(|f| !f.name.ends_with(".zz"))
        .or_else(|| v.files.first())
}

/// Add a header if the value is valid.
pub(crate) fn with_header(mut r: Response, name: &'static str, value: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ranged(spec: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(spec).unwrap());
        range(&h, len)
    }

    #[test]
    fn range_edge_cases() {
        // Empty file: nothing is satisfiable, the suffix form included (it underflowed).
        for spec in ["bytes=-1", "bytes=-100", "bytes=0-", "bytes=0-0"] {
            assert_eq!(ranged(spec, 0), Some(Err(())), "{spec}");
        }
        // A suffix larger than the file is the whole file.
        assert_eq!(ranged("bytes=-100", 10), Some(Ok((0, 10))));
        assert_eq!(ranged("bytes=-3", 10), Some(Ok((7, 10))));
        assert_eq!(ranged("bytes=-0", 10), Some(Err(())));
        // Start at or beyond the end.
        assert_eq!(ranged("bytes=10-", 10), Some(Err(())));
        assert_eq!(ranged("bytes=11-20", 10), Some(Err(())));
        // First byte; end clamped to the file; reversed.
        assert_eq!(ranged("bytes=0-0", 10), Some(Ok((0, 1))));
        assert_eq!(ranged("bytes=5-99", 10), Some(Ok((5, 10))));
        assert_eq!(ranged("bytes=5-4", 10), Some(Err(())));
        assert_eq!(ranged("bytes=18446744073709551615-", 10), Some(Err(())));
        // Not for us: whole body.
        assert_eq!(ranged("bytes=0-1,3-4", 10), None);
        assert_eq!(ranged("items=0-1", 10), None);
        assert_eq!(ranged("bytes=x-1", 10), None);
    }

    #[test]
    fn serving_an_empty_file_with_a_suffix_range_is_416() {
        let entry = FileEntry {
            name: "empty.bin".into(),
            sha256: suitcase_store::Sha256::of(b""),
            size: 0,
        };
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static("bytes=-5"));
        let r = serve(
            &h,
            Blob::Memory(bytes::Bytes::new()),
            &entry,
            "application/octet-stream",
        );
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes */0");
        h.insert(header::RANGE, HeaderValue::from_static("bytes=0-0"));
        let r = serve(
            &h,
            Blob::Memory(bytes::Bytes::from_static(b"abc")),
            &entry,
            "application/octet-stream",
        );
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes 0-0/3");
    }

    #[tokio::test]
    async fn large_files_stream_in_chunks_whole_and_ranged() {
        use http_body_util::BodyExt as _;
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, &data).unwrap();
        let blob = || Blob::File {
            file: std::sync::Arc::new(std::fs::File::open(&p).unwrap()),
            len: data.len() as u64,
        };
        let entry = FileEntry {
            name: "f".into(),
            sha256: suitcase_store::Sha256::of(&data),
            size: data.len() as u64,
        };
        let whole = serve(&HeaderMap::new(), blob(), &entry, "application/octet-stream");
        assert_eq!(whole.status(), StatusCode::OK);
        let got = whole.into_body().collect().await.unwrap().to_bytes();
        assert!(got == data[..], "{} bytes", got.len());
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static("bytes=70000-200001"));
        let part = serve(&h, blob(), &entry, "application/octet-stream");
        assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
        let got = part.into_body().collect().await.unwrap().to_bytes();
        assert!(got == data[70000..200002]);
    }
}
