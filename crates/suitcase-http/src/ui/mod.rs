//! The management page: `GET /`, its live sections `GET /ui/section/<name>` and its two assets
//! `GET /ui/app.js` and `GET /ui/app.css`, compiled into the binary (update servers run on
//! closed networks: nothing comes from elsewhere).
//!
//! * Markup comes from maud templates, which escape every interpolated value unless told
//!   otherwise (nothing here tells them otherwise), so no publish-id, file name, device id or
//!   rollout reason can inject markup. The script builds its own elements with
//!   `textContent` only, and the page's Content-Security-Policy allows no inline script or
//!   style at all.
//! * Without JavaScript (or without signing in) the page is the read-only listing. The
//!   script adds sign-in with a publisher token, kept in the tab's `sessionStorage` and sent
//!   as `Authorization: Bearer` by the page's own requests. No cookie is ever set, so another
//!   site cannot ride a session (no CSRF).
//! * The live sections (devices, rollouts) are polled with `If-None-Match`. Server-sent events
//!   were not used: `EventSource` cannot send an `Authorization` header, and a token in a URL
//!   ends up in logs.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use crate::{ApiError, AppState};

const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// What the page's own documents may load: nothing but this server's script and style.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn size(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// `YYYY-MM-DD HH:MM UTC`.
pub(crate) fn date(unix: u64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    i64::try_from(unix)
        .ok()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| format!("@{unix}"))
}

/// A strong ETag of a body (FNV-1a, 64 bits: it only has to tell this body from the last).
fn etag(body: &[u8]) -> String {
    let h = body.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("\"{h:016x}\"")
}

/// A response of `body` with the page's headers, or 304 when the client has it.
fn document(headers: &HeaderMap, content_type: &'static str, body: String, cache: &'static str) -> Response {
    let tag = etag(body.as_bytes());
    let mut r = if crate::download::if_none_match(headers, &tag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, content_type)], body).into_response()
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::VARY, HeaderValue::from_static("Authorization"));
    r
}

/// `GET /ui/app.js`, `GET /ui/app.css`.
pub(crate) async fn asset(headers: HeaderMap, Path(name): Path<String>) -> Response {
    match name.as_str() {
        "app.js" => document(
            &headers,
            "text/javascript; charset=utf-8",
            APP_JS.to_string(),
            "no-cache",
        ),
        "app.css" => document(&headers, "text/css; charset=utf-8", APP_CSS.to_string(), "no-cache"),
        _ => ApiError::not_found(format!("no asset {name:?}")).into_response(),
    }
}

/// Who looks at the page: `Some(name)` with a valid publisher token, `None` without any;
/// a wrong token is refused, so the page can tell its user to sign in again.
fn viewer(st: &AppState, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    if !headers.contains_key(header::AUTHORIZATION) {
        return Ok(None);
    }
    let snap = st.tokens.snapshot();
    if snap.any(suitcase_auth::Role::Publisher).is_none() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server's token file is unreadable (see the server log)",
        ));
    }
    crate::auth::credential(headers, &["Bearer"])
        .and_then(|t| snap.check(t, &[suitcase_auth::Role::Publisher]))
        .map(Some)
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "the publisher token is not valid (any more)"))
}

/// What the page shows: everything it renders comes from here.
struct View {
    /// Devices and rollouts are listed (to a publisher, or while no device token exists).
    open: bool,
    coap_base: String,
    http_base: String,
    max_upload: usize,
    fleet: Option<FleetRows>,
    rollouts: Option<Vec<suitcase_fleet::RolloutView>>,
}

/// Devices, counts per state, and whether the device list is withheld.
type FleetRows = (Vec<suitcase_fleet::Device>, Vec<(String, i64)>, bool);

/// Devices shown on the page at most (the API lists all).
const FLEET_ROWS: usize = 500;

/// Rollouts shown on the page at most (newest first).
const ROLLOUT_ROWS: usize = 20;

/// Devices and rollouts are listed to a publisher, and to anyone where downloads are open too
/// (no device token exists); otherwise the page shows the counts per state.
fn listings_open(st: &AppState, signed_in: bool) -> bool {
    signed_in || st.tokens.snapshot().any(suitcase_auth::Role::Device) == Some(false)
}

async fn fleet_rows(st: &AppState, signed_in: bool) -> Option<FleetRows> {
    let f = st.fleet.as_ref()?;
    let open = listings_open(st, signed_in);
    let devices = if open {
        f.list(&suitcase_fleet::Filter::default(), FLEET_ROWS).await
    } else {
        Ok(Vec::new())
    };
    match (devices, f.counts().await) {
        (Ok(d), Ok(c)) => Some((d, c, !open)),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "the fleet section could not be read");
            None
        }
    }
}

async fn rollout_rows(st: &AppState, open: bool) -> Option<Vec<suitcase_fleet::RolloutView>> {
    let f = st.fleet.as_ref()?;
    if !open {
        return Some(Vec::new());
    }
    Some(f.rollouts(ROLLOUT_ROWS).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "the rollout section could not be read");
        Vec::new()
    }))
}

impl View {
    async fn load(st: &AppState, headers: &HeaderMap, signed_in: bool, parts: Parts) -> View {
        View {
            open: listings_open(st, signed_in),
            coap_base: st.coap_base(headers),
            http_base: crate::esp::base_url(st, headers),
            max_upload: st.config.max_body_bytes,
            fleet: if parts.fleet {
                fleet_rows(st, signed_in).await
            } else {
                None
            },
            rollouts: if parts.rollouts {
                rollout_rows(st, listings_open(st, signed_in)).await
            } else {
                None
            },
        }
    }
}

/// Which sections to read.
#[derive(Clone, Copy)]
struct Parts {
    fleet: bool,
    rollouts: bool,
}

pub(crate) async fn index(State(st): State<AppState>, headers: HeaderMap) -> Response {
    // The page itself never asks for a token (a browser's plain GET has none): it is the
    // public listing, which the script then refreshes section by section once signed in.
    let view = View::load(
        &st,
        &headers,
        false,
        Parts {
            fleet: true,
            rollouts: true,
        },
    )
    .await;
    document(
        &headers,
        "text/html; charset=utf-8",
        page(&st, &view).into_string(),
        "no-cache",
    )
}

/// `GET /ui/section/{firmware,fleet,rollouts}`: one live section, as the page embeds it.
pub(crate) async fn section(State(st): State<AppState>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    let signed_in = match viewer(&st, &headers) {
        Ok(v) => v.is_some(),
        Err(e) => return e.into_response(),
    };
    let parts = Parts {
        fleet: name == "fleet",
        rollouts: name == "rollouts",
    };
    let view = View::load(&st, &headers, signed_in, parts).await;
    let markup = match name.as_str() {
        "firmware" => firmware_section(&st, &view),
        "fleet" => match &view.fleet {
            Some(f) => fleet_section(f),
            None => return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "device tracking is off").into_response(),
        },
        "rollouts" => rollout_list(view.rollouts.as_deref().unwrap_or_default(), view.open),
        other => return ApiError::not_found(format!("no section {other:?}")).into_response(),
    };
    document(&headers, "text/html; charset=utf-8", markup.into_string(), "no-store")
}

/// `YYYY-MM-DD HH:MM UTC` of Unix milliseconds.
fn date_ms(ms: Option<i64>) -> String {
    ms.and_then(|m| u64::try_from(m / 1000).ok())
        .map_or("–".to_string(), date)
}

fn version_text(seq: Option<u64>, semver: Option<&str>) -> String {
    suitcase_fleet::version_text(seq, semver).unwrap_or_else(|| "–".to_string())
}

/// A URL with a copy button (the button works with the script; the field is selectable
/// without it).
fn copy_field(label: &str, url: &str) -> Markup {
    html! {
        div.copy {
            label { span.kind { (label) } input type="text" readonly value=(url) aria-label=(format!("{label} URL")); }
            button.js type="button" data-copy data-key=(format!("copy-{label}-{url}")) { "Copy" }
        }
    }
}

fn rollout_list(rollouts: &[suitcase_fleet::RolloutView], open: bool) -> Markup {
    use suitcase_fleet::RolloutState as S;
    html! {
        div #rollouts-live .live data-section="rollouts" {
            @if !open {
                p.empty { "Device tokens are in use: rollouts are for publishers. Sign in, or see them with " code { "suitcase rollout list" } "." }
            } @else if rollouts.is_empty() {
                p.empty { "No rollout yet." }
            } @else {
                table.cards role="table" {
                    thead role="rowgroup" { tr role="row" { th role="columnheader" { "#" } th role="columnheader" { "publish-id" } th role="columnheader" { "version" } th role="columnheader" { "state" } th role="columnheader" { "waves: installed / failed of devices" } th role="columnheader" { "created" } th.pub role="columnheader" { span.sr { "Actions" } } } }
                    tbody role="rowgroup" {
                        @for r in rollouts {
                            tr role="row" data-rollout=(r.id) data-state=(r.state.as_str()) {
                                td role="cell" data-label="#" { (r.id) @if let Some(n) = &r.name { " " small.dim { (n) } } }
                                td role="cell" data-label="publish-id" { (r.publish_id) }
                                td role="cell" data-label="version" { (version_text(r.seq, r.semver.as_deref())) }
                                td role="cell" data-label="state" {
                                    span.state { (r.state.as_str()) } " " small.dim { "wave " (r.wave + 1) "/" (r.waves.len()) }
                                    @if let Some(reason) = &r.reason { " " small.dim.reason { "(" (reason) ")" } }
                                }
                                td role="cell" data-label="waves" {
                                    @for (i, w) in r.waves.iter().enumerate() {
                                        @let done = w.counts.installed + w.counts.failed;
                                        div.wave data-wave=(i + 1) data-installed=(w.counts.installed) data-failed=(w.counts.failed) data-devices=(w.counts.devices) {
                                            progress max=(w.counts.devices.max(1)) value=(done) aria-label=(format!("wave {}", i + 1)) {} " "
                                            (w.counts.installed) " / " (w.counts.failed) " of " (w.counts.devices)
                                            @if w.started_at.is_none() { " " small.dim { "(waiting)" } }
                                        }
                                    }
                                }
                                td role="cell" data-label="created" { (date_ms(Some(r.created_at))) }
                                td.pub role="cell" data-label="" {
                                    div.actions {
                                        @if matches!(r.state, S::Running | S::Scheduled) {
                                            button type="button" data-rollout-action="pause" data-id=(r.id) data-key=(format!("rollout-{}-toggle", r.id)) { "Pause" }
                                        }
                                        @if r.state == S::Paused {
                                            button type="button" data-rollout-action="resume" data-id=(r.id) data-key=(format!("rollout-{}-toggle", r.id)) { "Resume" }
                                        }
                                        @if !matches!(r.state, S::Finished | S::Aborted) {
                                            button.danger type="button" data-rollout-action="abort" data-id=(r.id) data-key=(format!("rollout-{}-abort", r.id))
                                                data-what=(format!("rollout #{} of {} {}", r.id, r.publish_id, version_text(r.seq, r.semver.as_deref()))) { "Abort…" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn fleet_section(fleet: &FleetRows) -> Markup {
    let (devices, counts, restricted) = fleet;
    let total: i64 = counts.iter().map(|(_, n)| n).sum();
    html! {
        div #fleet-live .live data-section="fleet" {
            p.counts { (total) " in all" @for (state, n) in counts { " · " (state) " " (n) } }
            @if *restricted {
                p.empty { "Device tokens are in use: the list of devices is for publishers. Sign in, or see it with " code { "suitcase device list" } "." }
            } @else if devices.is_empty() {
                p.empty { "No device known yet. Add one with " code { "suitcase device add ID --coap '[2001:db8::1]'" } ", or let devices fetch a manifest." }
            } @else {
                @if i64::try_from(devices.len()).unwrap_or(i64::MAX) < total {
                    p.dim { "The first " (devices.len()) " devices are shown; " code { "suitcase device list" } " and " code { "GET /api/v1/devices" } " list all." }
                }
                table.cards role="table" {
                    thead role="rowgroup" { tr role="row" { th role="columnheader" { "device" } th role="columnheader" { "class" } th role="columnheader" { "publish-id" } th role="columnheader" { "state" } th role="columnheader" { "runs" } th role="columnheader" { "update to" } th role="columnheader" { "progress" } th role="columnheader" { "last seen" } } }
                    tbody role="rowgroup" {
                        @for d in devices {
                            tr role="row" data-device=(d.id) data-state=(d.state.as_str()) {
                                td role="cell" data-label="device" { (d.id) @if !d.registered { " " small.dim { "(seen)" } }
                                    @if let Some(c) = &d.coap { br; small.dim.addr { (c) } } }
                                td role="cell" data-label="class" { (d.class.as_deref().unwrap_or("–")) }
                                td role="cell" data-label="publish-id" { (d.publish_id.as_deref().unwrap_or("–")) }
                                td role="cell" data-label="state" { span.state { (d.state.as_str()) } @if let Some(r) = &d.reason { " " small.dim { "(" (r) ")" } } }
                                td role="cell" data-label="runs" { (version_text(d.running_seq, d.running_semver.as_deref())) }
                                td role="cell" data-label="update to" { (if d.target_version.is_some() { version_text(d.target_seq, d.target_semver.as_deref()) } else { "–".to_string() }) }
                                td role="cell" data-label="progress" {
                                    @if let Some(p) = d.progress() {
                                        progress max="100" value=(p) aria-label=(format!("{} download", d.id)) {} " " span.pct { (p) "%" }
                                    } @else { "–" }
                                }
                                td role="cell" data-label="last seen" { (date_ms(d.last_seen)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn firmware_section(st: &AppState, view: &View) -> Markup {
    let ids = st.store.publish_ids();
    let base = &view.coap_base;
    html! {
        div #firmware-live .live data-section="firmware" {
            p.counts { (ids.len()) " publish-id(s)" }
            @if ids.is_empty() {
                p.empty { "Nothing published yet. Sign in and publish above, or try " code { "suitcase publish --publish-id fw/app/board --publish app.bin" } "." }
            }
            @for id in &ids {
                @let versions = st.store.versions(id);
                section.pid data-publish-id=(id) {
                    div.pid-head {
                        h3 id=(format!("pid-{id}")) { (id) }
                        button.pub type="button" data-notify=(id) data-key=(format!("notify-{id}")) { "Notify devices…" }
                    }
                    @if versions.last().is_some_and(|v| v.manifest.is_some()) {
                        div.url { (copy_field("manifest (CoAP)", &format!("{base}/{id}/manifest"))) }
                    }
                    table.cards role="table" {
                        thead role="rowgroup" { tr role="row" { th role="columnheader" { "version" } th role="columnheader" { "semver" } th role="columnheader" { "sequence" } th role="columnheader" { "published" } th role="columnheader" { "files" } th.pub role="columnheader" { span.sr { "Actions" } } } }
                        tbody role="rowgroup" {
                            @for v in versions.iter().rev() {
                                @let seq = v.manifest.as_ref().and_then(|m| m.sequence_number);
                                tr role="row" data-version=(v.seq) {
                                    td role="cell" data-label="version" { (v.seq) }
                                    td role="cell" data-label="semver" { (v.semver.as_ref().map_or("–".to_string(), ToString::to_string)) }
                                    td role="cell" data-label="sequence" { (seq.map_or("–".to_string(), |n| n.to_string())) }
                                    td role="cell" data-label="published" { (date(v.created_at)) }
                                    td role="cell" data-label="files" { ul.files {
                                        @for f in v.files.iter().chain(v.manifest.as_ref().map(|m| &m.file)) {
                                            @let path = suitcase_store::paths::version_file_path(id, v.seq, &f.name);
                                            li data-file=(f.name) data-size=(size(f.size)) {
                                                a href=(format!("/files/{path}")) data-key=(format!("link-{path}")) { (f.name) }
                                                " " span.dim { (size(f.size)) }
                                                " " code.dim title=(format!("sha256 {}", f.sha256.to_hex())) { (&f.sha256.to_hex()[..12]) "…" }
                                                details.urls data-key=(format!("urls-{path}")) {
                                                    summary data-key=(format!("urls-open-{path}")) { "URLs" }
                                                    (copy_field("CoAP", &format!("{base}/{path}")))
                                                    (copy_field("HTTP", &format!("{}/files/{path}", view.http_base)))
                                                }
                                            }
                                        }
                                    } }
                                    td.pub role="cell" data-label="" {
                                        button.danger type="button" data-remove=(id) data-version=(v.seq)
                                            data-key=(format!("remove-{id}-{}", v.seq))
                                            data-what=(format!("version {}{} of {id}", v.seq, v.semver.as_ref().map_or(String::new(), |s| format!(" ({s})"))))
                                            { "Remove…" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn publish_form(view: &View) -> Markup {
    html! {
        details #publish .pub {
            summary { "Publish a version" }
            form #publish-form data-max-upload=(view.max_upload) {
                div.grid {
                    label { "Publish-id" input name="publish_id" required autocomplete="off" list="publish-ids" placeholder="fw/app/board"; }
                    label { "Semver " small.dim { "(optional)" } input name="version" autocomplete="off" placeholder="1.2.0"; }
                    label { "Class " small.dim { "(optional, default the publish-id)" } input name="class" autocomplete="off"; }
                    label { "Manifest profile"
                        select name="profile" {
                            option value="" { "SUIT draft-37 (default)" }
                            option value="riot09" { "RIOT (draft-09)" }
                        }
                    }
                }
                div #drop .drop {
                    label { "Firmware files " input #files type="file" name="files" multiple; }
                    p.dim { "or drop them here" }
                    ul #file-list .files {}
                }
                label { "Signed manifest " small.dim { "(optional: without one the server builds and signs it)" }
                    input type="file" name="manifest"; }
                div.row {
                    button #publish-submit type="submit" { "Publish" }
                    progress #upload-progress max="100" value="0" hidden aria-label="upload" {}
                }
                p #publish-status .status role="status" aria-live="polite" {}
            }
        }
    }
}

fn rollout_form() -> Markup {
    html! {
        details #new-rollout .pub {
            summary { "New rollout" }
            form #rollout-form {
                div.grid {
                    label { "Publish-id" input name="publish_id" required autocomplete="off" list="publish-ids"; }
                    label { "Version " small.dim { "(default latest)" } input name="version" autocomplete="off" placeholder="latest"; }
                    label { "Devices"
                        select name="target" {
                            option value="all" { "all devices of the publish-id" }
                            option value="group" { "a group" }
                            option value="class" { "a class" }
                            option value="devices" { "these device ids" }
                        }
                    }
                    label { "Group, class or ids " small.dim { "(comma-separated)" } input name="target_value" autocomplete="off"; }
                    label { "Waves " small.dim { "(cumulative)" } input name="waves" autocomplete="off" placeholder="10%,50%,100%"; }
                    label { "At most at once " small.dim { "(0: no limit)" } input name="max_concurrent" type="number" min="0" placeholder="0"; }
                    label { "Success to go on (%)" input name="success" type="number" min="0" max="100" step="any" placeholder="95"; }
                    label { "Halt on errors (%)" input name="halt_on_errors" type="number" min="0" max="100" step="any" placeholder="5"; }
                    label { "Trigger"
                        select name="trigger" {
                            option value="auto" { "auto" } option value="coap" { "CoAP" } option value="observe" { "Observe" }
                            option value="mqtt" { "MQTT" } option value="http" { "HTTP (devices pull)" }
                        }
                    }
                    label { "Name " small.dim { "(optional)" } input name="name" autocomplete="off"; }
                }
                label.check { input type="checkbox" name="only_older"; " only devices known to run an older version (or unknown)" }
                div.row { button type="submit" { "Create rollout" } }
                p #rollout-status .status role="status" aria-live="polite" {}
            }
        }
    }
}

fn dialogs() -> Markup {
    html! {
        dialog #confirm aria-labelledby="confirm-title" aria-describedby="confirm-text confirm-list" {
            form method="dialog" {
                h2 #confirm-title { "Are you sure?" }
                p #confirm-text {}
                ul #confirm-list .files {}
                div.row {
                    button value="cancel" autofocus { "Cancel" }
                    button #confirm-ok .danger value="ok" { "Confirm" }
                }
            }
        }
        dialog #notify aria-labelledby="notify-title" {
            form #notify-form {
                h2 #notify-title { "Notify devices" }
                p.dim { "Sends each device a CoAP trigger with the manifest URL (RIOT's " code { "/suit/trigger" } ")." }
                input type="hidden" name="publish_id";
                label { "Version" select name="version" {} }
                label { "Addresses or device ids " small.dim { "(one per line or comma-separated, e.g. [2001:db8::1]:5683)" }
                    textarea name="urls" rows="3" autocomplete="off" {} }
                fieldset #notify-devices hidden {
                    legend { "Devices of the fleet" }
                    div #notify-picker .picker {}
                    p #notify-more .dim {}
                }
                label.check { input type="checkbox" name="watch" value="30"; " wait up to 30 s to see what each device downloads" }
                div.row {
                    button #notify-send type="submit" { "Send" }
                    button #notify-close type="button" { "Close" }
                }
                p #notify-status .status role="status" aria-live="polite" {}
                table #notify-results .cards hidden role="table" {
                    thead role="rowgroup" { tr role="row" { th role="columnheader" { "device" } th role="columnheader" { "address" } th role="columnheader" { "result" } th role="columnheader" { "code" } th role="columnheader" { "time" } th role="columnheader" { "detail" } } }
                    tbody role="rowgroup" {}
                }
            }
        }
    }
}

fn page(st: &AppState, view: &View) -> Markup {
    let ids = st.store.publish_ids();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width,initial-scale=1";
                title { "suitcase: firmware" }
                link rel="stylesheet" href="/ui/app.css";
                script src="/ui/app.js" defer {}
            }
            body {
                header {
                    h1 { "suitcase" }
                    nav aria-label="sections" {
                        a href="#firmware" { "Firmware" }
                        @if view.fleet.is_some() { a href="#fleet" { "Devices" } }
                        @if view.rollouts.is_some() { a href="#rollouts" { "Rollouts" } }
                    }
                    div #session .js {
                        form #signin method="post" {
                            label { span.sr { "Publisher token" }
                                input #token type="password" name="token" autocomplete="off" placeholder="publisher token" required; }
                            button type="submit" { "Sign in" }
                        }
                        div #signed-in hidden {
                            span { "Signed in as " strong #who {} }
                            button #signout type="button" { "Sign out" }
                        }
                        p #session-status .status role="status" aria-live="polite" {}
                    }
                }
                main {
                    datalist #publish-ids { @for id in &ids { option value=(id) {} } }
                    (publish_form(view))
                    section #firmware aria-labelledby="firmware-h" {
                        h2 #firmware-h { "Firmware" }
                        p #firmware-status .status.js role="status" aria-live="polite" {}
                        (firmware_section(st, view))
                    }
                    @if let Some(f) = &view.fleet {
                        section #fleet aria-labelledby="fleet-h" {
                            h2 #fleet-h { "Devices" }
                            (fleet_section(f))
                        }
                    }
                    @if let Some(r) = &view.rollouts {
                        section #rollouts aria-labelledby="rollouts-h" {
                            h2 #rollouts-h { "Rollouts" }
                            (rollout_form())
                            p #rollouts-status .status.js role="status" aria-live="polite" {}
                            (rollout_list(r, view.open))
                        }
                    }
                }
                (dialogs())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(date(0), "1970-01-01 00:00 UTC");
        assert_eq!(date(1_700_000_000), "2023-11-14 22:13 UTC");
        assert_eq!(date(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(date(u64::MAX), format!("@{}", u64::MAX));
    }

    #[test]
    fn interpolations_are_escaped() {
        let evil = "<script>alert('x')</script>&\"";
        let page = html! { h2 id=(evil) { (evil) } }.into_string();
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;"), "{page}");
    }

    #[test]
    fn etags_tell_bodies_apart() {
        assert_eq!(etag(b"a"), etag(b"a"));
        assert_ne!(etag(b"a"), etag(b"b"));
        assert_eq!(etag(b"").len(), 18);
    }

    #[test]
    fn the_script_builds_no_markup_from_strings() {
        // Everything the script shows goes through textContent or element properties.
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
        ] {
            assert!(!APP_JS.contains(banned), "app.js uses {banned}");
        }
    }
}
