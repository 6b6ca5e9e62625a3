//! HTTP downloads of stored files: strong ETag (the content's SHA-256), If-None-Match → 304,
//! and single byte ranges (RFC 9110 §14) → 206, unsatisfiable → 416.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use suitcase_store::{FileEntry, Version};

use crate::{ApiError, AppState};

/// `GET /files/<publish-id>/<file>` and `/files/<publish-id>/v/<n>/<file>`.
pub(crate) async fn files(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    let segments: Vec<&str> = path.split('/').collect();
    for split in (1..segments.len()).rev() {
        let id = segments[..split].join("/");
        let Some(latest) = st.store.latest(&id) else { continue };
        let rest = &segments[split..];
        let (version, name) = match rest {
            ["v", n, name] => match n.parse().ok().and_then(|n| st.store.version(&id, n)) {
                Some(v) => (v, *name),
                None => continue,
            },
            [name] => (latest, *name),
            _ => continue,
        };
        let entry = match name {
            "manifest" => version.manifest.as_ref().map(|m| &m.file),
            n => version.file(n),
        };
        if let Some(entry) = entry {
            let data = st.store.read(&entry.sha256)?;
            return Ok(serve(&headers, data, entry, "application/octet-stream"));
        }
    }
    Err(ApiError::not_found(format!("no file at {path:?}")))
}

/// The strong entity tag of a stored file.
pub(crate) fn etag(entry: &FileEntry) -> String {
    format!("\"{}\"", entry.sha256.to_hex())
}

fn if_none_match(headers: &HeaderMap, tag: &str) -> bool {
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
        if n == 0 {
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
pub(crate) fn serve(headers: &HeaderMap, data: Bytes, entry: &FileEntry, content_type: &'static str) -> Response {
    let tag = etag(entry);
    let len = data.len() as u64;
    let mut builder = Response::builder()
        .header(header::ETAG, &tag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, content_type);
    if if_none_match(headers, &tag) {
        return builder
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .unwrap_or_default();
    }
    match range(headers, len) {
        None => builder = builder.status(StatusCode::OK).header(header::CONTENT_LENGTH, len),
        Some(Err(())) => {
            return builder
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .body(Body::empty())
                .unwrap_or_default()
        }
        Some(Ok((start, end))) => {
            return builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {start}-{}/{len}", end - 1))
                .header(header::CONTENT_LENGTH, end - start)
                .body(Body::from(data.slice(start as usize..end as usize)))
                .unwrap_or_default()
        }
    }
    builder.body(Body::from(data)).unwrap_or_default()
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
