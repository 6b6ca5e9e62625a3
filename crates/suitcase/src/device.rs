//! `suitcase device …`: the device inventory of a server, through its JSON API.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

#[derive(Args, Clone)]
pub struct Server {
    /// Server base URL.
    #[arg(long, env = "SUITCASE_SERVER", default_value = "http://localhost:8080")]
    server: String,
    /// Publisher token, sent as a bearer token (default: the local token file, see `publish`).
    #[arg(long, env = "SUITCASE_TOKEN")]
    token: Option<String>,
}

#[derive(Subcommand)]
pub enum DeviceCommand {
    /// Add a device.
    Add(AddArgs),
    /// List devices with their state, version and download progress.
    List(ListArgs),
    /// Show one device.
    Show {
        #[command(flatten)]
        server: Server,
        /// The device id.
        id: String,
        /// Print the server's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a device.
    Rm {
        #[command(flatten)]
        server: Server,
        /// The device id.
        id: String,
    },
    /// Add or update devices from a CSV file with a header row: id, and any of coap,
    /// http_id, class, publish_id, groups (separated by ';'), running_seq, running_version,
    /// trigger.
    Import {
        #[command(flatten)]
        server: Server,
        /// The CSV file.
        file: std::path::PathBuf,
    },
    /// Live progress bars of the devices updating.
    Watch(WatchArgs),
}

#[derive(Args)]
pub struct AddArgs {
    #[command(flatten)]
    server: Server,
    /// The device id: a name or EUI (letters, digits, '.', '_', '-', ':').
    id: String,
    /// CoAP address the server notifies: [addr]:port, optionally with a path.
    #[arg(long)]
    coap: Option<String>,
    /// HTTP identity: the MAC or addr an ESP device sends, or a device token's name.
    #[arg(long)]
    http_id: Option<String>,
    /// Class (board).
    #[arg(long)]
    class: Option<String>,
    /// The publish-id it follows.
    #[arg(long)]
    publish_id: Option<String>,
    /// A group (tag); repeat for several.
    #[arg(long = "group", value_name = "GROUP")]
    groups: Vec<String>,
    /// The manifest sequence number it runs, when known.
    #[arg(long)]
    running_seq: Option<u64>,
    /// The version (semver) it runs, when known.
    #[arg(long)]
    running_version: Option<String>,
    /// How rollouts that leave it to the device tell it: coap, observe, mqtt or http
    /// (default: coap with a CoAP address, else it pulls).
    #[arg(long)]
    trigger: Option<String>,
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    server: Server,
    /// Only members of this group.
    #[arg(long)]
    group: Option<String>,
    /// Only devices in this state (idle, notified, manifest, downloading, downloaded,
    /// installed, failed).
    #[arg(long)]
    state: Option<String>,
    /// Only devices following this publish-id.
    #[arg(long)]
    publish_id: Option<String>,
    /// Print the server's JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct WatchArgs {
    #[command(flatten)]
    server: Server,
    /// Only members of this group.
    #[arg(long)]
    group: Option<String>,
    /// Seconds between two looks.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Stop when no device is notified, downloading or waiting for its result.
    #[arg(long)]
    exit_when_idle: bool,
}

/// A device as the server shows it (the fields the CLI prints).
#[derive(Deserialize, Serialize, Clone, Debug)]
struct Device {
    id: String,
    registered: bool,
    coap: Option<String>,
    http_id: Option<String>,
    class: Option<String>,
    publish_id: Option<String>,
    groups: Vec<String>,
    running_seq: Option<u64>,
    running_semver: Option<String>,
    target_version: Option<u64>,
    target_seq: Option<u64>,
    target_semver: Option<String>,
    state: String,
    reason: Option<String>,
    bytes_done: u64,
    bytes_total: u64,
    peer: Option<String>,
    last_seen: Option<i64>,
    report: Option<String>,
    progress: Option<u8>,
}

pub fn run(cmd: DeviceCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(device(cmd))
}

pub(crate) struct Api {
    base: String,
    token: Option<String>,
    client: reqwest::Client,
}

impl Api {
    pub(crate) fn new(s: &Server) -> Self {
        Api {
            base: s.server.trim_end_matches('/').to_string(),
            token: crate::client::token(s.token.as_deref(), &s.server),
            client: reqwest::Client::new(),
        }
    }
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.base);
        let mut req = self.client.request(method, &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        crate::client::send(req, &url, self.token.as_deref()).await
    }
    async fn list(&self, query: &[(&str, Option<&str>)]) -> anyhow::Result<(String, Vec<Device>)> {
        let q: Vec<String> = query
            .iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k}={}", encode(v))))
            .collect();
        let path = if q.is_empty() {
            "/api/v1/devices".to_string()
        } else {
            format!("/api/v1/devices?{}", q.join("&"))
        };
        let body = self.call(reqwest::Method::GET, &path, None).await?;
        let devices = serde_json::from_str(&body).context("the server's device list")?;
        Ok((body, devices))
    }
}

/// Percent-encode a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A device id as a path segment.
fn id_path(id: &str) -> anyhow::Result<String> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b)) {
        bail!("device id {id:?}: letters, digits, '.', '_', '-' or ':'");
    }
    Ok(format!("/api/v1/devices/{id}"))
}

async fn device(cmd: DeviceCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DeviceCommand::Add(a) => {
            let api = Api::new(&a.server);
            let body = serde_json::json!({
                "id": a.id, "coap": a.coap, "http_id": a.http_id, "class": a.class,
                "publish_id": a.publish_id, "groups": a.groups, "running_seq": a.running_seq,
                "running_semver": a.running_version, "trigger": a.trigger,
            });
            api.call(reqwest::Method::POST, "/api/v1/devices", Some(body)).await?;
            println!("added {}", a.id);
        }
        DeviceCommand::List(a) => {
            let api = Api::new(&a.server);
            let (raw, devices) = api
                .list(&[
                    ("group", a.group.as_deref()),
                    ("state", a.state.as_deref()),
                    ("publish_id", a.publish_id.as_deref()),
                ])
                .await?;
            if a.json {
                println!("{raw}");
            } else {
                print_table(&devices);
            }
        }
        DeviceCommand::Show { server, id, json } => {
            let api = Api::new(&server);
            let raw = api.call(reqwest::Method::GET, &id_path(&id)?, None).await?;
            if json {
                println!("{raw}");
            } else {
                let d: Device = serde_json::from_str(&raw).context("the server's device")?;
                print_device(&d);
            }
        }
        DeviceCommand::Rm { server, id } => {
            Api::new(&server)
                .call(reqwest::Method::DELETE, &id_path(&id)?, None)
                .await?;
            println!("removed {id}");
        }
        DeviceCommand::Import { server, file } => {
            let devices = read_csv(&file)?;
            let n = devices.len();
            Api::new(&server)
                .call(
                    reqwest::Method::POST,
                    "/api/v1/devices?replace=true",
                    Some(serde_json::Value::Array(devices)),
                )
                .await?;
            println!("imported {n} device(s) from {}", file.display());
        }
        DeviceCommand::Watch(a) => watch(a).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The rows of a device CSV as API objects; every error names its line.
fn read_csv(path: &std::path::Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut r = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_path(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let headers = r.headers().context("the CSV header row")?.clone();
    const KNOWN: [&str; 9] = [
        "id",
        "coap",
        "http_id",
        "class",
        "publish_id",
        "groups",
        "running_seq",
        "running_version",
        "trigger",
    ];
    if let Some(h) = headers.iter().find(|h| !KNOWN.contains(h)) {
        bail!("{}: unknown column {h:?} (known: {})", path.display(), KNOWN.join(", "));
    }
    if !headers.iter().any(|h| h == "id") {
        bail!("{}: no id column", path.display());
    }
    let mut out = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let line = i + 2;
        let rec = rec.with_context(|| format!("{} line {line}", path.display()))?;
        let mut obj = serde_json::Map::new();
        for (h, v) in headers.iter().zip(rec.iter()) {
            if v.is_empty() {
                continue;
            }
            let value = match h {
                "groups" => serde_json::json!(v
                    .split(';')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .collect::<Vec<_>>()),
                "running_seq" => serde_json::json!(v
                    .parse::<u64>()
                    .with_context(|| format!("{} line {line}: running_seq {v:?}", path.display()))?),
                _ => serde_json::json!(v),
            };
            let key = if h == "running_version" { "running_semver" } else { h };
            obj.insert(key.to_string(), value);
        }
        out.push(serde_json::Value::Object(obj));
    }
    if out.is_empty() {
        bail!("{}: no devices", path.display());
    }
    Ok(out)
}

fn version(seq: Option<u64>, semver: Option<&str>) -> String {
    suitcase_fleet::version_text(seq, semver).unwrap_or_else(|| "-".into())
}

fn bar(p: Option<u8>) -> String {
    match p {
        Some(p) => {
            let filled = usize::from(p) / 10;
            format!("{:>3}% [{}{}]", p, "#".repeat(filled), " ".repeat(10 - filled))
        }
        None => "-".into(),
    }
}

fn ago(ms: Option<i64>) -> String {
    let Some(ms) = ms else { return "never".into() };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let s = (now - ms).max(0) / 1000;
    match s {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172_800 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

fn state_text(d: &Device) -> String {
    match &d.reason {
        Some(r) => format!("{} ({r})", d.state),
        None => d.state.clone(),
    }
}

fn print_table(devices: &[Device]) {
    if devices.is_empty() {
        println!("no devices");
        return;
    }
    let rows: Vec<[String; 8]> = devices
        .iter()
        .map(|d| {
            [
                if d.registered {
                    d.id.clone()
                } else {
                    format!("{} (seen)", d.id)
                },
                d.class.clone().unwrap_or_else(|| "-".into()),
                d.publish_id.clone().unwrap_or_else(|| "-".into()),
                state_text(d),
                version(d.running_seq, d.running_semver.as_deref()),
                if d.target_version.is_some() {
                    version(d.target_seq, d.target_semver.as_deref())
                } else {
                    "-".into()
                },
                bar(d.progress),
                ago(d.last_seen),
            ]
        })
        .collect();
    let head = [
        "DEVICE",
        "CLASS",
        "PUBLISH-ID",
        "STATE",
        "RUNS",
        "TARGET",
        "PROGRESS",
        "LAST SEEN",
    ];
    let mut w = head.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: [&str; 8]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            s += &format!("{c:<width$}  ", width = w[i]);
        }
        println!("{}", s.trim_end());
    };
    line(head);
    for r in &rows {
        line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5], &r[6], &r[7]].map(String::as_str));
    }
}

fn print_device(d: &Device) {
    let o = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    println!(
        "device:      {}{}",
        d.id,
        if d.registered { "" } else { " (seen, not added)" }
    );
    println!("coap:        {}", o(&d.coap));
    println!("http id:     {}", o(&d.http_id));
    println!("class:       {}", o(&d.class));
    println!("publish-id:  {}", o(&d.publish_id));
    println!(
        "groups:      {}",
        if d.groups.is_empty() {
            "-".into()
        } else {
            d.groups.join(", ")
        }
    );
    println!("runs:        {}", version(d.running_seq, d.running_semver.as_deref()));
    println!("state:       {}", state_text(d));
    if d.target_version.is_some() {
        println!("update to:   {}", version(d.target_seq, d.target_semver.as_deref()));
        println!(
            "progress:    {} ({} of {} bytes)",
            bar(d.progress),
            d.bytes_done,
            d.bytes_total
        );
    }
    println!("address:     {}", o(&d.peer));
    println!("last seen:   {}", ago(d.last_seen));
    if let Some(r) = &d.report {
        println!("last report: {r}");
    }
}

/// States of an update in progress.
fn active(state: &str) -> bool {
    matches!(state, "notified" | "manifest" | "downloading" | "downloaded")
}

/// States that keep `--exit-when-idle` waiting: a trigger sent, bytes moving, or a result
/// due. (`manifest` alone does not: a device that fetched the manifest and refused the
/// update, e.g. RIOT's sequence number check, stays there.)
fn busy(state: &str) -> bool {
    matches!(state, "notified" | "downloading" | "downloaded")
}

async fn watch(a: WatchArgs) -> anyhow::Result<()> {
    use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
    let api = Api::new(&a.server);
    let interval = Duration::from_secs_f64(a.interval.clamp(0.1, 3600.0));
    let tty = std::io::stderr().is_terminal();
    let multi = MultiProgress::with_draw_target(if tty {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style = ProgressStyle::with_template("{prefix:24} {bar:30} {pos:>3}% {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let mut bars: std::collections::BTreeMap<String, (ProgressBar, String)> = Default::default();
    loop {
        let (_, devices) = api.list(&[("group", a.group.as_deref())]).await?;
        let mut seen = std::collections::HashSet::new();
        let shown: Vec<&Device> = devices
            .iter()
            .filter(|d| active(&d.state) || bars.contains_key(&d.id))
            .collect();
        for d in shown {
            seen.insert(d.id.clone());
            let (pb, last) = bars.entry(d.id.clone()).or_insert_with(|| {
                let pb = multi.add(
                    ProgressBar::new(100)
                        .with_style(style.clone())
                        .with_prefix(d.id.clone()),
                );
                (pb, String::new())
            });
            pb.set_position(u64::from(d.progress.unwrap_or(0)));
            let msg = format!(
                "{} {}",
                state_text(d),
                version(d.target_seq, d.target_semver.as_deref())
            );
            if !tty && *last != msg {
                println!("{}  {}  {}", d.id, bar(d.progress), msg);
            }
            pb.set_message(msg.clone());
            *last = msg;
            if !active(&d.state) {
                pb.finish();
            }
        }
        bars.retain(|id, (pb, _)| {
            let keep = seen.contains(id);
            if !keep {
                pb.finish_and_clear();
            }
            keep
        });
        if a.exit_when_idle && !devices.iter().any(|d| busy(&d.state)) {
            let installed = devices.iter().filter(|d| d.state == "installed").count();
            let failed = devices.iter().filter(|d| d.state == "failed").count();
            println!("idle: {installed} installed, {failed} failed, {} in all", devices.len());
            return Ok(());
        }
        tokio::time::sleep(interval).await;
    }
}
