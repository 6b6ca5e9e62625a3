//! `GET /`: the human-readable list of publish-ids and their versions. Markup comes from
//! maud templates, which escape every interpolated value unless told otherwise (nothing here
//! tells them otherwise), so no publish-id, file name or semver can inject markup.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Html;
use maud::{html, Markup, DOCTYPE};

use crate::AppState;

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

const STYLE: &str = "body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:70rem;padding:0 1rem;color:#1b1f24}\
h1{font-size:1.5rem}h2{font-size:1.15rem;margin:2rem 0 .3rem}code{font:13px ui-monospace,monospace}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.35rem .6rem;border-bottom:1px solid #d0d7de;vertical-align:top}\
th{background:#f6f8fa;font-weight:600}ul{margin:0;padding:0;list-style:none}.size{color:#57606a}.digest{color:#57606a}\
.url{margin:.2rem 0 .6rem;color:#57606a}.empty{color:#57606a}";

pub(crate) async fn index(State(st): State<AppState>, headers: HeaderMap) -> Html<String> {
    // The page is public: devices are listed only where downloads are open too (no device
    // token exists); otherwise it shows the counts per state.
    let open = st.tokens.snapshot().any(suitcase_auth::Role::Device) == Some(false);
    let fleet = match &st.fleet {
        Some(f) => {
            let devices = if open {
                f.list(&suitcase_fleet::Filter::default(), FLEET_ROWS).await
            } else {
                Ok(Vec::new())
            };
            let counts = f.counts().await;
            match (devices, counts) {
                (Ok(d), Ok(c)) => Some((d, c)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "the fleet section could not be read");
                    None
                }
            }
        }
        None => None,
    };
    let fleet = fleet.map(|(d, c)| (d, c, !open));
    let rollouts = match &st.fleet {
        Some(f) => f.rollouts(ROLLOUT_ROWS).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the rollout section could not be read");
            Vec::new()
        }),
        None => Vec::new(),
    };
    Html(page(&st, &headers, fleet.as_ref(), &rollouts).into_string())
}

/// Rollouts shown on the page at most (newest first).
const ROLLOUT_ROWS: usize = 20;

fn rollout_section(rollouts: &[suitcase_fleet::RolloutView]) -> Markup {
    html! {
        section id="rollouts" {
            h2 { "Rollouts" }
            table {
                thead { tr { th { "#" } th { "publish-id" } th { "version" } th { "state" } th { "waves: installed / failed of devices" } th { "created" } } }
                tbody {
                    @for r in rollouts {
                        tr data-state=(r.state.as_str()) {
                            td { (r.id) }
                            td { (r.publish_id) }
                            td { (version_text(r.seq, r.semver.as_deref())) }
                            td { (r.state.as_str()) " " small.empty { "wave " (r.wave + 1) "/" (r.waves.len()) }
                                @if let Some(reason) = &r.reason { " " small.empty { "(" (reason) ")" } } }
                            td {
                                @for w in &r.waves {
                                    @let done = w.counts.installed + w.counts.failed;
                                    span style="white-space:nowrap" {
                                        progress max=(w.counts.devices.max(1)) value=(done) {} " "
                                        (w.counts.installed) " / " (w.counts.failed) " of " (w.counts.devices)
                                        @if w.started_at.is_none() { " " small.empty { "(waiting)" } }
                                    } " "
                                }
                            }
                            td { (date_ms(Some(r.created_at))) }
                        }
                    }
                }
            }
        }
    }
}

/// Devices shown on the page at most (the API lists all).
const FLEET_ROWS: usize = 500;

/// Devices, counts per state, and whether the device list is withheld.
type FleetRows = (Vec<suitcase_fleet::Device>, Vec<(String, i64)>, bool);

/// `YYYY-MM-DD HH:MM UTC` of Unix milliseconds.
fn date_ms(ms: Option<i64>) -> String {
    ms.and_then(|m| u64::try_from(m / 1000).ok())
        .map_or("–".to_string(), date)
}

fn version_text(seq: Option<u64>, semver: Option<&str>) -> String {
    suitcase_fleet::version_text(seq, semver).unwrap_or_else(|| "–".to_string())
}

fn fleet_section(fleet: &FleetRows) -> Markup {
    let (devices, counts, restricted) = fleet;
    let total: i64 = counts.iter().map(|(_, n)| n).sum();
    html! {
        section id="fleet" {
            h2 { "Devices " small style="font-weight:400;color:#57606a" {
                (total) " in all"
                @for (state, n) in counts { " · " (state) " " (n) }
            } }
            @if *restricted {
                p.empty { "Device tokens are in use: the list of devices is not public. See it with " code { "suitcase device list" } " or " code { "GET /api/v1/devices" } " (publisher token)." }
            } @else if devices.is_empty() {
                p.empty { "No device known yet. Add one with " code { "suitcase device add ID --coap '[2001:db8::1]'" } ", or let devices fetch a manifest." }
            } @else {
                table {
                    thead { tr { th { "device" } th { "class" } th { "publish-id" } th { "state" } th { "runs" } th { "update to" } th { "progress" } th { "last seen" } } }
                    tbody {
                        @for d in devices {
                            tr data-state=(d.state.as_str()) {
                                td { (d.id) @if !d.registered { " " small.empty { "(seen)" } } }
                                td { (d.class.as_deref().unwrap_or("–")) }
                                td { (d.publish_id.as_deref().unwrap_or("–")) }
                                td { (d.state.as_str()) @if let Some(r) = &d.reason { " " small.empty { "(" (r) ")" } } }
                                td { (version_text(d.running_seq, d.running_semver.as_deref())) }
                                td { (if d.target_version.is_some() { version_text(d.target_seq, d.target_semver.as_deref()) } else { "–".to_string() }) }
                                td { @if let Some(p) = d.progress() { progress max="100" value=(p) {} " " (p) "%" } @else { "–" } }
                                td { (date_ms(d.last_seen)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn page(
    st: &AppState,
    headers: &HeaderMap,
    fleet: Option<&FleetRows>,
    rollouts: &[suitcase_fleet::RolloutView],
) -> Markup {
    let base = st.coap_base(headers);
    let ids = st.store.publish_ids();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width,initial-scale=1";
                title { "suitcase: firmware" }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                h1 { "suitcase " small style="font-weight:400;color:#57606a" { (ids.len()) " publish-id(s)" } }
                @if let Some(f) = fleet { (fleet_section(f)) }
                @if !rollouts.is_empty() { (rollout_section(rollouts)) }
                @if ids.is_empty() {
                    p.empty { "Nothing published yet. Try " code { "suitcase publish --publish-id fw/app/board --publish app.bin" } "." }
                }
                @for id in &ids {
                    @let versions = st.store.versions(id);
                    section {
                        h2 id=(id) { (id) }
                        @if versions.last().is_some_and(|v| v.manifest.is_some()) {
                            p.url { "manifest: " code { (base) "/" (id) "/manifest" } }
                        }
                        table {
                            thead { tr { th { "version" } th { "semver" } th { "sequence" } th { "published" } th { "files" } } }
                            tbody {
                                @for v in versions.iter().rev() {
                                    tr {
                                        td { (v.seq) }
                                        td { (v.semver.as_ref().map_or("–".to_string(), ToString::to_string)) }
                                        td { (v.manifest.as_ref().and_then(|m| m.sequence_number).map_or("–".to_string(), |n| n.to_string())) }
                                        td { (date(v.created_at)) }
                                        td { ul {
                                            @for f in v.files.iter().chain(v.manifest.as_ref().map(|m| &m.file)) {
                                                li {
                                                    a href=(format!("/files/{}", suitcase_store::paths::version_file_path(id, v.seq, &f.name))) { (f.name) }
                                                    " " span.size { (size(f.size)) }
                                                    " " code.digest title=(format!("sha256 {}", f.sha256.to_hex())) { (&f.sha256.to_hex()[..12]) "…" }
                                                }
                                            }
                                        } }
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
}
