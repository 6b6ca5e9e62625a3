//! `POST /publish`: multipart with `publish_id`, optional `version` (semver), optional
//! `class` (class-id source, default the publish-id), optional `manifest` (a signed envelope),
//! and one part per firmware file. Without a manifest the server builds one; the optional
//! fields `profile` (`draft37`, or `riot09` for RIOT devices), `vendor_domain` and
//! `component` (a RIOT storage: `ram,0`, `/nvm0/SLOT0.txt`) shape it. As in ota-server, a file part's *field name* is the
//! stored name; generic field names (`file`, `files`, `image`) use the part's filename.

use axum::extract::{Multipart, State};
use axum::http::HeaderMap;
use axum::Json;
use bytes::Bytes;
use suitcase_store::{Draft, NewFile, NewManifest, PublishRequest};
use suitcase_suit::Envelope;

use crate::{ApiError, AppState, VersionView};

fn basename(name: &str) -> &str {
    name.rsplit(['/', '\\']).next().unwrap_or(name)
}

pub(crate) async fn publish(
    State(st): State<AppState>,
    headers: HeaderMap,
    who: Option<axum::Extension<crate::auth::Who>>,
    mut multipart: Multipart,
) -> Result<Json<VersionView>, ApiError> {
    let who = crate::auth::who(who);
    tracing::info!(
        who = %who,
        bytes = ?headers.get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()),
        "publish upload started"
    );
    let mut publish_id = None;
    let mut semver = None;
    let mut class = None;
    let mut block_size = None;
    let mut build = crate::BuildRequest::default();
    let mut build_fields = Vec::new();
    let mut manifest: Option<(String, Bytes)> = None;
    let mut files = Vec::new();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| ApiError::new(e.status(), format!("multipart: {}", e.body_text())))?
    {
        let name = field.name().unwrap_or_default().to_string();
        let filename = field.file_name().map(|s| basename(s).to_string());
        let data = field
            .bytes()
            .await
            .map_err(|e| ApiError::new(e.status(), format!("multipart field {name:?}: {}", e.body_text())))?;
        let text = || {
            std::str::from_utf8(&data)
                .map(|s| s.trim().to_string())
                .map_err(|_| ApiError::bad_request(format!("field {name:?} is not UTF-8")))
        };
        if matches!(name.as_str(), "profile" | "vendor_domain" | "component") {
            build_fields.push(name.clone());
        }
        match name.as_str() {
            "publish_id" => publish_id = Some(text()?),
            "version" => {
                let t = text()?;
                let v = semver::Version::parse(t.trim_start_matches('v'))
                    .map_err(|e| ApiError::bad_request(format!("version {t:?} is not semver: {e}")))?;
                semver = Some(v);
            }
            "class" => class = Some(text()?),
            // CoAP block size for this publish-id's devices that send no Block2 (e.g. 256
            // for Zephyr coap_client fleets built with CONFIG_COAP_CLIENT_BLOCK_SIZE=256).
            "block_size" => {
                let t = text()?;
                let n = t
                    .parse::<u16>()
                    .ok()
                    .filter(|n| suitcase_store::valid_block_size(*n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("block_size {t:?}: a power of two from 16 to 1024"))
                    })?;
                block_size = Some(n);
            }
            "profile" => {
                let t = text()?;
                build.profile = t.parse().map_err(|e| ApiError::bad_request(format!("profile: {e}")))?;
            }
            "vendor_domain" => build.vendor_domain = Some(text()?).filter(|d| !d.is_empty()),
            "component" => {
                let t = text()?;
                let c =
                    suitcase_suit::builder::parse_component(&t).map_err(|e| ApiError::bad_request(e.to_string()))?;
                build.component = Some(c);
            }
            "manifest" => {
                let stored = filename.unwrap_or_else(|| "manifest.suit".into());
                manifest = Some((stored, data));
            }
            "file" | "files" | "image" => {
                let stored = filename.ok_or_else(|| ApiError::bad_request(format!("part {name:?} has no filename")))?;
                files.push(NewFile { name: stored, data });
            }
            "" => return Err(ApiError::bad_request("a multipart part has no name")),
            other => files.push(NewFile {
                name: basename(other).to_string(),
                data,
            }),
        }
    }
    let publish_id = publish_id.ok_or_else(|| ApiError::bad_request("missing field publish_id"))?;
    suitcase_store::validate_publish_id(&publish_id)?;
    if files.is_empty() {
        return Err(ApiError::bad_request("No file found in request"));
    }
    // RIOT's build uploads its signed manifest as a plain part named riot.suit.<seq>.bin.
    if manifest.is_none() {
        if let Some(i) = files.iter().position(|f| is_riot_manifest_name(&f.name)) {
            let f = files.remove(i);
            manifest = Some((f.name, f.data));
        }
    }
    // An uploaded manifest must be a SUIT envelope, signed by a trusted key when any is
    // configured, describing files of this publish or stored ones; its sequence number must
    // grow (the store checks that).
    let provided = match manifest {
        None => None,
        Some((name, data)) => {
            let env = Envelope::decode(&data)?;
            if !st.config.trusted_keys.is_empty() {
                env.verify_any(&st.config.trusted_keys).map_err(|e| {
                    ApiError::new(
                        axum::http::StatusCode::FORBIDDEN,
                        format!("manifest {name:?} is not signed by a trusted key (--trust): {e}"),
                    )
                })?;
            }
            let described = suitcase_policy::uploads::described(env.manifest(), env.profile())
                .map_err(|e| ApiError::bad_request(format!("manifest {name:?}: {e}")))?;
            Some((
                described,
                NewManifest {
                    name,
                    sequence_number: Some(env.manifest().sequence_number),
                    data,
                    server_built: false,
                },
            ))
        }
    };
    if provided.is_some() && !build_fields.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{} shape the manifest the server builds; this publish brings its own manifest",
            build_fields.join(", ")
        )));
    }
    if provided.is_none() {
        if let Some(why) = st.signer.refuses(build.profile) {
            return Err(ApiError::bad_request(why));
        }
    }
    let coap_base = st.coap_base(&headers);
    build.class = class;
    let audit: Vec<(String, usize)> = files.iter().map(|f| (f.name.clone(), f.data.len())).collect();
    let req = PublishRequest {
        publish_id: publish_id.clone(),
        files,
        semver,
        unique_semver: false,
        block_size,
    };
    let store = st.store.clone();
    let signer = st.signer.clone();
    let base = coap_base.clone();
    let version = tokio::task::spawn_blocking(move || {
        let provided = match provided {
            None => None,
            Some((described, m)) => {
                // Hashing the uploads is CPU work: here, off the async workers.
                let mut known: std::collections::HashMap<[u8; 32], (String, u64)> = store
                    .versions(&req.publish_id)
                    .iter()
                    .flat_map(|v| v.files.iter())
                    .map(|f| (f.sha256.0, (f.name.clone(), f.size)))
                    .collect();
                for f in &req.files {
                    let d = suitcase_store::Sha256::of(&f.data).0;
                    known.insert(d, (f.name.clone(), f.data.len() as u64));
                }
                suitcase_policy::uploads::check(&described, &known)
                    .map_err(|e| ApiError::bad_request(format!("manifest {:?}: {e}", m.name)))?;
                Some(m)
            }
        };
        Ok::<_, ApiError>(store.publish(
            req,
            Box::new(move |draft: &Draft<'_>| match provided {
                Some(m) => Ok(Some(m)),
                None => signer.build(draft, &base, &build).map(Some),
            }),
        )?)
    })
    .await
    .map_err(ApiError::internal)??;
    st.metrics.upload(
        version
            .files
            .iter()
            .chain(version.manifest.as_ref().map(|m| &m.file))
            .map(|f| f.size)
            .sum(),
    );
    for f in version.files.iter().chain(version.manifest.as_ref().map(|m| &m.file)) {
        tracing::info!(
            target: "suitcase::audit",
            action = "publish",
            who = %who,
            publish_id = %version.publish_id,
            version = version.seq,
            file = %f.name,
            sha256 = %f.sha256.to_hex(),
            size = f.size,
        );
    }
    tracing::debug!(files = ?audit, "publish request");
    Ok(Json(VersionView::new(&version, &coap_base)))
}

/// `riot.suit.<digits>.bin`: the signed manifest of RIOT's `suit/publish`.
fn is_riot_manifest_name(name: &str) -> bool {
    name.strip_prefix("riot.suit.")
        .and_then(|r| r.strip_suffix(".bin"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}
