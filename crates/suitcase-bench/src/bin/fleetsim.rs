//! `fleetsim`: a fleet of N simulated devices being updated, for rollout tests. Each device
//! has its own UDP socket (`--bind-ip`, port `--base-port + i`), waits for a CoAP trigger
//! (`--mode coap`) or observes `<publish-id>/manifest` (`--mode observe`), fetches the
//! manifest and the image block-wise, checks the image's digest and reports
//! `{"seq":N,"result":"ok"}` (or a failure, for `--fail` of them) to `<publish-id>/report`.
//!
//! ```text
//! fleetsim --devices 1000 --register http://127.0.0.1:8080 --token T --publish-id sim \
//!          --running-seq 7 --loss 0.05 --exit-when-idle 10
//! ```
//! Prints one JSON line on stdout when it ends (idle, `--max-secs`, SIGINT or SIGTERM), and
//! `fleetsim: ready` on stderr once every socket is bound, the devices are registered with
//! the server (`--register`) and, in observe mode, have asked to observe the manifest.

#![allow(clippy::print_stdout)]

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use suitcase_bench::fleet::{self, Device, FleetConfig, Mode, Registration, Stats};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    /// Devices wait for a CoAP POST of the manifest URL (any path).
    Coap,
    /// Devices observe `<publish-id>/manifest` on --server.
    Observe,
    /// Not implemented (needs an MQTT client).
    Mqtt,
}

#[derive(Parser)]
#[command(
    about = "Simulate a fleet of CoAP devices being updated (triggers or Observe, block-wise downloads, reports)"
)]
struct Args {
    /// Simulated devices (each its own UDP socket and task).
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// How devices learn of an update.
    #[arg(long, value_enum, default_value = "coap")]
    mode: ModeArg,
    /// Local address of device 0.
    #[arg(long, default_value = "127.0.0.1")]
    bind_ip: IpAddr,
    /// Device i binds port BASE_PORT + i.
    #[arg(long, default_value_t = 20000)]
    base_port: u16,
    /// Devices per local address: device i binds --bind-ip + i / K (all of 127.0.0.0/8 is
    /// loopback on Linux). The server accepts 8 observations per IPv4 address, so observe
    /// mode defaults to 8; coap mode to 0 (all on --bind-ip).
    #[arg(long)]
    devices_per_ip: Option<usize>,
    /// The server's CoAP address (observe: required; coap: where reports go, default the
    /// host of the manifest URL).
    #[arg(long)]
    server: Option<SocketAddr>,
    /// The publish-id (observe and --register: required; coap: default read from the URL).
    #[arg(long)]
    publish_id: Option<String>,
    /// The manifest sequence number every device runs at start.
    #[arg(long, default_value_t = 0)]
    running_seq: u64,
    /// Block size exponent (6 = 1024 bytes).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u8).range(0..=6))]
    szx: u8,
    /// Drop each datagram, in and out, with this probability.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// This share of the devices (chosen by --seed) reports failure after downloading.
    #[arg(long, default_value_t = 0.0)]
    fail: f64,
    /// Seed of the loss, the back-off jitter and the failing devices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// ACK_TIMEOUT in ms (the first retransmission comes after 1–1.5 times it).
    #[arg(long, default_value_t = 2000)]
    ack_timeout_ms: u64,
    /// MAX_RETRANSMIT.
    #[arg(long, default_value_t = 4)]
    max_retransmit: u32,
    /// Times one request is tried as a new exchange (each with all its retransmissions)
    /// before the update fails.
    #[arg(long, default_value_t = 3)]
    exchange_attempts: u32,
    /// Register the devices at this server base URL (POST /api/v1/devices).
    #[arg(long, value_name = "URL")]
    register: Option<String>,
    /// Publisher token for --register.
    #[arg(long, env = "SUITCASE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Device ids are PREFIX + index.
    #[arg(long, default_value = "sim")]
    id_prefix: String,
    /// Device i is in group g<i % GROUPS> (0: no group).
    #[arg(long, default_value_t = 10)]
    groups: usize,
    /// Class of the registered devices.
    #[arg(long)]
    class: Option<String>,
    /// Devices per registration request.
    #[arg(long, default_value_t = 10_000)]
    register_batch: usize,
    /// Exit after this many seconds without a datagram and with no update in progress,
    /// once an update was asked for.
    #[arg(long, value_name = "SECS")]
    exit_when_idle: Option<f64>,
    /// Exit after this many seconds in any case.
    #[arg(long, visible_alias = "duration", value_name = "SECS")]
    max_secs: Option<f64>,
    /// A progress line on stderr every SECS (0: none).
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    progress_secs: f64,
}

/// Let the process open `need` descriptors if the hard limit allows.
fn raise_nofile(need: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft >= need {
        return;
    }
    let want = need.min(hard);
    if setrlimit(Resource::RLIMIT_NOFILE, want, hard).is_err() || want < need {
        eprintln!("fleetsim: warning: {need} file descriptors needed, the limit is {want} (ulimit -n)");
    }
}

fn cpu_seconds() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF).map_or(0.0, |u| {
        let t = |v: nix::sys::time::TimeVal| v.tv_sec() as f64 + v.tv_usec() as f64 / 1e6;
        t(u.user_time()) + t(u.system_time())
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mode = match args.mode {
        ModeArg::Coap => Mode::Coap,
        ModeArg::Observe => Mode::Observe,
        ModeArg::Mqtt => {
            anyhow::bail!("--mode mqtt is not implemented (no MQTT client in this crate); use coap or observe")
        }
    };
    if mode == Mode::Observe && (args.server.is_none() || args.publish_id.is_none()) {
        anyhow::bail!("--mode observe needs --server and --publish-id");
    }
    if !(0.0..1.0).contains(&args.loss) || !(0.0..=1.0).contains(&args.fail) {
        anyhow::bail!("--loss must be in [0, 1) and --fail in [0, 1]");
    }
    let per_ip = args.devices_per_ip.unwrap_or(if mode == Mode::Observe { 8 } else { 0 });
    raise_nofile(args.devices as u64 + 256);

    let cfg = Arc::new(FleetConfig {
        mode,
        server: args.server,
        publish_id: args.publish_id.clone(),
        running_seq: args.running_seq,
        szx: args.szx,
        loss: args.loss,
        seed: args.seed,
        ack_timeout: Duration::from_millis(args.ack_timeout_ms),
        max_retransmit: args.max_retransmit,
        exchange_attempts: args.exchange_attempts,
        separate_timeout: Duration::from_secs(30),
        reregister_after: Duration::from_secs(30),
    });
    let stats = Arc::new(Stats::default());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let start = Instant::now();
    rt.block_on(async {
        let addrs = (0..args.devices)
            .map(|i| fleet::device_addr(args.bind_ip, per_ip, args.base_port, i))
            .collect::<anyhow::Result<Vec<SocketAddr>>>()?;
        let mut socks = Vec::with_capacity(addrs.len());
        for a in &addrs {
            socks.push(fleet::bind(*a).await?);
        }
        if let Some(url) = &args.register {
            let token = args
                .token
                .as_deref()
                .context("--register needs --token (or SUITCASE_TOKEN)")?;
            let publish_id = args.publish_id.as_deref().context("--register needs --publish-id")?;
            let reg = Registration {
                prefix: &args.id_prefix,
                publish_id,
                groups: args.groups,
                class: args.class.as_deref(),
                running_seq: args.running_seq,
            };
            fleet::register(url, token, &reg, &addrs, args.register_batch).await?;
        }
        let failing = fleet::failing_devices(args.devices, args.fail, args.seed);
        for (i, (sock, fails)) in socks.into_iter().zip(failing).enumerate() {
            tokio::spawn(Device::new(i, sock, cfg.clone(), stats.clone(), fails).run());
        }
        if mode == Mode::Observe {
            // Ready means observing (or refused): a publish after it reaches every device.
            let until = Instant::now() + Duration::from_secs(120);
            while stats.observe_first_done.load(Relaxed) < args.devices as u64 && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        eprintln!(
            "fleetsim: ready: {} devices from {} port {}.., mode {:?}",
            args.devices, args.bind_ip, args.base_port, mode
        );
        wait_for_end(&args, &stats, start).await
    })?;
    let summary = stats.summary(mode, args.devices, start.elapsed(), cpu_seconds());
    println!("{summary}");
    rt.shutdown_background();
    Ok(())
}

/// Until idle, `--max-secs`, SIGINT or SIGTERM.
async fn wait_for_end(args: &Args, stats: &Stats, start: Instant) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut next_progress = Duration::from_secs_f64(args.progress_secs.max(0.0));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
            _ = tick.tick() => {}
        }
        let elapsed = start.elapsed();
        if args.max_secs.is_some_and(|m| elapsed.as_secs_f64() >= m) {
            return Ok(());
        }
        if let Some(idle) = args.exit_when_idle {
            let quiet_ms = fleet::unix_ms().saturating_sub(stats.last_activity_ms.load(Relaxed));
            if stats.started() && stats.busy.load(Relaxed) == 0 && quiet_ms as f64 >= idle * 1000.0 {
                return Ok(());
            }
        }
        if args.progress_secs > 0.0 && elapsed >= next_progress {
            next_progress += Duration::from_secs_f64(args.progress_secs);
            let g = |c: &std::sync::atomic::AtomicU64| c.load(Relaxed);
            eprintln!(
                "fleetsim: {:.0}s triggers {} notifications {} busy {} downloads {} reports acked {} failures {} errors {} retransmissions {}",
                elapsed.as_secs_f64(),
                g(&stats.triggers),
                g(&stats.notifications),
                g(&stats.busy),
                g(&stats.downloads_completed),
                g(&stats.reports_acked),
                g(&stats.failures_reported),
                g(&stats.update_errors),
                g(&stats.retransmissions),
            );
        }
    }
}
