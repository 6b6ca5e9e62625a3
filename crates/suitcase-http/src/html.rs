//! `GET /`: the human-readable list of publish-ids and their versions.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Html;

use crate::AppState;

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn size(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `YYYY-MM-DD HH:MM UTC`.
pub(crate) fn date(unix: u64) -> String {
    let secs = unix as i64;
    let (y, m, d) = civil(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", t / 3600, t / 60 % 60)
}

pub(crate) async fn index(State(st): State<AppState>, headers: HeaderMap) -> Html<String> {
    let base = st.coap_base(&headers);
    let mut body = String::new();
    let ids = st.store.publish_ids();
    if ids.is_empty() {
        body.push_str("<p class=empty>Nothing published yet. Try <code>suitcase publish --publish-id fw/app/board --publish app.bin</code>.</p>");
    }
    for id in &ids {
        let versions = st.store.versions(id);
        let _ = write!(body, "<section><h2 id=\"{0}\">{0}</h2>", esc(id));
        if versions.last().is_some_and(|v| v.manifest.is_some()) {
            let _ = write!(
                body,
                "<p class=url>manifest: <code>{}</code></p>",
                esc(&format!("{base}/{id}/manifest"))
            );
        }
        body.push_str("<table><thead><tr><th>version</th><th>semver</th><th>sequence</th><th>published</th><th>files</th></tr></thead><tbody>");
        for v in versions.iter().rev() {
            let seqno = v
                .manifest
                .as_ref()
                .and_then(|m| m.sequence_number)
                .map_or("–".to_string(), |n| n.to_string());
            let semver = v.semver.as_ref().map_or("–".to_string(), |s| s.to_string());
            let mut files = String::new();
            for f in v.files.iter().chain(v.manifest.as_ref().map(|m| &m.file)) {
                let _ = write!(
                    files,
                    "<li><a href=\"/files/{id}/v/{}/{name}\">{name}</a> <span class=size>{}</span> <code class=digest title=\"sha256 {d}\">{short}…</code></li>",
                    v.seq,
                    size(f.size),
                    id = esc(id),
                    name = esc(&f.name),
                    d = f.sha256.to_hex(),
                    short = &f.sha256.to_hex()[..12],
                );
            }
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><ul>{files}</ul></td></tr>",
                v.seq,
                esc(&semver),
                seqno,
                date(v.created_at)
            );
        }
        body.push_str("</tbody></table></section>");
    }
    Html(format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content=\"width=device-width,initial-scale=1\">\
<title>suitcase: firmware</title><style>\
body{{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:70rem;padding:0 1rem;color:#1b1f24}}\
h1{{font-size:1.5rem}}h2{{font-size:1.15rem;margin:2rem 0 .3rem}}code{{font:13px ui-monospace,monospace}}\
table{{border-collapse:collapse;width:100%}}th,td{{text-align:left;padding:.35rem .6rem;border-bottom:1px solid #d0d7de;vertical-align:top}}\
th{{background:#f6f8fa;font-weight:600}}ul{{margin:0;padding:0;list-style:none}}.size{{color:#57606a}}.digest{{color:#57606a}}\
.url{{margin:.2rem 0 .6rem;color:#57606a}}.empty{{color:#57606a}}</style></head><body>\
<h1>suitcase <small style=\"font-weight:400;color:#57606a\">{} publish-id(s)</small></h1>{body}</body></html>",
        ids.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_escaping() {
        assert_eq!(date(0), "1970-01-01 00:00 UTC");
        assert_eq!(date(1_700_000_000), "2023-11-14 22:13 UTC");
        assert_eq!(date(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
