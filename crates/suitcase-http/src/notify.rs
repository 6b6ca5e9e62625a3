//! `POST /notify` (ota-server's contract: fields `publish_id`, `urls` comma-separated,
//! `version` default `latest`, as a form or multipart) and `POST /remove`.

use std::future::Future;
use std::pin::Pin;

use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap};
use axum::{Form, Json};
use serde::{Deserialize, Serialize};
use suitcase_store::Version;

use crate::{ApiError, AppState, VersionView};

/// The result of notifying one device.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DeviceNotice {
    /// The device as given.
    pub device: String,
    /// Where it resolved to.
    pub address: Option<String>,
    /// `ok`, `error` (the device answered with an error code), `reset`, `timeout` or
    /// `unreachable` (bad address, no route).
    pub result: String,
    /// The CoAP code the device answered, e.g. `2.01`.
    pub code: Option<String>,
    /// Transmissions of the request.
    pub transmissions: u32,
    /// Time until the result.
    pub elapsed_ms: u64,
    /// Detail for errors.
    pub message: Option<String>,
    /// With a watch: what the device downloaded from this server after the trigger
    /// (`downloaded`: the manifest and an image; `refused`: the manifest only, so the device
    /// turned it down, e.g. its sequence number was not above the running image's;
    /// `nothing`: no download at all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download: Option<String>,
    /// The files the device downloaded completely during the watch (paths).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fetched: Vec<String>,
}

/// When the trigger's payload (the manifest URL) is followed by one NUL byte. Stock RIOT
/// (2025.01 and later) reads the payload with `strlen()` and needs it; see the binary's
/// `--trigger-nul`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TriggerNul {
    /// Never.
    Never,
    /// For the path `suit/trigger` (RIOT's contract).
    SuitTrigger,
    /// For every path.
    Always,
}

impl std::str::FromStr for TriggerNul {
    type Err = ApiError;
    fn from_str(s: &str) -> Result<Self, ApiError> {
        match s.trim() {
            "never" => Ok(TriggerNul::Never),
            "suit-trigger" => Ok(TriggerNul::SuitTrigger),
            "always" => Ok(TriggerNul::Always),
            other => Err(ApiError::bad_request(format!(
                "trigger_nul {other:?}: never, suit-trigger or always"
            ))),
        }
    }
}

/// What a `/notify` request asks beyond the devices and the URL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NotifyOptions {
    /// The NUL after the URL; `None`: the server's setting.
    pub trigger_nul: Option<TriggerNul>,
    /// After a device accepted the trigger, watch up to this long what it downloads.
    pub watch: Option<std::time::Duration>,
}

/// The longest watch a `/notify` may ask for.
pub const MAX_WATCH_SECS: u64 = 120;

/// Sends the trigger to devices (implemented over CoAP by the binary).
pub trait Notifier: Send + Sync + 'static {
    /// POST `manifest_url` to each device's trigger resource.
    fn notify(
        &self,
        devices: Vec<String>,
        manifest_url: String,
        options: NotifyOptions,
    ) -> Pin<Box<dyn Future<Output = Vec<DeviceNotice>> + Send>>;
}

#[derive(Deserialize, Default)]
struct NotifyForm {
    publish_id: Option<String>,
    urls: Option<String>,
    version: Option<String>,
    /// `never`, `suit-trigger` or `always` (see [`TriggerNul`]).
    trigger_nul: Option<String>,
    watch: Option<String>,
}

/// The answer of `/notify`.
#[derive(Serialize)]
pub struct NotifyView {
    publish_id: String,
    manifest_url: String,
    /// The sequence number of the manifest the devices were sent: a device installs it
    /// only when it is greater than its running image's (RIOT refuses others after
    /// answering the trigger with 2.01, so `ok` means "trigger accepted", not "installed").
    sequence_number: Option<u64>,
    results: Vec<DeviceNotice>,
}

async fn read_form(req: Request) -> Result<NotifyForm, ApiError> {
    let is_multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if !is_multipart {
        let Form(f) = Form::<NotifyForm>::from_request(req, &())
            .await
            .map_err(|e| ApiError::bad_request(format!("form: {}", e.body_text())))?;
        return Ok(f);
    }
    let mut mp = Multipart::from_request(req, &())
        .await
        .map_err(|e| ApiError::bad_request(format!("multipart: {}", e.body_text())))?;
    let mut f = NotifyForm::default();
    while let Some(field) = mp
        .next_field()
        .await
        .map_err(|e| ApiError::bad_request(format!("multipart: {}", e.body_text())))?
    {
        let name = field.name().unwrap_or_default().to_string();
        let text = field
            .text()
            .await
            .map_err(|e| ApiError::bad_request(format!("field {name:?}: {}", e.body_text())))?;
        match name.as_str() {
            "publish_id" => f.publish_id = Some(text),
            "urls" => f.urls = Some(text),
            "version" => f.version = Some(text),
            "trigger_nul" => f.trigger_nul = Some(text),
            "watch" => f.watch = Some(text),
            _ => {}
        }
    }
    Ok(f)
}

/// Find a version by what a user calls it ([`suitcase_store::paths::find_version`]).
pub(crate) fn find_version(st: &AppState, id: &str, which: Option<&str>) -> Result<std::sync::Arc<Version>, ApiError> {
    use suitcase_store::paths::FindVersionError as E;
    suitcase_store::paths::find_version(st.store.as_ref(), id, which).map_err(|e| match e {
        E::Spec(_) => ApiError::bad_request(e.to_string()),
        E::NoPublishId(_) | E::NoVersion(..) => ApiError::not_found(e.to_string()),
    })
}

/// The URL a device is told to fetch for `v`.
fn manifest_url(base: &str, v: &Version, latest: bool) -> Option<String> {
    Some(format!("{base}/{}", suitcase_store::paths::manifest_path(v, latest)?))
}

pub(crate) async fn notify(
    State(st): State<AppState>,
    headers: HeaderMap,
    req: Request,
) -> Result<Json<NotifyView>, ApiError> {
    let who = req
        .extensions()
        .get::<crate::auth::Who>()
        .map_or_else(|| "-".to_string(), |w| w.0.clone());
    let form = read_form(req).await?;
    let id = form
        .publish_id
        .ok_or_else(|| ApiError::bad_request("missing field publish_id"))?;
    suitcase_store::validate_publish_id(&id)?;
    let devices: Vec<String> = form
        .urls
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if devices.is_empty() {
        return Err(ApiError::bad_request(
            "missing field urls (comma-separated device addresses)",
        ));
    }
    if devices.len() > 1000 {
        return Err(ApiError::bad_request("at most 1000 devices per request"));
    }
    let options = NotifyOptions {
        trigger_nul: form
            .trigger_nul
            .as_deref()
            .filter(|t| !t.trim().is_empty())
            .map(str::parse)
            .transpose()?,
        watch: match form.watch.as_deref().map(str::trim).filter(|w| !w.is_empty()) {
            None => None,
            Some(w) => Some(
                w.parse::<u64>()
                    .ok()
                    .filter(|s| *s <= MAX_WATCH_SECS)
                    .map(std::time::Duration::from_secs)
                    .ok_or_else(|| ApiError::bad_request(format!("watch {w:?}: seconds, 0 to {MAX_WATCH_SECS}")))?,
            ),
        },
    };
    let version = find_version(&st, &id, form.version.as_deref())?;
    let latest = st.store.latest(&id).is_some_and(|l| l.seq == version.seq);
    let base = st.coap_base(&headers);
    let url = manifest_url(&base, &version, latest)
        .ok_or_else(|| ApiError::not_found(format!("version {} of {id:?} has no manifest", version.seq)))?;
    let notifier = st.notifier.clone().ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "notify is not available on this server",
        )
    })?;
    // A registered device's id stands for its CoAP address; its results carry the id again.
    let mut devices = devices;
    let mut ids = std::collections::HashMap::new();
    if let Some(fleet) = &st.fleet {
        for d in devices.iter_mut() {
            if suitcase_fleet::validate_id(d).is_ok() {
                if let Ok(Some(found)) = fleet.get(d).await {
                    if let Some(coap) = found.coap {
                        ids.entry(coap.clone()).or_insert_with(|| d.clone());
                        *d = coap;
                    }
                }
            }
        }
    }
    // A device named twice (by its id and its address) is triggered once.
    let mut seen = std::collections::HashSet::new();
    devices.retain(|d| seen.insert(d.clone()));
    let sha256 = version
        .manifest
        .as_ref()
        .map(|m| m.file.sha256.to_hex())
        .unwrap_or_default();
    tracing::info!(target: "suitcase::audit", action = "notify", who = %who, publish_id = %id, version = version.seq, sha256 = %sha256, url = %url, devices = devices.len());
    let sent_at = suitcase_fleet::now_ms();
    let results = notifier.notify(devices, url.clone(), options).await;
    for r in &results {
        st.metrics.trigger(&r.result);
    }
    if let Some(fleet) = &st.fleet {
        for r in results.iter().filter(|r| r.result == "ok") {
            let address = r.address.as_deref().and_then(|a| a.parse().ok());
            fleet.notified(r.device.clone(), address, id.clone(), version.seq, sent_at);
        }
    }
    let mut results = results;
    for r in &mut results {
        if let Some(name) = ids.get(&r.device) {
            r.device = name.clone();
        }
    }
    Ok(Json(NotifyView {
        publish_id: id,
        manifest_url: url,
        sequence_number: version.manifest.as_ref().and_then(|m| m.sequence_number),
        results,
    }))
}

/// `POST /remove {"publish_id": …, "version": …}` or `{…, "sequence_number": N}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RemoveBody {
    publish_id: String,
    /// A JSON number: the version number; a string: `latest`, a semver or a decimal version
    /// number.
    #[serde(default)]
    version: Option<serde_json::Value>,
    /// The manifest sequence number (e.g. RIOT's `riot.suit.<seq>.bin`).
    #[serde(default)]
    sequence_number: Option<u64>,
}

/// The one version a removal names, exactly: a destructive request does not guess.
fn removal_target(st: &AppState, body: &RemoveBody) -> Result<std::sync::Arc<Version>, ApiError> {
    let id = &body.publish_id;
    let versions = st.store.versions(id);
    if versions.is_empty() {
        return Err(ApiError::not_found(format!("no publish-id {id:?}")));
    }
    let by_number = |n: u64| {
        versions
            .iter()
            .find(|v| v.seq == n)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("{id:?} has no version {n}")))
    };
    match (&body.version, body.sequence_number) {
        (Some(_), Some(_)) | (None, None) => Err(ApiError::bad_request(
            "give exactly one of version (the version number, \"latest\" or a semver) and sequence_number",
        )),
        (None, Some(n)) => versions
            .iter()
            .find(|v| v.manifest.as_ref().and_then(|m| m.sequence_number) == Some(n))
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("{id:?} has no version with manifest sequence number {n}"))),
        (Some(serde_json::Value::Number(n)), None) => match n.as_u64() {
            Some(n) => by_number(n),
            None => Err(ApiError::bad_request(format!("version {n}: not a version number"))),
        },
        (Some(serde_json::Value::String(s)), None) => {
            let s = s.trim();
            if s == "latest" {
                versions
                    .last()
                    .cloned()
                    .ok_or_else(|| ApiError::not_found(format!("no publish-id {id:?}")))
            } else if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                by_number(
                    s.parse()
                        .map_err(|_| ApiError::bad_request(format!("version {s:?}: too large")))?,
                )
            } else {
                let sv = semver::Version::parse(s.trim_start_matches('v')).map_err(|_| {
                    ApiError::bad_request(format!("version {s:?}: \"latest\", a version number or a semver"))
                })?;
                let mut matching = versions.iter().filter(|v| v.semver.as_ref() == Some(&sv));
                match (matching.next(), matching.next()) {
                    (Some(v), None) => Ok(v.clone()),
                    (None, _) => Err(ApiError::not_found(format!("{id:?} has no version {sv}"))),
                    (Some(_), Some(_)) => Err(ApiError::new(
                        axum::http::StatusCode::CONFLICT,
                        format!("several versions of {id:?} are {sv}; name one by its version number"),
                    )),
                }
            }
        }
        (Some(_), None) => Err(ApiError::bad_request("version: a number or a string")),
    }
}

pub(crate) async fn remove(
    State(st): State<AppState>,
    headers: HeaderMap,
    who: Option<axum::Extension<crate::auth::Who>>,
    body: Result<Json<RemoveBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<VersionView>, ApiError> {
    let who = crate::auth::who(who);
    let Json(body) = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    suitcase_store::validate_publish_id(&body.publish_id)?;
    let v = removal_target(&st, &body)?;
    let store = st.store.clone();
    let (id, seq) = (body.publish_id.clone(), v.seq);
    let removed = tokio::task::spawn_blocking(move || store.remove(&id, seq))
        .await
        .map_err(ApiError::internal)??;
    for f in removed.files.iter().chain(removed.manifest.as_ref().map(|m| &m.file)) {
        tracing::info!(target: "suitcase::audit", action = "remove", who = %who, publish_id = %removed.publish_id, version = removed.seq, file = %f.name, sha256 = %f.sha256.to_hex());
    }
    Ok(Json(VersionView::new(&removed, &st.coap_base(&headers))))
}
