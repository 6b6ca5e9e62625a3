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
    Html(page(&st, &headers).into_string())
}

fn page(st: &AppState, headers: &HeaderMap) -> Markup {
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
