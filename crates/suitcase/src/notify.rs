//! Notify: the CoAP notifier the server uses for `POST /notify`, and `suitcase notify`, the
//! command that asks a server to notify devices.

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use std::sync::Arc;

use suitcase_coap::trigger::Outcome;
use suitcase_coap::TransferDone;
use suitcase_http::{DeviceNotice, Notifier, NotifyOptions, TriggerNul};

/// Sends triggers over CoAP: one shared socket per address family, a global bound on the
/// triggers in flight (further ones wait their turn). With a watch, it then follows what each
/// device downloads from this server's CoAP side (completed transfers from its address).
pub struct CoapNotifier {
    /// The trigger client.
    pub client: Arc<suitcase_coap::trigger_client::TriggerClient>,
    /// Completed CoAP downloads, from the CoAP thread.
    pub transfers: tokio::sync::broadcast::Sender<TransferDone>,
}

impl Notifier for CoapNotifier {
    fn notify(
        &self,
        devices: Vec<String>,
        manifest_url: String,
        options: NotifyOptions,
    ) -> Pin<Box<dyn Future<Output = Vec<DeviceNotice>> + Send>> {
        let notifier = self.client.clone();
        // Subscribed before the first trigger goes out, so no download is missed.
        let mut transfers = self.transfers.subscribe();
        let nul = options.trigger_nul.map(|n| match n {
            TriggerNul::Never => suitcase_coap::trigger::TriggerNul::Never,
            TriggerNul::SuitTrigger => suitcase_coap::trigger::TriggerNul::SuitTrigger,
            TriggerNul::Always => suitcase_coap::trigger::TriggerNul::Always,
        });
        Box::pin(async move {
            let mut notices: Vec<DeviceNotice> = notifier
                .notify_all_with(&devices, &manifest_url, nul)
                .await
                .into_iter()
                .map(|r| {
                    let (result, code, message) = match &r.outcome {
                        Ok(o @ Outcome::Response { payload, .. }) => (
                            if o.is_success() { "ok" } else { "error" },
                            o.code_text(),
                            (!payload.is_empty()).then(|| String::from_utf8_lossy(payload).into_owned()),
                        ),
                        Ok(Outcome::Reset) => ("reset", None, Some("the device answered RST".to_string())),
                        Ok(Outcome::Timeout) => {
                            ("timeout", None, Some("no answer after all retransmissions".to_string()))
                        }
                        Err(e) => ("unreachable", None, Some(e.clone())),
                    };
                    DeviceNotice {
                        device: r.device,
                        address: r.address.map(|a| a.to_string()),
                        result: result.to_string(),
                        code,
                        transmissions: r.transmissions,
                        elapsed_ms: r.elapsed.as_millis() as u64,
                        message,
                        download: None,
                        fetched: Vec::new(),
                    }
                })
                .collect();
            if let Some(watch) = options.watch.filter(|w| !w.is_zero()) {
                follow_downloads(&mut notices, &manifest_url, &mut transfers, watch).await;
            }
            notices
        })
    }
}

/// The Uri-Path of a `coap://host[:port]/path` URL.
fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split_once('/').map_or("", |(_, p)| p)
}

/// Watch completed downloads from the devices that accepted the trigger, until each has
/// fetched the manifest and an image, or `watch` passes: then say what each one did.
async fn follow_downloads(
    notices: &mut [DeviceNotice],
    manifest_url: &str,
    transfers: &mut tokio::sync::broadcast::Receiver<TransferDone>,
    watch: std::time::Duration,
) {
    let manifest = url_path(manifest_url).to_string();
    // Canonical on both sides: a dual-stack socket sees IPv4 devices as ::ffff:a.b.c.d.
    let ip_of = |n: &DeviceNotice| {
        n.address
            .as_deref()
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.ip().to_canonical())
    };
    let watched: Vec<usize> = (0..notices.len())
        .filter(|i| notices[*i].result == "ok" && ip_of(&notices[*i]).is_some())
        .collect();
    let done = |n: &DeviceNotice| n.fetched.contains(&manifest) && n.fetched.iter().any(|p| *p != manifest);
    let deadline = tokio::time::Instant::now() + watch;
    while !watched.iter().all(|i| done(&notices[*i])) {
        let event = match tokio::time::timeout_at(deadline, transfers.recv()).await {
            Err(_) => break,
            Ok(Ok(e)) => e,
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(n))) => {
                tracing::warn!(missed = n, "notify watch missed completed transfers (a busy server)");
                continue;
            }
            Ok(Err(_)) => break,
        };
        for i in &watched {
            if ip_of(&notices[*i]) == Some(event.peer.ip().to_canonical()) && !notices[*i].fetched.contains(&event.path)
            {
                notices[*i].fetched.push(event.path.clone());
            }
        }
    }
    for i in watched {
        let n = &mut notices[i];
        let got_manifest = n.fetched.contains(&manifest);
        let got_other = n.fetched.iter().any(|p| *p != manifest);
        n.download = Some(
            match (got_manifest, got_other) {
                (true, true) => "downloaded",
                (true, false) => "refused",
                (false, true) => "downloaded-other",
                (false, false) => "nothing",
            }
            .to_string(),
        );
        if !got_other {
            let what = if got_manifest {
                format!(
                    "fetched the manifest but no image within {} s: the device refused it (e.g. a sequence number not above its running image's, or a signature it does not trust)",
                    watch.as_secs()
                )
            } else {
                format!("fetched nothing from this server within {} s", watch.as_secs())
            };
            n.message = Some(what);
        }
    }
}

#[derive(Args)]
pub struct NotifyArgs {
    /// Server base URL.
    #[arg(long, env = "SUITCASE_SERVER", default_value = "http://localhost:8080")]
    server: String,
    /// The publish-id.
    #[arg(long)]
    publish_id: String,
    /// Which version: latest, a manifest sequence number, a version number, or a semver.
    #[arg(long, default_value = "latest")]
    version: String,
    /// Devices: [2001:db8::1], [fe80::1%tap0]:5683, 10.0.0.7, coap://host/custom/path …
    #[arg(required = true, num_args = 1..)]
    devices: Vec<String>,
    /// Print the server's JSON answer.
    #[arg(long)]
    json: bool,
    /// Publisher token, sent as a bearer token (default: the local token file, see `publish`).
    #[arg(long, env = "SUITCASE_TOKEN")]
    token: Option<String>,
    /// Whether the URL sent is followed by one NUL byte: never, suit-trigger or always.
    /// Default: the server's --trigger-nul (suit-trigger: stock RIOT needs the NUL).
    #[arg(long, value_parser = ["never", "suit-trigger", "always"])]
    trigger_nul: Option<String>,
    /// After the trigger, watch up to SECS seconds what each device downloads: `downloaded`
    /// (the manifest and an image), `refused` (the manifest only: the device turned it down)
    /// or `nothing`. 0 (the default) does not wait.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    watch: u64,
}

pub fn run(args: NotifyArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let token = crate::client::token(args.token.as_deref(), &args.server);
    runtime.block_on(request(
        &args.server,
        token.as_deref(),
        &Notice {
            publish_id: &args.publish_id,
            version: &args.version,
            devices: &args.devices,
            trigger_nul: args.trigger_nul.as_deref(),
            watch: args.watch,
        },
        args.json,
    ))
}

/// What to ask the server to notify.
pub struct Notice<'a> {
    /// The publish-id.
    pub publish_id: &'a str,
    /// Which version.
    pub version: &'a str,
    /// The devices.
    pub devices: &'a [String],
    /// `never`, `suit-trigger`, `always`; `None`: the server's setting.
    pub trigger_nul: Option<&'a str>,
    /// Seconds to follow the devices' downloads (0: do not).
    pub watch: u64,
}

/// Ask the server to notify `devices`; prints one line per device. Exit status 1 unless
/// every device answered 2.xx.
pub async fn request(server: &str, token: Option<&str>, notice: &Notice<'_>, json: bool) -> anyhow::Result<ExitCode> {
    let Notice {
        publish_id,
        version,
        devices,
        trigger_nul,
        watch,
    } = *notice;
    let url = format!("{}/notify", server.trim_end_matches('/'));
    let urls = devices.join(",");
    let mut fields = vec![
        ("publish_id", publish_id),
        ("urls", urls.as_str()),
        ("version", version),
    ];
    if let Some(n) = trigger_nul {
        fields.push(("trigger_nul", n));
    }
    let watch = watch.to_string();
    if watch != "0" {
        fields.push(("watch", &watch));
    }
    let req = reqwest::Client::new().post(&url).form(&fields);
    let body = crate::client::send(req, &url, token).await?;
    if json {
        println!("{body}");
    }
    let v: serde_json::Value = serde_json::from_str(&body).context("server answer is not JSON")?;
    if !json {
        println!(
            "notified {} with {} (sequence number {})",
            v["publish_id"].as_str().unwrap_or("?"),
            v["manifest_url"].as_str().unwrap_or("?"),
            v["sequence_number"]
        );
    }
    let mut all_ok = true;
    for r in v["results"].as_array().into_iter().flatten() {
        let result = r["result"].as_str().unwrap_or("?");
        all_ok &= result == "ok" && r["download"].as_str().is_none_or(|d| d == "downloaded");
        if !json {
            println!(
                "{:<28} {:<11} {:<5} {} transmission(s) {} ms{}{}",
                r["device"].as_str().unwrap_or("?"),
                result,
                r["code"].as_str().unwrap_or("-"),
                r["transmissions"],
                r["elapsed_ms"],
                r["download"]
                    .as_str()
                    .map(|d| format!("  download: {d}"))
                    .unwrap_or_default(),
                r["message"].as_str().map(|m| format!("  {m}")).unwrap_or_default()
            );
        }
    }
    if !json && all_ok {
        // A trigger's 2.01 says the device will fetch the manifest; it installs it only if the
        // sequence number is above its running image's (RIOT logs `seq_nr <= running image`).
        println!(
            "ok: the devices accepted the trigger; each installs only a sequence number above its running image's"
        );
    }
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
