//! `loadgen`: N simulated devices each download an image block-wise from a CoAP server.
//!
//! ```text
//! loadgen --server [::1]:5683 --path fw/app/board/app.bin --expect app.bin --devices 100
//! ```
//! Prints one line of `key=value` results (and `--json`): blocks/s, images/s, per-device
//! p50/p95/max, retransmissions, errors. Exit status 1 if any download failed.

#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use suitcase_bench::device::{download, handshakes, DeviceConfig};

#[derive(Parser)]
struct Args {
    /// Server address.
    #[arg(long)]
    server: SocketAddr,
    /// Resource path, e.g. fw/app/board/app.bin.
    #[arg(long)]
    path: String,
    /// File with the bytes every device must receive.
    #[arg(long)]
    expect: PathBuf,
    /// Simulated devices (each its own UDP socket).
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// Block size exponent (6 = 1024 bytes, 4 = 256, 2 = 64).
    #[arg(long, default_value_t = 6)]
    szx: u8,
    /// Initial retransmission timeout in milliseconds.
    #[arg(long, default_value_t = 2000)]
    ack_timeout_ms: u64,
    /// Retransmissions per block before a device gives up.
    #[arg(long, default_value_t = 6)]
    max_retransmit: u32,
    /// Drop this fraction of datagrams in each direction (fault injection).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Use an empty token, as RIOT does.
    #[arg(long)]
    empty_token: bool,
    /// Device i sends from local port BASE_PORT + i (a fleet registered beforehand).
    #[arg(long)]
    base_port: Option<u16>,
    /// coaps://: PSK identity (with --psk-key): every device handshakes DTLS 1.2
    /// (TLS_PSK_WITH_AES_128_CCM_8) before it downloads.
    #[arg(long, requires = "psk_key")]
    psk_identity: Option<String>,
    /// coaps://: the PSK (its bytes as written).
    #[arg(long, requires = "psk_identity")]
    psk_key: Option<String>,
    /// Instead of downloading: each device handshakes this many times in a row (a fresh
    /// socket each time, the session closed after), reporting handshakes/s.
    #[arg(long, requires = "psk_identity")]
    handshakes: Option<usize>,
    /// Label printed with the results.
    #[arg(long, default_value = "")]
    label: String,
    /// Print JSON instead of key=value.
    #[arg(long)]
    json: bool,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let args = Args::parse();
    let expected: Arc<[u8]> = std::fs::read(&args.expect)?.into();
    let cfg = Arc::new(DeviceConfig {
        server: args.server,
        path: args
            .path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        szx: args.szx,
        ack_timeout: Duration::from_millis(args.ack_timeout_ms),
        max_retransmit: args.max_retransmit,
        loss: args.loss,
        empty_token: args.empty_token,
        base_port: args.base_port,
        dtls: match (&args.psk_identity, &args.psk_key) {
            (Some(i), Some(k)) => Some(suitcase_dtls::ClientConfig::psk(i.as_bytes(), k.as_bytes()).context()?),
            _ => None,
        },
    });
    if let Some(count) = args.handshakes {
        return handshake_run(&args, &cfg, count);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let start = Instant::now();
    let outcomes = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for id in 0..args.devices {
            let cfg = cfg.clone();
            let expected = expected.clone();
            set.spawn(async move { download(&cfg, id as u64, &expected).await });
        }
        let mut v = Vec::with_capacity(args.devices);
        while let Some(r) = set.join_next().await {
            if let Ok(o) = r {
                v.push(o);
            }
        }
        v
    });
    let wall = start.elapsed();
    let blocks: u64 = outcomes.iter().map(|o| o.blocks).sum();
    let mut hs: Vec<Duration> = outcomes.iter().map(|o| o.handshake).collect();
    hs.sort();
    let handshake_p95_ms = percentile(&hs, 0.95).as_secs_f64() * 1e3;
    let retx: u64 = outcomes.iter().map(|o| o.retransmissions).sum();
    let errors: Vec<&String> = outcomes.iter().filter_map(|o| o.error.as_ref()).collect();
    let ok = outcomes.len() - errors.len();
    let mut times: Vec<Duration> = outcomes
        .iter()
        .filter(|o| o.error.is_none())
        .map(|o| o.elapsed)
        .collect();
    times.sort();
    let secs = wall.as_secs_f64();
    let (p50, p95, max) = (
        percentile(&times, 0.5),
        percentile(&times, 0.95),
        times.last().copied().unwrap_or_default(),
    );
    if args.json {
        println!(
            "{{\"label\":\"{}\",\"devices\":{},\"ok\":{},\"errors\":{},\"blocks\":{},\"wall_s\":{:.3},\"blocks_per_s\":{:.0},\"images_per_s\":{:.2},\"p50_ms\":{:.1},\"p95_ms\":{:.1},\"max_ms\":{:.1},\"retransmissions\":{},\"handshake_p95_ms\":{:.1}}}",
            args.label, args.devices, ok, errors.len(), blocks, secs, blocks as f64 / secs, ok as f64 / secs,
            p50.as_secs_f64() * 1e3, p95.as_secs_f64() * 1e3, max.as_secs_f64() * 1e3, retx, handshake_p95_ms
        );
    } else {
        println!(
            "label={} devices={} ok={} errors={} blocks={} wall_s={:.3} blocks_per_s={:.0} images_per_s={:.2} p50_ms={:.1} p95_ms={:.1} max_ms={:.1} retransmissions={} handshake_p95_ms={:.1}",
            args.label, args.devices, ok, errors.len(), blocks, secs, blocks as f64 / secs, ok as f64 / secs,
            p50.as_secs_f64() * 1e3, p95.as_secs_f64() * 1e3, max.as_secs_f64() * 1e3, retx, handshake_p95_ms
        );
    }
    for e in errors.iter().take(5) {
        eprintln!("error: {e}");
    }
    Ok(if errors.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
}

/// `--handshakes K`: every device handshakes K times; one result line.
fn handshake_run(args: &Args, cfg: &Arc<DeviceConfig>, count: usize) -> anyhow::Result<std::process::ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let start = Instant::now();
    let results = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..args.devices {
            let cfg = cfg.clone();
            set.spawn(async move { handshakes(&cfg, count).await });
        }
        let mut v = Vec::new();
        while let Some(r) = set.join_next().await {
            v.push(r.unwrap_or_else(|e| Err(e.to_string())));
        }
        v
    });
    let wall = start.elapsed().as_secs_f64();
    let mut times: Vec<Duration> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .flatten()
        .copied()
        .collect();
    times.sort();
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    println!(
        "label={} devices={} handshakes={} errors={} wall_s={:.3} handshakes_per_s={:.0} p50_ms={:.2} p95_ms={:.2}",
        args.label,
        args.devices,
        times.len(),
        errors.len(),
        wall,
        times.len() as f64 / wall,
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.95).as_secs_f64() * 1e3,
    );
    for e in errors.iter().take(5) {
        eprintln!("error: {e}");
    }
    Ok(if errors.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
}
