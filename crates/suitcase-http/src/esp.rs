//! HTTP update contracts of ESP devices, served from the same store:
//!
//! * `GET /firmware/<name>` (sglahn/ota-server, ESP8266httpUpdate and ESP32 HTTPUpdate):
//!   `x-ESP8266-version` or `x-ESP32-version` → 304 when current (semver), else 200 with
//!   `x-MD5`; 400 without the header.
//! * `PUT /images` (matthewgream/ota): multipart field `image` named `<type>_v<semver>.bin`;
//!   stored with a zlib `.zz` copy for esp32-flashz; 409 if that version exists.
//! * `GET /images/images.json?type=&vers=&addr=` (esp32FOTA): `[{type, version, url}]`, the
//!   highest semver per type, nothing when `vers` is not older.
//! * `GET /images/<type>/<file>` and `/images/<file>`: downloads.

use std::io::Write as _;

use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use md5::Digest as _;
use serde::{Deserialize, Serialize};
use suitcase_store::{NewFile, PublishRequest, Version};

use crate::download::{main_file, serve, with_header};
use crate::{ApiError, AppState};

/// Parse a version as devices and file names write it: `1.2.3`, `v1.2.3`, `1.2`, `7`.
pub fn parse_version(s: &str) -> Option<semver::Version> {
    let t = s.trim().trim_start_matches(['v', 'V']);
    if let Ok(v) = semver::Version::parse(t) {
        return Some(v);
    }
    let parts: Vec<&str> = t.split('.').collect();
    if parts.is_empty()
        || parts.len() > 2
        || !parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let padded = format!("{t}{}", ".0".repeat(3 - parts.len()));
    semver::Version::parse(&padded).ok()
}

/// The version with the highest semver of those a rollout's gate lets the requester see.
fn newest(st: &AppState, id: &str, allowed: suitcase_store::Allowed) -> Option<std::sync::Arc<Version>> {
    st.store
        .versions(id)
        .into_iter()
        .filter(|v| v.semver.is_some())
        .filter(|v| allowed.admits(v.seq))
        .max_by(|a, b| a.semver.cmp(&b.semver).then(a.seq.cmp(&b.seq)))
}

pub(crate) async fn firmware(
    State(st): State<AppState>,
    peer: crate::download::Peer,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    suitcase_store::validate_publish_id(&name)?;
    let header = ["x-ESP8266-version", "x-ESP32-version"]
        .iter()
        .find_map(|h| headers.get(*h))
        .ok_or_else(|| ApiError::bad_request("missing x-ESP8266-version or x-ESP32-version header"))?;
    let text = header
        .to_str()
        .map_err(|_| ApiError::bad_request("version header is not text"))?;
    let current = parse_version(text)
        .ok_or_else(|| ApiError::bad_request(format!("version header {text:?} is not a version")))?;
    let mac = headers
        .get("x-ESP8266-STA-MAC")
        .or_else(|| headers.get("x-ESP32-STA-MAC"))
        .and_then(|h| h.to_str().ok())
        .unwrap_or("-");
    let allowed = st.allowed(&name, &peer, (mac != "-").then_some(mac));
    if let Some(fleet) = &st.fleet {
        fleet.checked_in(
            peer.addr,
            (mac != "-").then(|| mac.to_string()),
            name.clone(),
            current.to_string(),
        );
    }
    let v =
        newest(&st, &name, allowed).ok_or_else(|| ApiError::not_found(format!("no versioned firmware {name:?}")))?;
    let latest = v.semver.clone().unwrap_or_else(|| semver::Version::new(0, 0, 0));
    if current >= latest {
        tracing::info!(target: "suitcase::audit", action = "esp-check", firmware = %name, device_version = %current, latest = %latest, mac, result = "current");
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    }
    let entry = main_file(&v).ok_or_else(|| ApiError::not_found("version has no file"))?;
    // Reading and the MD5 run off the async workers; a large file is hashed chunk by chunk.
    let (store, file) = (st.store.clone(), entry.clone());
    let (data, md5) = tokio::task::spawn_blocking(move || -> Result<_, suitcase_store::StoreError> {
        let blob = store.blob(&file)?;
        let mut h = md5::Md5::new();
        let mut pos = 0;
        while pos < blob.len() {
            let chunk = blob.range(pos, pos + (1 << 20))?;
            if chunk.is_empty() {
                break;
            }
            pos += chunk.len() as u64;
            h.update(&chunk);
        }
        Ok((blob, hex::encode(h.finalize())))
    })
    .await
    .map_err(ApiError::internal)??;
    tracing::info!(target: "suitcase::audit", action = "esp-download", firmware = %name, device_version = %current, latest = %latest, version = v.seq, sha256 = %entry.sha256.to_hex(), mac, size = data.len());
    let r = serve(&headers, data, entry, "application/octet-stream");
    let identity = (mac != "-").then(|| mac.to_string());
    let r = crate::download::track(&st, &peer, identity, Some(current.to_string()), entry, r);
    Ok(with_header(r, "x-MD5", &md5))
}

#[derive(Serialize)]
pub(crate) struct ImageUploaded {
    r#type: String,
    version: String,
    size: u64,
    zsize: u64,
    url: String,
}

/// `<type>_v<semver>.bin` → (type, version).
fn split_image_name(name: &str) -> Option<(&str, semver::Version)> {
    let stem = name.strip_suffix(".bin")?;
    let (ty, ver) = stem.rsplit_once("_v")?;
    Some((ty, parse_version(ver)?))
}

pub(crate) fn base_url(st: &AppState, headers: &HeaderMap) -> String {
    if let Some(u) = &st.config.public_http_url {
        return u.trim_end_matches('/').to_string();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let scheme = if st.config.tls { "https" } else { "http" };
    format!("{scheme}://{host}")
}

pub(crate) async fn put_image(
    State(st): State<AppState>,
    headers: HeaderMap,
    who: Option<axum::Extension<crate::auth::Who>>,
    mut mp: Multipart,
) -> Result<(StatusCode, Json<ImageUploaded>), ApiError> {
    let who = crate::auth::who(who);
    let mut image = None;
    while let Some(field) = mp
        .next_field()
        .await
        .map_err(|e| ApiError::new(e.status(), format!("multipart: {}", e.body_text())))?
    {
        if field.name() == Some("image") {
            let name = field
                .file_name()
                .map(|n| n.rsplit(['/', '\\']).next().unwrap_or(n).to_string());
            let data = field
                .bytes()
                .await
                .map_err(|e| ApiError::new(e.status(), format!("multipart: {}", e.body_text())))?;
            image = Some((
                name.ok_or_else(|| ApiError::bad_request("the image part has no filename"))?,
                data,
            ));
        }
    }
    let (name, data) = image.ok_or_else(|| ApiError::bad_request("missing multipart field image"))?;
    let (ty, version) = split_image_name(&name)
        .ok_or_else(|| ApiError::bad_request(format!("{name:?}: the file name must be <type>_v<semver>.bin")))?;
    suitcase_store::validate_publish_id(ty)?;
    if st
        .store
        .versions(ty)
        .iter()
        .any(|v| v.semver.as_ref() == Some(&version))
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("{ty} {version} exists already (versions are immutable)"),
        ));
    }
    let size = data.len() as u64;
    let store = st.store.clone();
    let (semver, file_name) = (version.clone(), name.clone());
    let publish_id = ty.to_string();
    // zlib level 9 of up to --max-upload-mib, and the publish itself, run off the async workers.
    let (v, zsize) = tokio::task::spawn_blocking(move || {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(&data).map_err(ApiError::internal)?;
        let zdata = z.finish().map_err(ApiError::internal)?;
        let zsize = zdata.len() as u64;
        let req = PublishRequest {
            publish_id,
            files: vec![
                NewFile {
                    name: file_name.clone(),
                    data,
                },
                NewFile {
                    name: format!("{file_name}.zz"),
                    data: zdata.into(),
                },
            ],
            semver: Some(semver),
            // Checked again under the store's publish lock: concurrent uploads of one
            // version cannot both succeed (the check above only saves the compression).
            unique_semver: true,
            block_size: None,
        };
        let v = store.publish(req, Box::new(|_| Ok(None)))?;
        Ok::<_, ApiError>((v, zsize))
    })
    .await
    .map_err(ApiError::internal)??;
    st.metrics.upload(size.saturating_add(zsize));
    let sha256 = v.files.first().map(|f| f.sha256.to_hex()).unwrap_or_default();
    tracing::info!(target: "suitcase::audit", action = "put-image", who = %who, publish_id = %v.publish_id, version = v.seq, semver = %version, sha256 = %sha256, size, zsize);
    let url = format!("{}/images/{}/{name}", base_url(&st, &headers), v.publish_id);
    Ok((
        StatusCode::CREATED,
        Json(ImageUploaded {
            r#type: v.publish_id.clone(),
            version: version.to_string(),
            size,
            zsize,
            url,
        }),
    ))
}

#[derive(Deserialize)]
pub(crate) struct ImagesQuery {
    r#type: Option<String>,
    vers: Option<String>,
    addr: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct ImageEntry {
    r#type: String,
    version: String,
    url: String,
}

pub(crate) async fn images_json(
    State(st): State<AppState>,
    peer: crate::download::Peer,
    headers: HeaderMap,
    Query(q): Query<ImagesQuery>,
) -> Result<Json<Vec<ImageEntry>>, ApiError> {
    let ids: Vec<String> = match q.r#type.as_deref().filter(|t| !t.is_empty()) {
        Some(t) => {
            suitcase_store::validate_publish_id(t)?;
            vec![t.to_string()]
        }
        None => st.store.publish_ids(),
    };
    let device = match q.vers.as_deref().filter(|v| !v.is_empty()) {
        Some(v) => Some(parse_version(v).ok_or_else(|| ApiError::bad_request(format!("vers {v:?} is not a version")))?),
        None => None,
    };
    let base = base_url(&st, &headers);
    let mut out = Vec::new();
    for id in ids {
        let addr = q.addr.as_deref().filter(|a| !a.is_empty());
        if let (Some(fleet), Some(running)) = (&st.fleet, &device) {
            fleet.checked_in(peer.addr, addr.map(str::to_string), id.clone(), running.to_string());
        }
        let Some(v) = newest(&st, &id, st.allowed(&id, &peer, addr)) else {
            continue;
        };
        let Some(version) = v.semver.clone() else { continue };
        if device.as_ref().is_some_and(|d| *d >= version) {
            continue;
        }
        let Some(f) = main_file(&v) else { continue };
        out.push(ImageEntry {
            r#type: id.clone(),
            version: version.to_string(),
            url: format!("{base}/images/{id}/{}", f.name),
        });
    }
    out.sort_by(|a, b| a.r#type.cmp(&b.r#type));
    tracing::info!(target: "suitcase::audit", action = "images-query", r#type = ?q.r#type, vers = ?q.vers, addr = ?q.addr, offered = out.len());
    Ok(Json(out))
}

pub(crate) async fn image_file(
    State(st): State<AppState>,
    peer: crate::download::Peer,
    headers: HeaderMap,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    let (id, name) = match path.rsplit_once('/') {
        Some((id, name)) => (id.to_string(), name.to_string()),
        None => {
            let stem = path.strip_suffix(".zz").unwrap_or(&path);
            let (ty, _) = split_image_name(stem).ok_or_else(|| ApiError::not_found(format!("no image {path:?}")))?;
            (ty.to_string(), path.clone())
        }
    };
    suitcase_store::validate_publish_id(&id)?;
    // `/images/<id>/<file>` is `<id>/<file>` of the one resolver: the newest version holding it.
    let full = format!("{id}/{name}");
    let segments: Vec<&str> = full.split('/').collect();
    let found =
        suitcase_store::paths::resolve_allowed(st.store.as_ref(), &segments, |pid| st.allowed(pid, &peer, None))
            .ok_or_else(|| ApiError::not_found(format!("no image {path:?}")))?;
    let entry = &found.entry;
    let data = crate::download::read(&st, entry).await?;
    let r = serve(&headers, data, entry, "application/octet-stream");
    Ok(crate::download::track(&st, &peer, None, None, entry, r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_names() {
        assert_eq!(parse_version("1.2.3"), Some(semver::Version::new(1, 2, 3)));
        assert_eq!(parse_version("v1.10"), Some(semver::Version::new(1, 10, 0)));
        assert_eq!(parse_version("7"), Some(semver::Version::new(7, 0, 0)));
        assert_eq!(
            parse_version("1.2.3-rc.1").map(|v| v.pre.to_string()),
            Some("rc.1".into())
        );
        for bad in ["", "x", "1..2", "1.2.3.4", "1.a"] {
            assert_eq!(parse_version(bad), None, "{bad}");
        }
        let (t, v) = split_image_name("weather-esp32-c3_v1.10.0.bin").unwrap();
        assert_eq!((t, v.to_string().as_str()), ("weather-esp32-c3", "1.10.0"));
        assert!(split_image_name("nover.bin").is_none());
        assert!(parse_version("1.10.0") > parse_version("1.9.0"), "semver, not strings");
    }
}
