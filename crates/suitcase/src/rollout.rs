//! `suitcase rollout …`: staged rollouts of a server, through its JSON API.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use suitcase_fleet::{RolloutState, RolloutView};

use crate::device::{Api, Server};

#[derive(Subcommand)]
pub enum RolloutCommand {
    /// Create a rollout of a version to a set of devices, in waves (it starts at once
    /// unless --start-at says later).
    Create(Box<CreateArgs>),
    /// List rollouts, newest first.
    List {
        #[command(flatten)]
        server: Server,
        /// Print the server's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a rollout; with --watch, a progress bar per wave until it ends.
    Status(StatusArgs),
    /// Stop triggering devices until resumed (devices under way go on).
    Pause(IdArgs),
    /// Go on with a paused rollout.
    Resume(IdArgs),
    /// Stop a rollout for good.
    Abort(IdArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    #[command(flatten)]
    server: Server,
    /// The publish-id.
    #[arg(long)]
    publish_id: String,
    /// The version: latest, a version number, a sequence number or a semver.
    #[arg(long, default_value = "latest")]
    version: String,
    /// Only devices of this group.
    #[arg(long)]
    group: Option<String>,
    /// Only devices of this class.
    #[arg(long)]
    class: Option<String>,
    /// Only these devices (ids, comma-separated). Without --devices: the devices that
    /// follow the publish-id.
    #[arg(long, value_delimiter = ',')]
    devices: Vec<String>,
    /// Only devices whose running version is older than the target (or unknown).
    #[arg(long)]
    only_older: bool,
    /// Cumulative wave ends: percentages or device counts.
    #[arg(long, default_value = "100%")]
    waves: String,
    /// Updates in progress at most across the rollout (0: no limit).
    #[arg(long, default_value_t = 0)]
    max_concurrent: u64,
    /// Share of the started waves' devices that must have installed before the next wave.
    #[arg(long, default_value = "95%")]
    success: String,
    /// Share of the started waves' devices failed that halts the rollout.
    #[arg(long, default_value = "5%")]
    halt_on_errors: String,
    /// A device that has neither installed nor failed this long after its trigger fails.
    #[arg(long, default_value_t = 600)]
    device_timeout_secs: u64,
    /// How devices are told: auto (CoAP for devices with a CoAP address, else they pull),
    /// coap, observe, mqtt or http.
    #[arg(long, default_value = "auto")]
    trigger: String,
    /// MQTT topic template ({device}, {group}).
    #[arg(long)]
    topic: Option<String>,
    /// A name for people.
    #[arg(long)]
    name: Option<String>,
    /// Start at this time (RFC 3339, e.g. 2026-11-24T02:00:00Z) instead of now.
    #[arg(long)]
    start_at: Option<String>,
    /// Print the server's JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    server: Server,
    /// The rollout number.
    id: u64,
    /// Draw a progress bar per wave until the rollout ends (exit status 0 when it
    /// finished, 1 when it halted or was aborted).
    #[arg(long)]
    watch: bool,
    /// Seconds between two looks (with --watch).
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Print the server's JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct IdArgs {
    #[command(flatten)]
    server: Server,
    /// The rollout number.
    id: u64,
}

pub fn run(cmd: RolloutCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(rollout(cmd))
}

fn parse(raw: &str) -> anyhow::Result<RolloutView> {
    serde_json::from_str(raw).context("the server's rollout")
}

async fn rollout(cmd: RolloutCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RolloutCommand::Create(a) => {
            let api = Api::new(&a.server);
            let waves: Vec<&str> = a.waves.split(',').map(str::trim).filter(|w| !w.is_empty()).collect();
            let body = serde_json::json!({
                "publish_id": a.publish_id, "version": a.version, "group": a.group, "class": a.class,
                "devices": (!a.devices.is_empty()).then_some(&a.devices), "only_older": a.only_older,
                "waves": waves, "max_concurrent": a.max_concurrent, "success": a.success,
                "halt_on_errors": a.halt_on_errors, "device_timeout_secs": a.device_timeout_secs,
                "trigger": a.trigger, "topic": a.topic, "name": a.name, "start_at": a.start_at,
            });
            let raw = api.call(reqwest::Method::POST, "/api/v1/rollouts", Some(body)).await?;
            if a.json {
                println!("{raw}");
            } else {
                let r = parse(&raw)?;
                println!(
                    "rollout {} of {} version {} to {} device(s) in {} wave(s): {}",
                    r.id,
                    r.publish_id,
                    r.version,
                    r.totals.devices,
                    r.waves.len(),
                    r.state
                );
            }
        }
        RolloutCommand::List { server, json } => {
            let raw = Api::new(&server)
                .call(reqwest::Method::GET, "/api/v1/rollouts", None)
                .await?;
            if json {
                println!("{raw}");
            } else {
                let list: Vec<RolloutView> = serde_json::from_str(&raw).context("the server's rollouts")?;
                println!(
                    "{:>4}  {:<24} {:>7}  {:<10} {:>6}  {:>9} {:>6} {:>6}",
                    "id", "publish-id", "version", "state", "wave", "installed", "failed", "total"
                );
                for r in list {
                    println!(
                        "{:>4}  {:<24} {:>7}  {:<10} {:>6}  {:>9} {:>6} {:>6}",
                        r.id,
                        r.publish_id,
                        r.version,
                        r.state.as_str(),
                        format!("{}/{}", r.wave + 1, r.waves.len()),
                        r.totals.installed,
                        r.totals.failed,
                        r.totals.devices
                    );
                }
            }
        }
        RolloutCommand::Status(a) => return status(a).await,
        RolloutCommand::Pause(a) => control(a, "pause").await?,
        RolloutCommand::Resume(a) => control(a, "resume").await?,
        RolloutCommand::Abort(a) => control(a, "abort").await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn control(a: IdArgs, action: &str) -> anyhow::Result<()> {
    let raw = Api::new(&a.server)
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/rollouts/{}/{action}", a.id),
            None,
        )
        .await?;
    let r = parse(&raw)?;
    println!("rollout {}: {}", r.id, r.state);
    Ok(())
}

fn print_status(r: &RolloutView) {
    let version = suitcase_fleet::version_text(r.seq, r.semver.as_deref()).unwrap_or_else(|| "-".into());
    println!(
        "rollout {}{}: {} version {} ({version}), trigger {}",
        r.id,
        r.name.as_deref().map(|n| format!(" \"{n}\"")).unwrap_or_default(),
        r.publish_id,
        r.version,
        r.trigger.as_str()
    );
    println!(
        "state {}{}, wave {}/{}",
        r.state,
        r.reason.as_deref().map(|x| format!(" ({x})")).unwrap_or_default(),
        r.wave + 1,
        r.waves.len()
    );
    for w in &r.waves {
        println!(
            "  wave {}: {:>6} devices  {:>6} installed  {:>6} failed  {:>6} under way ({} downloading)  {:>6} pending",
            w.index + 1,
            w.counts.devices,
            w.counts.installed,
            w.counts.failed,
            w.counts.triggered,
            w.counts.downloading,
            w.counts.pending
        );
    }
}

fn ended(s: RolloutState) -> bool {
    matches!(s, RolloutState::Finished | RolloutState::Halted | RolloutState::Aborted)
}

async fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&a.server);
    let path = format!("/api/v1/rollouts/{}", a.id);
    if !a.watch {
        let raw = api.call(reqwest::Method::GET, &path, None).await?;
        if a.json {
            println!("{raw}");
        } else {
            print_status(&parse(&raw)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !(0.05..=3600.0).contains(&a.interval) {
        bail!("--interval: 0.05 to 3600 seconds");
    }
    let bars = indicatif::MultiProgress::new();
    if !std::io::stderr().is_terminal() {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = indicatif::ProgressStyle::with_template("wave {prefix:>2} [{bar:30}] {pos:>6}/{len:<6} {msg}")
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .progress_chars("=> ");
    let mut wave_bars: Vec<indicatif::ProgressBar> = Vec::new();
    let header = bars.add(indicatif::ProgressBar::new_spinner());
    loop {
        let raw = api.call(reqwest::Method::GET, &path, None).await?;
        let r = parse(&raw)?;
        header.set_message(format!(
            "rollout {} of {} version {}: {}{}",
            r.id,
            r.publish_id,
            r.version,
            r.state,
            r.reason.as_deref().map(|x| format!(" ({x})")).unwrap_or_default()
        ));
        for w in &r.waves {
            if wave_bars.len() <= w.index {
                let b = bars.add(indicatif::ProgressBar::new(w.counts.devices));
                b.set_style(style.clone());
                b.set_prefix((w.index + 1).to_string());
                wave_bars.push(b);
            }
            let b = &wave_bars[w.index];
            b.set_position(w.counts.installed + w.counts.failed);
            b.set_message(format!(
                "done {} / failed {} / downloading {}{}",
                w.counts.installed,
                w.counts.failed,
                w.counts.downloading,
                if w.started_at.is_none() { " (not started)" } else { "" }
            ));
        }
        if ended(r.state) {
            for b in &wave_bars {
                b.abandon();
            }
            header.abandon();
            if a.json {
                println!("{raw}");
            } else {
                print_status(&r);
            }
            return Ok(if r.state == RolloutState::Finished {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        tokio::time::sleep(Duration::from_secs_f64(a.interval)).await;
    }
}
