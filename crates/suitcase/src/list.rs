//! `suitcase list [ID]`: what a server holds, from its JSON API.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

#[derive(Args)]
pub struct ListArgs {
    /// Server base URL.
    #[arg(long, env = "SUITCASE_SERVER", default_value = "http://localhost:8080")]
    server: String,
    /// A publish-id: list its versions and files (newest first) instead of all publish-ids.
    publish_id: Option<String>,
    /// Print the server's JSON.
    #[arg(long)]
    json: bool,
    /// Publisher token, sent as a bearer token (default: the local token file, see `publish`).
    #[arg(long, env = "SUITCASE_TOKEN")]
    token: Option<String>,
}

pub fn run(args: ListArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(list(args))
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let base = args.server.trim_end_matches('/');
    let url = match &args.publish_id {
        Some(id) => format!("{base}/api/v1/publish-ids/{id}"),
        None => format!("{base}/api/v1/publish-ids"),
    };
    let body = crate::client::send(
        reqwest::Client::new().get(&url),
        &url,
        crate::client::token(args.token.as_deref(), &args.server).as_deref(),
    )
    .await?;
    if args.json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let v: serde_json::Value = serde_json::from_str(&body).context("server answer is not JSON")?;
    let rows = v.as_array().cloned().unwrap_or_default();
    if args.publish_id.is_none() {
        for r in rows {
            println!(
                "{:<40} latest v{} ({} version(s))",
                r["publish_id"].as_str().unwrap_or("?"),
                r["latest"],
                r["versions"]
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    for r in rows {
        println!(
            "v{}  semver {}  sequence {}  published {}",
            r["version"],
            r["semver"].as_str().unwrap_or("-"),
            r["sequence_number"].as_u64().map_or("-".to_string(), |n| n.to_string()),
            r["created_at"]
        );
        let files = r["files"].as_array().cloned().unwrap_or_default();
        for f in files.iter().chain(r.get("manifest").filter(|m| !m.is_null())) {
            println!(
                "    {:<36} {:>10} B  sha256 {}",
                f["name"].as_str().unwrap_or("?"),
                f["size"],
                f["sha256"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
