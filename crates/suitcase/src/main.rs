//! `suitcase`: the command line. Parses arguments, installs the log subscriber, and calls the
//! libraries; the work happens in `serve.rs`, `publish.rs` and `manifest.rs`.

#![allow(clippy::print_stdout)]
// a command-line tool prints its results
// The doc comments of this crate are clap's --help texts, written for a terminal: `[::1]`
// there is an address, not an intra-doc link.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

mod client;
mod config;
mod device;
mod fleet;
mod list;
mod manifest;
mod mqtt;
mod notify;
mod publish;
mod rollout;
mod rollout_triggers;
mod serve;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// CoAP-first firmware update server that signs and serves SUIT manifests.
#[derive(Parser)]
#[command(version, about, long_about = None, args_conflicts_with_subcommands = true)]
struct Cli {
    /// With no subcommand the server runs, and takes `serve`'s flags (`suitcase --data X`).
    #[command(flatten)]
    serve: serve::ServeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default): CoAP on [::]:5683, HTTP on [::]:8080, store in ./suitcase-data.
    Serve(Box<serve::ServeArgs>),
    /// Upload firmware files (and optionally a signed manifest) as a new version.
    Publish(publish::PublishArgs),
    /// List the publish-ids of a server, or the versions and files of one.
    List(list::ListArgs),
    /// Ask the server to notify devices (CoAP POST of the manifest URL to /suit/trigger).
    Notify(notify::NotifyArgs),
    /// The device inventory: add, list, show, remove, import and watch devices.
    #[command(subcommand)]
    Device(device::DeviceCommand),
    /// Staged rollouts: create, list, status (--watch), pause, resume, abort.
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// Manage publisher and device tokens (stored hashed in <data>/tokens.json).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Create a signing key (PKCS#8 PEM) and its public key (`<out>.pub`).
    Keygen(manifest::KeygenArgs),
    /// Create, sign, verify and inspect SUIT manifests offline.
    #[command(subcommand)]
    Manifest(manifest::ManifestCommand),
}

fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SUITCASE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        // One JSON object per line: timestamp, level, target, the event's fields.
        fmt.json().flatten_event(true).with_current_span(false).init();
    } else {
        fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

fn main() -> ExitCode {
    use clap::CommandFactory as _;
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let serve = Cli::command().find_subcommand("serve").cloned();
    let args = match serve.map(|s| config::expand(args, &s, |k| std::env::var_os(k).is_some())) {
        Some(Ok(a)) => a,
        Some(Err(e)) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
        None => std::env::args_os().collect(),
    };
    let cli = Cli::parse_from(args);
    let command = cli.command.unwrap_or_else(|| Command::Serve(Box::new(cli.serve)));
    init_tracing(matches!(&command, Command::Serve(a) if a.log_format == "json"));
    let result = match command {
        Command::Serve(args) => serve::run(*args),
        Command::Publish(args) => publish::run(args),
        Command::Notify(args) => notify::run(args),
        Command::List(args) => list::run(args),
        Command::Keygen(args) => manifest::keygen(args),
        Command::Token(cmd) => token::run(cmd),
        Command::Device(cmd) => device::run(cmd),
        Command::Rollout(cmd) => rollout::run(cmd),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// The command lines of a Markdown file's code blocks that run suitcase: `suitcase …`,
    /// `cargo run --release -- …`, `target/release/suitcase …` (after `$ `, `VAR=x `, or
    /// `ip netns exec NS `), with their arguments split as a shell would (quotes removed).
    fn command_lines(markdown: &str) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        let mut in_code = false;
        // Join continuation lines (`… \` newline `…`).
        let joined = markdown.replace("\\\n", " ");
        for line in joined.lines() {
            if line.trim_start().starts_with("```") {
                in_code = !in_code;
                continue;
            }
            if !in_code {
                continue;
            }
            let line = line.split(" #").next().unwrap_or(line).trim();
            // Synopsis lines (`[--flag X]`, `A|B`, `FILE...`) are checked by `synopsis`.
            if line.contains('[') || line.contains("...") {
                continue;
            }
            let words = split_shell(line);
            let Some(start) = words
                .iter()
                .position(|w| w == "suitcase" || w.ends_with("/suitcase") || w == "cargo")
            else {
                continue;
            };
            let mut args: Vec<String> = words[start..].to_vec();
            if args[0] == "cargo" {
                // `cargo run --release [-- ARGS]`
                if args.get(1).map(String::as_str) != Some("run") {
                    continue;
                }
                let rest = args
                    .iter()
                    .position(|a| a == "--")
                    .map_or(Vec::new(), |i| args[i + 1..].to_vec());
                args = std::iter::once("suitcase".to_string()).chain(rest).collect();
            }
            // Up to a pipe, redirection or `&`.
            let end = args
                .iter()
                .position(|a| a == "|" || a == "&" || a == "&&" || a.starts_with('>') || a.starts_with("2>"))
                .unwrap_or(args.len());
            args.truncate(end);
            out.push(args);
        }
        out
    }

    fn split_shell(line: &str) -> Vec<String> {
        let mut words = Vec::new();
        let mut cur = String::new();
        let mut quote = None;
        let mut any = false;
        for c in line.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), c) => cur.push(c),
                (None, '\'' | '"') => {
                    quote = Some(c);
                    any = true;
                }
                (None, c) if c.is_whitespace() => {
                    if any || !cur.is_empty() {
                        words.push(std::mem::take(&mut cur));
                    }
                    any = false;
                }
                (None, c) => cur.push(c),
            }
        }
        if any || !cur.is_empty() {
            words.push(cur);
        }
        words
    }

    #[test]
    fn every_command_line_in_the_docs_parses() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut checked = 0;
        for doc in [
            "README.md",
            "examples/riot/README.md",
            "examples/zephyr/README.md",
            "docs/reliability.md",
            "deploy/README.md",
        ] {
            let text = std::fs::read_to_string(root.join(doc)).unwrap();
            for args in command_lines(&text) {
                // Shell variables stand for values.
                let args: Vec<String> = args
                    .into_iter()
                    .map(|a| if a.contains('$') { a.replace('$', "") } else { a })
                    .collect();
                if let Err(e) = Cli::try_parse_from(&args) {
                    // --help/--version "errors" are fine.
                    assert!(
                        matches!(
                            e.kind(),
                            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
                        ),
                        "{doc}: `{}` does not parse:\n{e}",
                        args.join(" ")
                    );
                }
                checked += 1;
            }
        }
        assert!(checked >= 10, "only {checked} command lines found");
    }

    /// The README's synopsis: each `suitcase CMD …` entry (with its continuation lines) must
    /// name exactly the long flags clap defines for that command, no more, no fewer.
    #[test]
    fn the_readme_synopsis_lists_every_flag_and_no_other() {
        use clap::CommandFactory as _;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let start = readme.find("## Command line").expect("a Command line section");
        let block = readme[start..].split("```").nth(1).expect("a synopsis block");
        let mut entries: Vec<String> = Vec::new();
        for line in block.lines().skip(1) {
            if line.starts_with("suitcase ") {
                entries.push(line.to_string());
            } else if line.starts_with(' ') {
                if let Some(e) = entries.last_mut() {
                    e.push(' ');
                    e.push_str(line.trim());
                }
            }
        }
        assert!(entries.len() >= 8, "{entries:?}");
        let cli = Cli::command();
        let longs = |cmd: &clap::Command| -> Vec<String> {
            cmd.get_arguments()
                .filter(|a| !matches!(a.get_action(), clap::ArgAction::Help | clap::ArgAction::Version))
                .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
                .collect()
        };
        let flags_of = |cmd: &clap::Command| -> std::collections::BTreeSet<String> {
            let mut set: std::collections::BTreeSet<String> = longs(cmd).into_iter().collect();
            for sub in cmd.get_subcommands() {
                set.extend(longs(sub));
            }
            set
        };
        let mut problems = Vec::new();
        for entry in &entries {
            let words: Vec<&str> = entry.split_whitespace().collect();
            // `suitcase [serve]`, `suitcase manifest create`, `suitcase token …`.
            let mut cmd = &cli;
            let mut name = String::from("suitcase");
            for w in words.iter().skip(1) {
                let w = w.trim_matches(|c| c == '[' || c == ']');
                match cmd.find_subcommand(w) {
                    Some(sub) => {
                        cmd = sub;
                        name.push(' ');
                        name.push_str(w);
                    }
                    None => break,
                }
            }
            let documented: std::collections::BTreeSet<String> = words
                .iter()
                .filter_map(|w| {
                    let w = w.trim_matches(|c: char| c == '[' || c == ']' || c == '|');
                    w.starts_with("--")
                        .then(|| w.split('=').next().unwrap_or(w).to_string())
                })
                .collect();
            let defined = flags_of(cmd);
            let missing: Vec<_> = defined.difference(&documented).collect();
            let unknown: Vec<_> = documented.difference(&defined).collect();
            if !missing.is_empty() || !unknown.is_empty() {
                problems.push(format!("`{name}`: missing {missing:?}, not flags of it {unknown:?}"));
            }
        }
        assert!(problems.is_empty(), "README synopsis:\n{}", problems.join("\n"));
    }

    #[test]
    fn the_implicit_serve_takes_serves_flags() {
        let cli = Cli::try_parse_from(["suitcase", "--data", "/tmp/x", "--block-size", "256"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.data_dir(), std::path::Path::new("/tmp/x"));
        assert!(
            Cli::try_parse_from(["suitcase", "--data", "/tmp/x", "publish"]).is_err(),
            "flags and a subcommand"
        );
        assert!(Cli::try_parse_from(["suitcase", "serve", "--data", "/tmp/x"]).is_ok());
        assert!(Cli::try_parse_from(["suitcase"]).is_ok());
    }
}
