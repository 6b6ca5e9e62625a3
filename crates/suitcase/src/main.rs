//! `suitcase`: the command line. Parses arguments, installs the log subscriber, and calls the
//! libraries; the work happens in `serve.rs`, `publish.rs` and `manifest.rs`.

#![allow(clippy::print_stdout)] // a command-line tool prints its results

mod client;
mod list;
mod manifest;
mod notify;
mod publish;
mod serve;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// CoAP-first firmware update server that signs and serves SUIT manifests.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default): CoAP on [::]:5683, HTTP on [::]:8080, store in ./suitcase-data.
    Serve(serve::ServeArgs),
    /// Upload firmware files (and optionally a signed manifest) as a new version.
    Publish(publish::PublishArgs),
    /// List the publish-ids of a server, or the versions and files of one.
    List(list::ListArgs),
    /// Ask the server to notify devices (CoAP POST of the manifest URL to /suit/trigger).
    Notify(notify::NotifyArgs),
    /// Manage publisher and device tokens (stored hashed in <data>/tokens.json).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Create a signing key (PKCS#8 PEM) and its public key (`<out>.pub`).
    Keygen(manifest::KeygenArgs),
    /// Create, sign, verify and inspect SUIT manifests offline.
    #[command(subcommand)]
    Manifest(manifest::ManifestCommand),
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SUITCASE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command.unwrap_or(Command::Serve(serve::ServeArgs::default_args())) {
        Command::Serve(args) => serve::run(args),
        Command::Publish(args) => publish::run(args),
        Command::Notify(args) => notify::run(args),
        Command::List(args) => list::run(args),
        Command::Keygen(args) => manifest::keygen(args),
        Command::Token(cmd) => token::run(cmd),
        Command::Manifest(cmd) => manifest::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
