//! `suitcase token {create,list,revoke}`: the server re-reads the token file on change.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
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
        /// With --device: a DTLS pre-shared key for coaps:// instead of an HTTP token. NAME is
        /// the device's id in the fleet; prints the identity and the key (once).
        #[arg(long, requires = "device", conflicts_with = "public_key")]
        psk: bool,
        /// With --psk: the identity the device sends (default: NAME).
        #[arg(long, requires = "psk", value_name = "IDENTITY")]
        psk_identity: Option<String>,
        /// With --psk: the key the device has (its bytes as written, e.g. RIOT's
        /// CONFIG_DTLS_PSK_KEY); default: 32 random hex characters.
        #[arg(long, requires = "psk", value_name = "KEY")]
        psk_key: Option<String>,
        /// With --device: admit the device over coaps:// by its key (PEM public key or
        /// certificate; it presents a certificate with this key, signed by anyone).
        #[arg(long, requires = "device", value_name = "FILE")]
        public_key: Option<PathBuf>,
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
        TokenCommand::Create {
            name,
            data,
            psk: true,
            psk_identity,
            psk_key,
            ..
        } => {
            let tokens = Tokens::new(data.join("tokens.json"));
            let key = match psk_key {
                Some(k) => k.into_bytes(),
                None => {
                    let mut raw = [0u8; 16];
                    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness for the key: {e}"))?;
                    hex::encode(raw).into_bytes()
                }
            };
            let p = tokens.create_psk(&name, psk_identity.as_deref(), Some(key))?;
            println!("psk-identity: {}", p.identity);
            println!("psk-key: {}", String::from_utf8_lossy(&p.key));
            eprintln!(
                "DTLS pre-shared key for device {name:?} created (shown once); e.g. coap-client-openssl -u '{}' -k KEY coaps://SERVER/...",
                p.identity
            );
        }
        TokenCommand::Create {
            name,
            data,
            public_key: Some(file),
            ..
        } => {
            let pem = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let spki = suitcase_dtls::spki_sha256_of_pem(&pem).with_context(|| file.display().to_string())?;
            Tokens::new(data.join("tokens.json")).create_public_key(&name, spki)?;
            eprintln!(
                "device {name:?} admitted over coaps:// by its key (SPKI SHA-256 {})",
                hex::encode(spki)
            );
        }
        TokenCommand::Create { name, device, data, .. } => {
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
                    "{:<24} {:<9} {:<10} created {}",
                    e.name,
                    format!("{:?}", e.role).to_lowercase(),
                    e.kind(),
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
