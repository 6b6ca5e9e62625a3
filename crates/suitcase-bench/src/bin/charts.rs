//! `charts`: draws the benchmark scripts' TSV results as SVG.
//!
//! ```text
//! charts compare coap.tsv [coap-10k.tsv ...] --out docs/charts   # coap-blocks-per-s.svg, coap-rss.svg
//! charts fleet fleet-tracking.tsv --out docs/charts              # fleet-tracking.svg
//! ```
//! Several TSV files are merged (each keeps its own header line); medians per (server or
//! variant, N) are taken as the scripts' summaries take them. Same input, same bytes.

#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use suitcase_bench::charts::{compare_charts, fleet_chart, read_tsv_files};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// From `scripts/compare.sh` results: throughput and peak RSS per server against N.
    Compare {
        /// TSV files written by compare.sh (merged; e.g. the N ≤ 1000 run and the 10k run).
        #[arg(required = true)]
        tsv: Vec<PathBuf>,
        /// Directory the SVG files are written to.
        #[arg(long, default_value = "docs/charts")]
        out: PathBuf,
    },
    /// From `scripts/fleet-tracking.sh` results: throughput with tracking on and off.
    Fleet {
        /// TSV files written by fleet-tracking.sh (merged).
        #[arg(required = true)]
        tsv: Vec<PathBuf>,
        /// Directory the SVG file is written to.
        #[arg(long, default_value = "docs/charts")]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let written = match Args::parse().command {
        Command::Compare { tsv, out } => compare_charts(&read_tsv_files(&tsv)?, &out)?,
        Command::Fleet { tsv, out } => vec![fleet_chart(&read_tsv_files(&tsv)?, &out)?],
    };
    for p in written {
        println!("chart: {}", p.display());
    }
    Ok(())
}
