//! `suitcase serve --config FILE`: every `serve` flag as a key of a TOML file. The file is
//! turned into command-line arguments placed before the real ones, so the precedence is
//! the command line, then `SUITCASE_*` environment variables, then the file, then the
//! defaults. Keys are the flags' long names (`max-connections`, or `max_connections`);
//! an unknown key is an error naming it.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{bail, Context as _};

/// The value of `--config` in `args`, if given.
fn config_path(args: &[OsString]) -> Option<OsString> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            return None;
        }
        if s == "--config" {
            return it.next().cloned();
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(OsString::from(v));
        }
    }
    None
}

/// Whether `--long` is given on the command line.
fn given(args: &[OsString], long: &str) -> bool {
    let flag = format!("--{long}");
    let with_value = format!("--{long}=");
    args.iter().any(|a| {
        let s = a.to_string_lossy();
        s == flag || s.starts_with(&with_value)
    })
}

/// `args` with the settings of the `--config` file inserted for `serve` (explicit or
/// implicit); unchanged without `--config`. `serve` is the clap command of `serve`; `env`
/// tells whether an environment variable is set.
pub fn expand(
    args: Vec<OsString>,
    serve: &clap::Command,
    env: impl Fn(&std::ffi::OsStr) -> bool,
) -> anyhow::Result<Vec<OsString>> {
    let Some(path) = config_path(&args) else {
        return Ok(args);
    };
    let path = Path::new(&path);
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading the configuration {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("configuration {}", path.display()))?;
    let mut injected: Vec<OsString> = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let Some(arg) = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "config")
        else {
            bail!(
                "{}: unknown key {key:?} (the keys are `suitcase serve`'s flags without the dashes; see `suitcase serve --help`)",
                path.display()
            );
        };
        if given(&args, &long) || arg.get_env().is_some_and(&env) {
            continue; // the command line and the environment win over the file
        }
        let flag = OsString::from(format!("--{long}"));
        let takes_value = arg.get_action().takes_values();
        let scalar = |v: &toml::Value| -> anyhow::Result<OsString> {
            Ok(OsString::from(match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => bail!(
                    "{}: {key}: expected a string, number or boolean, got {}",
                    path.display(),
                    other.type_str()
                ),
            }))
        };
        match value {
            toml::Value::Boolean(b) if !takes_value => {
                if *b {
                    injected.push(flag);
                }
            }
            _ if !takes_value => bail!("{}: {key} is a switch: true or false", path.display()),
            toml::Value::Array(items) => {
                for v in items {
                    injected.push(flag.clone());
                    injected.push(scalar(v)?);
                }
            }
            v => {
                injected.push(flag);
                injected.push(scalar(v)?);
            }
        }
    }
    // After `serve`, or after the program name for the implicit serve.
    let at = match args.iter().position(|a| a == "serve") {
        Some(i) => i + 1,
        None => 1.min(args.len()),
    };
    let mut out = args;
    out.splice(at..at, injected);
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::{CommandFactory as _, Parser as _};

    fn serve_cmd() -> clap::Command {
        crate::Cli::command().find_subcommand("serve").cloned().unwrap()
    }

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_file_fills_in_what_the_command_line_and_environment_leave_open() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        std::fs::write(
            &file,
            "data = \"/srv/fw\"\nblock_size = 256\nmax-connections = 10\nno-tracking = true\nmdns-loopback = false\n\
             trust = [\"a.pub\", \"b.pub\"]\ncache-mib = 64\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let cmd = serve_cmd();
        // SUITCASE_CACHE_MIB set: the environment wins over the file.
        let env = |k: &std::ffi::OsStr| k == "SUITCASE_CACHE_MIB";
        let out = expand(
            args(&["suitcase", "serve", "--config", f, "--max-connections", "5"]),
            &cmd,
            env,
        )
        .unwrap();
        let out: Vec<String> = out.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        let joined = out.join(" ");
        assert!(joined.contains("--data /srv/fw"), "{joined}");
        assert!(joined.contains("--block-size 256"), "{joined}");
        assert!(joined.contains("--no-tracking"), "{joined}");
        assert!(joined.contains("--trust a.pub --trust b.pub"), "{joined}");
        assert!(!joined.contains("--mdns-loopback"), "{joined}");
        assert!(!joined.contains("--cache-mib"), "{joined}");
        assert_eq!(
            joined.matches("--max-connections").count(),
            1,
            "the command line's only: {joined}"
        );
        // It parses with the real CLI.
        crate::Cli::try_parse_from(&out).unwrap();
        // The implicit serve too.
        let implicit = expand(args(&["suitcase", "--config", f]), &cmd, |_| false).unwrap();
        crate::Cli::try_parse_from(&implicit).unwrap();
    }

    #[test]
    fn the_example_names_every_flag_and_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/suitcase.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let cmd = serve_cmd();
        let keys: Vec<String> = text
            .lines()
            .map(|l| l.trim_start_matches('#').trim())
            .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_string()))
            .collect();
        for a in cmd.get_arguments() {
            let Some(long) = a.get_long() else { continue };
            if long == "config" || long == "help" {
                continue;
            }
            assert!(
                keys.iter().any(|k| k == long),
                "examples/suitcase.toml does not mention {long}"
            );
        }
        let out = expand(args(&["suitcase", "serve", "--config", path]), &cmd, |_| false).unwrap();
        crate::Cli::try_parse_from(&out).unwrap();
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_errors_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = serve_cmd();
        for (text, needle) in [
            ("max_conections = 3\n", "max_conections"),
            ("no-tracking = \"yes\"\n", "no-tracking"),
            ("data = { a = 1 }\n", "data"),
            ("config = \"x.toml\"\n", "config"),
            ("data = \n", "configuration"),
        ] {
            let file = dir.path().join("bad.toml");
            std::fs::write(&file, text).unwrap();
            let e = expand(
                args(&["suitcase", "serve", "--config", file.to_str().unwrap()]),
                &cmd,
                |_| false,
            )
            .unwrap_err();
            assert!(format!("{e:#}").contains(needle), "{text}: {e:#}");
        }
    }
}
