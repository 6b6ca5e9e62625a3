//! `suitcase token {create,list,revoke}`: in the token file of a data directory (the server
//! re-reads it on change), or with `--database postgres://…` in the table every node sharing
//! that database honours (each follows it within a second).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use suitcase_auth::{Role, TokenEntry, Tokens};
use suitcase_store_shared::tokens::SharedTokens;

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
        #[command(flatten)]
        place: Where,
    },
    /// List tokens (names, roles, dates; never the tokens).
    List {
        #[command(flatten)]
        place: Where,
    },
    /// Revoke a token by name.
    Revoke {
        /// Its name.
        name: String,
        #[command(flatten)]
        place: Where,
    },
}

/// Where tokens are kept, as the command line says.
#[derive(Args)]
pub struct Where {
    /// The server's data directory.
    #[arg(long, env = "SUITCASE_DATA", default_value = "suitcase-data")]
    data: PathBuf,
    /// Keep it in this PostgreSQL database (postgres://…) instead: every server whose
    /// --database it is honours it. A sqlite: URL means the data directory's file.
    #[arg(long, env = "SUITCASE_DATABASE", value_name = "URL")]
    database: Option<String>,
}

/// Where tokens are kept, opened.
enum Place {
    File(Tokens),
    Table(tokio::runtime::Runtime, SharedTokens),
}

impl Place {
    fn of(w: Where) -> anyhow::Result<Place> {
        match w.database.filter(|d| suitcase_store::is_postgres_url(d)) {
            None => Ok(Place::File(Tokens::new(w.data.join("tokens.json")))),
            Some(url) => {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let table = rt
                    .block_on(SharedTokens::connect(&url))
                    .with_context(|| format!("the token table in {}", suitcase_store_shared::redact(&url)))?;
                eprintln!(
                    "(the token table in {}, honoured by every server on that database)",
                    suitcase_store_shared::redact(&url)
                );
                Ok(Place::Table(rt, table))
            }
        }
    }

    fn add(&self, entry: TokenEntry) -> anyhow::Result<()> {
        match self {
            Place::File(t) => Ok(t.add(entry)?),
            Place::Table(rt, t) => Ok(rt.block_on(t.add(&entry))?),
        }
    }

    fn list(&self) -> anyhow::Result<Vec<TokenEntry>> {
        match self {
            Place::File(t) => Ok(t.list()?),
            Place::Table(rt, t) => Ok(rt.block_on(t.list())?),
        }
    }

    fn revoke(&self, name: &str) -> anyhow::Result<bool> {
        match self {
            Place::File(t) => Ok(t.revoke(name)?),
            Place::Table(rt, t) => Ok(rt.block_on(t.revoke(name))?),
        }
    }
}

pub fn run(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Create {
            name,
            place,
            psk: true,
            psk_identity,
            psk_key,
            ..
        } => {
            let place = Place::of(place)?;
            let key = match psk_key {
                Some(k) => k.into_bytes(),
                None => {
                    let mut raw = [0u8; 16];
                    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness for the key: {e}"))?;
                    hex::encode(raw).into_bytes()
                }
            };
            let (entry, p) = TokenEntry::new_psk(&name, psk_identity.as_deref(), Some(key))?;
            place.add(entry)?;
            println!("psk-identity: {}", p.identity);
            println!("psk-key: {}", String::from_utf8_lossy(&p.key));
            eprintln!(
                "DTLS pre-shared key for device {name:?} created (shown once); e.g. coap-client-openssl -u '{}' -k KEY coaps://SERVER/...",
                p.identity
            );
        }
        TokenCommand::Create {
            name,
            place,
            public_key: Some(file),
            ..
        } => {
            let pem = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let spki = suitcase_dtls::spki_sha256_of_pem(&pem).with_context(|| file.display().to_string())?;
            Place::of(place)?.add(TokenEntry::new_public_key(&name, spki)?)?;
            eprintln!(
                "device {name:?} admitted over coaps:// by its key (SPKI SHA-256 {})",
                hex::encode(spki)
            );
        }
        TokenCommand::Create {
            name, device, place, ..
        } => {
            let place = Place::of(place)?;
            let role = if device { Role::Device } else { Role::Publisher };
            let (entry, token) = TokenEntry::new_token(&name, role)?;
            place.add(entry)?;
            println!("{token}");
            eprintln!(
                "{} token {name:?} created; send it as `Authorization: {} {token}`",
                if device { "device" } else { "publisher" },
                if device { "token" } else { "Bearer" }
            );
        }
        TokenCommand::List { place } => {
            for e in Place::of(place)?.list()? {
                println!(
                    "{:<24} {:<9} {:<10} created {}",
                    e.name,
                    format!("{:?}", e.role).to_lowercase(),
                    e.kind(),
                    e.created
                );
            }
        }
        TokenCommand::Revoke { name, place } => {
            if !Place::of(place)?.revoke(&name)? {
                eprintln!("no token named {name:?}");
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
