//! Notify: the CoAP notifier the server uses for `POST /notify`, and `suitcase notify`, the
//! command that asks a server to notify devices.

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use std::sync::Arc;

use suitcase_coap::notify::Outcome;
use suitcase_http::{DeviceNotice, Notifier, NotifyOptions, TriggerNul};

/// Sends triggers over CoAP: one shared socket per address family, a global bound on the
/// triggers in flight (further ones wait their turn).
pub struct CoapNotifier(pub Arc<suitcase_coap::notify::Notifier>);

impl Notifier for CoapNotifier {
    fn notify(
        &self,
        devices: Vec<String>,
        manifest_url: String,
        options: NotifyOptions,
    ) -> Pin<Box<dyn Future<Output = Vec<DeviceNotice>> + Send>> {
        let notifier = self.0.clone();
        let nul = options.trigger_nul.map(|n| match n {
            TriggerNul::Never => suitcase_coap::notify::TriggerNul::Never,
            TriggerNul::SuitTrigger => suitcase_coap::notify::TriggerNul::SuitTrigger,
            TriggerNul::Always => suitcase_coap::notify::TriggerNul::Always,
        });
        Box::pin(async move {
            notifier
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
                    }
                })
                .collect()
        })
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
}

pub fn run(args: NotifyArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let token = crate::client::token(args.token.as_deref(), &args.server);
    runtime.block_on(request(
        &args.server,
        token.as_deref(),
        &args.publish_id,
        &args.version,
        &args.devices,
        args.trigger_nul.as_deref(),
        args.json,
    ))
}

/// Ask the server to notify `devices`; prints one line per device. Exit status 1 unless
/// every device answered 2.xx.
pub async fn request(
    server: &str,
    token: Option<&str>,
    publish_id: &str,
    version: &str,
    devices: &[String],
    trigger_nul: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
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
        all_ok &= result == "ok";
        if !json {
            println!(
                "{:<28} {:<11} {:<5} {} transmission(s) {} ms{}",
                r["device"].as_str().unwrap_or("?"),
                result,
                r["code"].as_str().unwrap_or("-"),
                r["transmissions"],
                r["elapsed_ms"],
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
