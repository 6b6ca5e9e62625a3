//! The CLI's HTTP calls to a suitcase server.

use anyhow::{bail, Context as _};

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
