//! The CLI's HTTP calls to a suitcase server.

use std::path::PathBuf;

use anyhow::{bail, Context as _};

/// The publisher token to send to `server`: `explicit` (`--token` / `SUITCASE_TOKEN`), else,
/// for a server on this host (localhost or a loopback address) only, the `local` token the
/// server wrote to `$SUITCASE_DATA/local-publisher.token` or
/// `./suitcase-data/local-publisher.token`.
pub fn token(explicit: Option<&str>, server: &str) -> Option<String> {
    if let Some(t) = explicit.map(str::trim).filter(|t| !t.is_empty()) {
        return Some(t.to_string());
    }
    let url = reqwest::Url::parse(server).ok()?;
    let host = url.host_str()?;
    let local = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback());
    if !local {
        return None;
    }
    let data = std::env::var_os("SUITCASE_DATA").map_or_else(|| PathBuf::from("suitcase-data"), PathBuf::from);
    let file = data.join(suitcase_auth::LOCAL_TOKEN_FILE);
    let text = std::fs::read_to_string(&file).ok()?;
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// Send `req` (with a bearer token if given) and return the body of a 2xx answer; any other
/// status becomes an error carrying the server's `{"error": …}` message.
pub async fn send(req: reqwest::RequestBuilder, url: &str, token: Option<&str>) -> anyhow::Result<String> {
    let req = match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    };
    let resp = req.send().await.with_context(|| format!("calling {url}"))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        let msg = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(body);
        bail!("server answered {status}: {msg}");
    }
    Ok(body)
}
