//! `suitcase token {create,list,revoke}`: the server re-reads the token file on change.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use suitcase_auth::{Role, Tokens};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (once; only its hash is stored).
    Create {
        /// A name for the audit log, e.g. ci or alice.
        name: String,
        /// A device token (HTTP downloads) instead of a publisher token (publish, notify, remove).
        #[arg(long)]
        device: bool,
        /// The server's data directory.
        #[arg(long, env = "SUITCASE_DATA", default_value = "suitcase-data")]
        data: PathBuf,
    },
    /// List tokens (names, roles, dates; never the tokens).
    List {
        /// The server's data directory.
        #[arg(long, env = "SUITCASE_DATA", default_value = "suitcase-data")]
        data: PathBuf,
    },
    /// Revoke a token by name.
    Revoke {
        /// Its name.
        name: String,
        /// The server's data directory.
        #[arg(long, env = "SUITCASE_DATA", default_value = "suitcase-data")]
        data: PathBuf,
    },
}

pub fn run(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Create { name, device, data } => {
            let tokens = Tokens::new(data.join("tokens.json"));
            let role = if device { Role::Device } else { Role::Publisher };
            let token = tokens.create(&name, role)?;
            println!("{token}");
            eprintln!(
                "{} token {name:?} created; send it as `Authorization: {} {token}`",
                if device { "device" } else { "publisher" },
                if device { "token" } else { "Bearer" }
            );
        }
        TokenCommand::List { data } => {
            for e in Tokens::new(data.join("tokens.json")).list()? {
                println!(
                    "{:<24} {:<9} created {}",
                    e.name,
                    format!("{:?}", e.role).to_lowercase(),
                    e.created
                );
            }
        }
        TokenCommand::Revoke { name, data } => {
            if !Tokens::new(data.join("tokens.json")).revoke(&name)? {
                eprintln!("no token named {name:?}");
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
