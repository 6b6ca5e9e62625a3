//! `suitcase publish`: the otaclient-compatible uploader.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

#[derive(Args)]
pub struct PublishArgs {
    /// Server base URL.
    #[arg(long, env = "SUITCASE_SERVER", default_value = "http://localhost:8080")]
    server: String,
    /// The publish-id (may contain '/', e.g. fw/app/board).
    #[arg(long)]
    publish_id: String,
    /// Firmware files; each is stored under its file name.
    #[arg(long = "publish", alias = "files", num_args = 1.., required = true)]
    files: Vec<PathBuf>,
    /// A signed SUIT envelope to publish instead of letting the server build one.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Semantic version of this release.
    #[arg(long)]
    version: Option<String>,
    /// Class of device (class-id = UUID5(vendor-id, class)); default: the publish-id (riot09:
    /// its last segment, the board of RIOT's fw/<app>/<board>).
    #[arg(long)]
    class: Option<String>,
    /// CoAP block size (16..1024) for this publish-id's devices that send no Block2 on their
    /// first request, e.g. 256 for Zephyr coap_client built with 256-byte blocks; default:
    /// the server's --block-size.
    #[arg(long)]
    block_size: Option<u16>,
    /// The manifest the server builds: draft37 (default) or riot09 (what RIOT devices parse;
    /// one file, signed with the server's Ed25519 key, served as riot.suit.<seq>.bin).
    #[arg(long, value_enum, conflicts_with = "manifest")]
    profile: Option<crate::manifest::ProfileArg>,
    /// Vendor domain of the manifest the server builds (vendor-id = UUID5(DNS, domain));
    /// default: the server's (--vendor-domain, or --riot-vendor-domain for riot09).
    #[arg(long, conflicts_with = "manifest")]
    vendor_domain: Option<String>,
    /// The storage the image goes to, as RIOT names it: ram,0 (or .ram.0) for a RAM region,
    /// /nvm0/SLOT0.txt for a VFS file; default h'00', riotboot flash.
    #[arg(long, conflicts_with = "manifest")]
    component: Option<String>,
    /// Print the server's JSON answer instead of a summary.
    #[arg(long)]
    json: bool,
    /// After publishing, notify these devices ([2001:db8::1], host:port …).
    #[arg(long, num_args = 1..)]
    notify: Vec<String>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Publisher token (`suitcase token create NAME`), sent as a bearer token. Default, for a
    /// server on this host: the token the server wrote to
    /// $SUITCASE_DATA/local-publisher.token or ./suitcase-data/local-publisher.token.
    #[arg(long, env = "SUITCASE_TOKEN")]
    token: Option<String>,
}

/// A multipart part streaming the file in 64 KiB chunks, advancing `bar` as they go out.
fn file_part(path: &PathBuf, bar: &indicatif::ProgressBar) -> anyhow::Result<(String, reqwest::multipart::Part)> {
    let data = bytes::Bytes::from(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: no usable file name", path.display()))?
        .to_string();
    let len = data.len() as u64;
    bar.inc_length(len);
    let bar = bar.clone();
    let chunks: Vec<bytes::Bytes> = (0..data.len())
        .step_by(64 * 1024)
        .map(|i| data.slice(i..(i + 64 * 1024).min(data.len())))
        .collect();
    let stream = futures_util::stream::iter(chunks.into_iter().map(move |c| {
        bar.inc(c.len() as u64);
        Ok::<_, std::io::Error>(c)
    }));
    let part =
        reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), len).file_name(name.clone());
    Ok((name, part))
}

fn progress_bar(quiet: bool) -> indicatif::ProgressBar {
    if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg}") {
        bar.set_style(style);
    }
    bar
}

pub fn run(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(publish(args))
}

async fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let token = crate::client::token(args.token.as_deref(), &args.server);
    let mut form = reqwest::multipart::Form::new().text("publish_id", args.publish_id.clone());
    if let Some(v) = &args.version {
        form = form.text("version", v.clone());
    }
    if let Some(c) = &args.class {
        form = form.text("class", c.clone());
    }
    if let Some(b) = args.block_size {
        form = form.text("block_size", b.to_string());
    }
    if let Some(p) = args.profile {
        form = form.text("profile", p.name());
    }
    for (field, value) in [("vendor_domain", &args.vendor_domain), ("component", &args.component)] {
        if let Some(v) = value {
            form = form.text(field, v.clone());
        }
    }
    let bar = progress_bar(args.quiet);
    for path in &args.files {
        let (name, part) = file_part(path, &bar)?;
        form = form.part(name, part);
    }
    if let Some(m) = &args.manifest {
        let (_, part) = file_part(m, &bar)?;
        form = form.part("manifest", part);
    }
    let url = format!("{}/publish", args.server.trim_end_matches('/'));
    let req = reqwest::Client::new().post(&url).multipart(form);
    let body = crate::client::send(req, &url, token.as_deref()).await;
    bar.finish_and_clear();
    let body = body?;
    let v: serde_json::Value = serde_json::from_str(&body).context("server answer is not JSON")?;
    if args.json {
        println!("{body}");
    } else {
        summary(&v);
    }
    if args.notify.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    // The manifest's sequence number names this version without ambiguity.
    let version = v["sequence_number"]
        .as_u64()
        .map_or_else(|| "latest".to_string(), |n| n.to_string());
    crate::notify::request(
        &args.server,
        token.as_deref(),
        &crate::notify::Notice {
            publish_id: &args.publish_id,
            version: &version,
            devices: &args.notify,
            trigger_nul: None,
            watch: 0,
        },
        args.json,
    )
    .await
}

fn summary(v: &serde_json::Value) {
    println!(
        "published {} version {} (sequence number {})",
        v["publish_id"].as_str().unwrap_or("?"),
        v["version"],
        v["sequence_number"]
    );
    if let Some(url) = v["manifest"]["url"].as_str() {
        println!("manifest {url}");
    }
    for f in v["files"].as_array().into_iter().flatten() {
        println!(
            "file {} {} bytes sha256 {}",
            f["url"].as_str().unwrap_or("?"),
            f["size"],
            f["sha256"].as_str().unwrap_or("?")
        );
    }
}
