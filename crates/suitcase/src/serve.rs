//! `suitcase serve`: the store, the CoAP server and the HTTP API in one process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::Args;
use suitcase_coap::{driver, Server, StoreResources};
use suitcase_http::{AppState, Signer};
use suitcase_store::{LocalStore, Store};
use suitcase_suit::{Algorithm, SigningKey};
use tokio_util::sync::CancellationToken;

#[derive(Args, Clone)]
pub struct ServeArgs {
    /// A TOML file with any of these flags as keys (`max-connections = 2048`); the command
    /// line and SUITCASE_* environment variables win over it. See examples/suitcase.toml.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log lines (stderr): `human`, or `json` (one object per line, for log shippers).
    #[arg(long, env = "SUITCASE_LOG_FORMAT", default_value = "human", value_parser = ["human", "json"])]
    pub log_format: String,
    /// Directory of the embedded store (created if missing).
    #[arg(long, env = "SUITCASE_DATA", default_value = "suitcase-data")]
    data: PathBuf,
    /// CoAP (UDP) address to listen on; port 0 picks a free one.
    #[arg(long, env = "SUITCASE_COAP", default_value = "[::]:5683")]
    coap: SocketAddr,
    /// coaps:// (CoAP over DTLS 1.2) address to listen on, e.g. [::]:5684; port 0 picks a
    /// free one. Devices need a credential: `suitcase token create NAME --device --psk` or
    /// `--public-key FILE`.
    #[arg(long, env = "SUITCASE_COAPS")]
    coaps: Option<SocketAddr>,
    /// With --coaps: the server's certificate chain (PEM, a P-256 key) for the ECDHE_ECDSA
    /// suites. Default: <data>/keys/coaps-cert.pem, created self-signed on first start.
    #[arg(long, requires = "coaps_key", requires = "coaps")]
    coaps_cert: Option<PathBuf>,
    /// With --coaps-cert: its private key (PEM).
    #[arg(long, requires = "coaps_cert")]
    coaps_key: Option<PathBuf>,
    /// With --coaps: DTLS sessions at most (a quarter of them, at most 256, handshaking).
    #[arg(long, default_value_t = 4096)]
    coaps_max_sessions: usize,
    /// With --coaps: a DTLS session idle this many seconds is closed (the device handshakes
    /// again when it comes back).
    #[arg(long, default_value_t = 600)]
    coaps_idle_secs: u64,
    /// Plain CoAP serves nothing but /.well-known/core: firmware, manifests and reports only
    /// over coaps:// (needs --coaps).
    #[arg(long, env = "SUITCASE_COAP_REQUIRE_DTLS", requires = "coaps")]
    coap_require_dtls: bool,
    /// HTTP address to listen on; port 0 picks a free one.
    #[arg(long, env = "SUITCASE_HTTP", default_value = "[::]:8080")]
    http: SocketAddr,
    /// Signing key (PKCS#8 PEM, Ed25519 or P-256). Default: <data>/keys/signing-key.pem,
    /// created (Ed25519) on first start.
    #[arg(long, env = "SUITCASE_KEY")]
    key: Option<PathBuf>,
    /// CoAP base URL devices use to reach this server, put into manifests
    /// (e.g. coap://[2001:db8::1]). Default: the host the publisher used, with the CoAP port.
    #[arg(long, env = "SUITCASE_COAP_URL")]
    coap_url: Option<String>,
    /// Vendor domain: vendor-id = UUID5(DNS, domain).
    #[arg(long, default_value = "suitcase.local")]
    vendor_domain: String,
    /// Vendor domain of the riot09 manifests the server builds (RIOT's SUIT_VENDOR; a RIOT
    /// device checks vendor-id = UUID5(DNS, this)).
    #[arg(long, default_value = suitcase_http::RIOT_VENDOR_DOMAIN)]
    riot_vendor_domain: String,
    /// Block size when a CoAP request carries no Block2 option (16..1024, a power of two),
    /// unless the publish-id was published with its own (`publish --block-size`). 64: the
    /// largest a Zephyr coap_client built for 64-byte blocks receives whole (its buffer is
    /// 48 + block size bytes); clients that send Block2 get the size they ask for.
    #[arg(long, default_value_t = 64)]
    block_size: u16,
    /// Notify: initial CoAP retransmission timeout (ACK_TIMEOUT) in milliseconds.
    #[arg(long, default_value_t = 2000)]
    notify_ack_timeout_ms: u64,
    /// Notify: retransmissions before a device counts as timed out (MAX_RETRANSMIT).
    #[arg(long, default_value_t = 4)]
    notify_max_retransmit: u32,
    /// Notify: whether the manifest URL sent to a device is followed by one NUL byte: never,
    /// suit-trigger (for the path /suit/trigger, RIOT's contract) or always. Stock RIOT since
    /// 2025.01 reads the URL with strlen() and fails without it ("error getting manifest").
    #[arg(long, default_value = "suit-trigger", value_parser = ["never", "suit-trigger", "always"])]
    trigger_nul: String,
    /// Notify: triggers in flight at once across all requests; further ones wait their turn.
    #[arg(long, default_value_t = suitcase_coap::trigger_client::DEFAULT_MAX_IN_FLIGHT)]
    notify_max_in_flight: usize,
    /// TLS certificate chain (PEM) for HTTPS; needs --tls-key.
    #[arg(long, env = "SUITCASE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for HTTPS; needs --tls-cert.
    #[arg(long, env = "SUITCASE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Base of the HTTP URLs handed to devices (esp32FOTA); default: from the Host header.
    #[arg(long, env = "SUITCASE_HTTP_URL")]
    http_url: Option<String>,
    /// Largest upload accepted, in MiB.
    #[arg(long, default_value_t = 256)]
    max_upload_mib: usize,
    /// Memory for file contents, in MiB: small files are served from it, files larger than
    /// a small share of it from disk, range by range.
    #[arg(long, env = "SUITCASE_CACHE_MIB", default_value_t = 256)]
    cache_mib: u64,
    /// CoAP amplification limit (RFC 9175 §2.4): a peer whose address is not verified gets
    /// no reply larger than this many times its request, but 4.01 with an Echo option to
    /// repeat. 0 (the default) turns it off: RIOT's nanocoap, Zephyr's coap_client before
    /// 3.6 and Zephyr's LwM2M pull cannot answer Echo. See README "Exposure".
    #[arg(long, env = "SUITCASE_AMPLIFICATION_LIMIT", default_value_t = 0)]
    amplification_limit: u8,
    /// Announce this server on the local network with mDNS/DNS-SD as NAME (services
    /// `_coap._udp` and `_http._tcp`, host NAME.local), so devices find it without
    /// configuration. Off by default: an announcement tells everyone on the link where the
    /// firmware is.
    #[arg(long, value_name = "NAME", env = "SUITCASE_MDNS")]
    mdns: Option<String>,
    /// With --mdns, also announce on loopback interfaces (single-host setups, tests).
    #[arg(long, requires = "mdns")]
    mdns_loopback: bool,
    /// A public key (PEM, Ed25519 or P-256) uploaded manifests must be signed with; repeat for
    /// several. Without it, an uploaded manifest is accepted when it decodes and describes the
    /// uploaded or stored files, whoever signed it.
    #[arg(long = "trust", value_name = "KEY.pub")]
    trust: Vec<PathBuf>,
    /// HTTP connections served at once; further peers wait in the listen backlog.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// HTTP: longest wait for a request's headers (also the keep-alive idle time and the TLS
    /// handshake time) and the longest pause inside a request body, in seconds.
    #[arg(long, default_value_t = 30)]
    http_timeout_secs: u64,
    /// HTTP: slowest average upload rate accepted after the first --http-timeout-secs, in KiB/s.
    #[arg(long, default_value_t = 8)]
    min_upload_rate_kib: u64,
    /// The fleet database: sqlite:PATH or postgres://user:password@host/db. Default: SQLite
    /// in <data>/fleet.db.
    #[arg(long, env = "SUITCASE_DATABASE")]
    database: Option<String>,
    /// Shared store for several nodes: file contents in this S3-compatible bucket
    /// (s3://bucket[/prefix]; credentials and region from the AWS_* variables), versions in
    /// the --database PostgreSQL. Every node given the same two serves the same publish-ids.
    #[arg(long, env = "SUITCASE_BLOBS", value_name = "S3_URL")]
    blobs: Option<String>,
    /// The S3 endpoint of --blobs (e.g. http://127.0.0.1:9000 for a local server); default:
    /// AWS, or AWS_ENDPOINT_URL.
    #[arg(long, env = "SUITCASE_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// With --blobs: the device inventory and rollouts somewhere else than --database
    /// (sqlite:PATH keeps them to this node; postgres://… shares them with every node given
    /// the same URL). Default: --database, shared by the nodes.
    #[arg(long, env = "SUITCASE_FLEET_DATABASE", requires = "blobs")]
    fleet_database: Option<String>,
    /// With --blobs: local disk kept for file contents, in MiB (<data>/blob-cache).
    #[arg(long, default_value_t = 4096)]
    blob_cache_mib: u64,
    /// Do not follow CoAP downloads block by block (device progress); the device inventory,
    /// reports and triggers still work.
    #[arg(long)]
    no_tracking: bool,
    /// A device not heard from for this many seconds while its update is under way (after
    /// a download: neither a report nor another slot) turns failed (timeout).
    #[arg(long, default_value_t = 600)]
    install_timeout_secs: u64,
    /// Devices recorded without being added (peers that fetched a manifest) at most.
    #[arg(long, default_value_t = 10_000)]
    max_unregistered: usize,
    /// MQTT broker for rollout triggers: mqtt://[user[:password]@]host[:port] or mqtts://…
    /// (TLS). Without it, rollouts cannot use --trigger mqtt.
    #[arg(long, env = "SUITCASE_MQTT")]
    mqtt: Option<String>,
    /// CA certificate (PEM) the MQTT broker's TLS certificate must chain to (default: the
    /// system's roots).
    #[arg(long)]
    mqtt_ca: Option<PathBuf>,
}

impl ServeArgs {
    /// The store directory.
    #[cfg(test)]
    pub fn data_dir(&self) -> &Path {
        &self.data
    }
}

fn szx_of(block_size: u16) -> anyhow::Result<u8> {
    match block_size {
        16 | 32 | 64 | 128 | 256 | 512 | 1024 => Ok((block_size.trailing_zeros() - 4) as u8),
        other => bail!("--block-size {other}: must be a power of two from 16 to 1024"),
    }
}

/// The coaps server's certificate: the files given, or `<data>/keys/coaps-{cert,key}.pem`,
/// created (self-signed P-256) on first start.
fn load_or_create_coaps_identity(
    data: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> anyhow::Result<suitcase_dtls::Identity> {
    let (cert, key, given) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf(), true),
        _ => (data.join("keys/coaps-cert.pem"), data.join("keys/coaps-key.pem"), false),
    };
    if !given && !cert.exists() {
        let made = suitcase_dtls::Identity::self_signed("suitcase").context("creating the coaps certificate")?;
        if let Some(dir) = key.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        std::io::Write::write_all(
            &mut opts.open(&key).with_context(|| format!("creating {}", key.display()))?,
            &made.key_pem,
        )?;
        std::fs::write(&cert, &made.cert_pem).with_context(|| format!("writing {}", cert.display()))?;
        tracing::info!(cert = %cert.display(), "created a self-signed P-256 certificate for coaps");
    }
    let c = std::fs::read(&cert).with_context(|| format!("reading {}", cert.display()))?;
    let k = zeroize::Zeroizing::new(std::fs::read(&key).with_context(|| format!("reading {}", key.display()))?);
    let id =
        suitcase_dtls::Identity::from_pem(&c, &k).with_context(|| format!("{} / {}", cert.display(), key.display()))?;
    Ok(id)
}

/// Device credentials for DTLS, read from the token file's snapshot at each handshake (a
/// credential created or revoked with `suitcase token` counts from the next handshake).
struct TokenCredentials(Arc<suitcase_auth::Tokens>);

impl suitcase_dtls::Credentials for TokenCredentials {
    fn psk(&self, identity: &[u8]) -> Option<(Arc<str>, zeroize::Zeroizing<Vec<u8>>)> {
        let (name, key) = self.0.snapshot().psk(identity)?;
        Some((Arc::from(name), zeroize::Zeroizing::new(key)))
    }
    fn public_key(&self, spki_sha256: &[u8; 32]) -> Option<Arc<str>> {
        self.0.snapshot().public_key(spki_sha256).map(Arc::from)
    }
}

/// The PSK of a `coaps://` device for triggers: the credential named like the fleet device
/// registered with that address.
struct FleetDtlsKeys {
    fleet: tokio::sync::OnceCell<suitcase_fleet::Fleet>,
    tokens: Arc<suitcase_auth::Tokens>,
}

impl suitcase_coap::trigger_client::DtlsKeys for FleetDtlsKeys {
    fn psk<'a>(
        &'a self,
        device: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<(Vec<u8>, zeroize::Zeroizing<Vec<u8>>)>> + Send + 'a>>
    {
        Box::pin(async move {
            let id = self.fleet.get()?.id_of_coap(device).await.ok().flatten()?;
            let snapshot = self.tokens.snapshot();
            let suitcase_auth::Snapshot::Entries(entries) = snapshot else {
                return None;
            };
            let e = entries.iter().find(|e| e.name == id && e.psk.is_some())?;
            let key = hex::decode(e.psk.as_deref()?).ok()?;
            Some((e.psk_identity.clone()?.into_bytes(), zeroize::Zeroizing::new(key)))
        })
    }
}

/// Load the signing key, or create one at the default place.
fn load_or_create_key(data: &Path, key: Option<&Path>) -> anyhow::Result<SigningKey> {
    if let Some(path) = key {
        let pem = std::fs::read_to_string(path).with_context(|| format!("reading key {}", path.display()))?;
        return SigningKey::from_pkcs8_pem(&pem).with_context(|| format!("key {}", path.display()));
    }
    let path = data.join("keys/signing-key.pem");
    if path.exists() {
        let pem = std::fs::read_to_string(&path).with_context(|| format!("reading key {}", path.display()))?;
        let key = SigningKey::from_pkcs8_pem(&pem).with_context(|| format!("key {}", path.display()))?;
        tracing::info!(key = %path.display(), "signing key loaded");
        return Ok(key);
    }
    let key = SigningKey::generate(Algorithm::Ed25519);
    crate::manifest::write_key_pair(&key, &path)?;
    tracing::info!(key = %path.display(), public = %path.with_extension("pub.pem").display(), "created an Ed25519 signing key");
    Ok(key)
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let szx = szx_of(args.block_size)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(args, szx))?;
    Ok(ExitCode::SUCCESS)
}

/// Blobs no version references (removed versions, failed publishes) are marked every hour
/// and deleted an hour after, by one node of the cluster at a time.
async fn collect_blobs(store: suitcase_store_shared::SharedStore) {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(3600);
    tokio::time::sleep(std::time::Duration::from_secs(300)).await;
    loop {
        match store.collect_garbage(EVERY).await {
            Ok(r) if r.skipped => tracing::debug!("blob collection: another node is at it"),
            Ok(r) => tracing::info!(
                marked = r.marked,
                deleted = r.deleted,
                deleted_bytes = r.deleted_bytes,
                spared = r.spared,
                "blob collection"
            ),
            Err(e) => tracing::warn!(error = %e, "blob collection failed; again in an hour"),
        }
        tokio::time::sleep(EVERY).await;
    }
}

async fn serve(args: ServeArgs, szx: u8) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data).with_context(|| format!("creating {}", args.data.display()))?;
    let mut probe: Option<Arc<dyn suitcase_http::Probe>> = None;
    let store: Arc<dyn Store> = match &args.blobs {
        Some(blobs) => {
            let database = args
                .database
                .as_deref()
                .filter(|d| suitcase_store::is_postgres_url(d))
                .ok_or_else(|| {
                    anyhow::anyhow!("--blobs needs --database postgres://… (where the versions are kept)")
                })?;
            let shared = suitcase_store_shared::SharedStore::open(&suitcase_store_shared::SharedConfig {
                database: database.to_string(),
                blobs: blobs.clone(),
                endpoint: args.s3_endpoint.clone(),
                cache_dir: args.data.join("blob-cache"),
                memory_bytes: args.cache_mib.saturating_mul(1024 * 1024),
                disk_bytes: args.blob_cache_mib.saturating_mul(1024 * 1024),
                credentials: None,
            })
            .await
            .context("opening the shared store")?;
            probe = Some(Arc::new(SharedProbe(shared.clone())));
            tokio::spawn(collect_blobs(shared.clone()));
            Arc::new(shared)
        }
        None => {
            let local = LocalStore::open(&args.data)
                .with_context(|| format!("opening the store in {}", args.data.display()))?;
            local.set_cache_budget(args.cache_mib.saturating_mul(1024 * 1024));
            Arc::new(local)
        }
    };
    let key = load_or_create_key(&args.data, args.key.as_deref())?;
    let trusted_keys = args
        .trust
        .iter()
        .map(|p| {
            let pem = std::fs::read_to_string(p).with_context(|| format!("reading --trust {}", p.display()))?;
            suitcase_suit::VerifyingKey::from_any_pem(&pem).with_context(|| format!("--trust {}", p.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let cancel = CancellationToken::new();
    let coap_socket = driver::bind(args.coap).with_context(|| format!("binding CoAP to {}", args.coap))?;
    let coap_addr = coap_socket.local_addr()?;
    let http_listener =
        std::net::TcpListener::bind(args.http).with_context(|| format!("binding HTTP to {}", args.http))?;
    http_listener.set_nonblocking(true)?;
    let http_addr = http_listener.local_addr()?;
    raise_fd_limit(args.max_connections);
    let tokens = Arc::new(suitcase_auth::Tokens::new(args.data.join("tokens.json")));
    let local_token = args.data.join(suitcase_auth::LOCAL_TOKEN_FILE);
    match tokens.create_local_publisher(&local_token) {
        Ok(Some(name)) => tracing::info!(
            token_file = %local_token.display(),
            "no publisher token existed: created publisher token {name:?}; the CLI on this host reads it from the token file"
        ),
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "could not create the local publisher token"),
    }
    if local_token.exists() {
        tracing::info!(token_file = %local_token.display(), "local publisher token file");
    }
    tokens
        .watch(std::time::Duration::from_millis(500))
        .context("starting the token file watcher")?;
    // On PostgreSQL, the tokens every node honours (`suitcase token … --database`) too.
    if let Some(url) = args.database.as_deref().filter(|u| suitcase_store::is_postgres_url(u)) {
        let table = suitcase_store_shared::tokens::SharedTokens::connect(url)
            .await
            .with_context(|| format!("the token table in {}", suitcase_store_shared::redact(url)))?;
        let entries = table.list().await.context("reading the shared tokens")?;
        tracing::info!(
            entries = entries.len(),
            "tokens of the shared table are honoured beside the token file"
        );
        tokens.set_shared(entries);
        tokio::spawn(table.follow(Arc::downgrade(&tokens)));
    }

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut echo_secret = [0u8; 32];
    getrandom::fill(&mut echo_secret).map_err(|e| anyhow::anyhow!("no randomness for the Echo secret: {e}"))?;
    let config = suitcase_coap::Config {
        default_szx: szx,
        amplification_limit: args.amplification_limit,
        echo_secret,
        max_block_events: if args.no_tracking { 0 } else { 2 * driver::BLOCK_BATCH },
        ..Default::default()
    };
    let dtls_keys = Arc::new(FleetDtlsKeys {
        fleet: tokio::sync::OnceCell::new(),
        tokens: tokens.clone(),
    });
    let trigger_client = Arc::new(
        suitcase_coap::trigger_client::TriggerClient::new(
            suitcase_coap::trigger::NotifyConfig {
                // Clamped: retransmission back-off doubles it four times (no overflow).
                ack_timeout: std::time::Duration::from_millis(args.notify_ack_timeout_ms.clamp(1, 600_000)),
                max_retransmit: args.notify_max_retransmit,
                trigger_nul: args.trigger_nul.parse().map_err(anyhow::Error::msg)?,
                ..Default::default()
            },
            args.notify_max_in_flight,
        )
        .with_dtls_keys(dtls_keys.clone()),
    );
    let mqtt = match &args.mqtt {
        Some(url) => {
            let m = crate::mqtt::Mqtt::start(&crate::mqtt::MqttConfig {
                url: url.clone(),
                ca: args.mqtt_ca.clone(),
                client_id: None,
            })
            .context("--mqtt")?;
            tracing::info!(broker = %suitcase_fleet::redact(url), "MQTT rollout triggers through this broker");
            Some(m)
        }
        None => None,
    };
    // On PostgreSQL the fleet is shared: whichever node holds its lease runs the tracker,
    // the others hand it what they hear (suitcase_fleet::cluster).
    let fleet_database = args.fleet_database.as_ref().or(args.database.as_ref());
    if fleet_database.is_some() && args.data.join("fleet.db").exists() {
        tracing::warn!(
            old = %args.data.join("fleet.db").display(),
            "this node's own fleet database is not used: the fleet is in --database, shared by the nodes \
             (with --blobs, --fleet-database sqlite:PATH keeps a node's own)"
        );
    }
    let database = match fleet_database {
        Some(url) => url.clone(),
        None => format!("sqlite:{}?mode=rwc", args.data.join("fleet.db").display()),
    };
    let fleet = suitcase_fleet::Fleet::open(
        &database,
        store.clone(),
        suitcase_fleet::Config {
            install_timeout: std::time::Duration::from_secs(args.install_timeout_secs.clamp(1, 30 * 86_400)),
            max_unregistered: args.max_unregistered,
            ..Default::default()
        },
        Some(Arc::new(crate::fleet::RiotSlots(trigger_client.clone()))),
        Some(Arc::new(crate::rollout_triggers::RolloutTriggers {
            coap: trigger_client.clone(),
            mqtt: mqtt.map(|m| Arc::new(m) as Arc<dyn crate::rollout_triggers::Publish>),
        })),
    )
    .await
    .with_context(|| format!("opening the fleet database {}", suitcase_fleet::redact(&database)))?;
    let _ = dtls_keys.fleet.set(fleet.clone());
    let resources = || {
        StoreResources::new(store.clone())
            .with_reports()
            .with_gate(fleet.gates())
    };
    let coap = Server::new(
        config.clone(),
        if args.coap_require_dtls {
            resources().discovery_only()
        } else {
            resources()
        },
        std::time::Instant::now(),
        seed,
    );
    tracing::info!(database = %suitcase_fleet::redact(&database), tracking = !args.no_tracking, "fleet database open");
    // Completed CoAP downloads, for notify's watch (bounded; lagging listeners lose the oldest).
    let (transfers, _) = tokio::sync::broadcast::channel(1024);
    let (app_requests, app_requests_rx) = tokio::sync::mpsc::channel(256);
    let (app_replies, app_replies_rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(crate::fleet::coap_reports(fleet.clone(), app_requests_rx, app_replies));
    let coap_metrics = Arc::new(driver::Metrics::default());
    let coaps_metrics = Arc::new(driver::Metrics::default());
    let dtls_stats: suitcase_coap::dtls_driver::DtlsStats = Arc::default();
    let hooks = driver::Hooks {
        metrics: Some(coap_metrics.clone()),
        transfers: Some(transfers.clone()),
        blocks: (!args.no_tracking).then(|| fleet.block_sink()),
        app: Some(driver::AppChannel {
            requests: app_requests,
            replies: app_replies_rx,
        }),
    };
    let coap_thread =
        driver::spawn_thread(coap_socket, coap, cancel.clone(), hooks).context("starting the CoAP thread")?;
    let coaps = match args.coaps {
        Some(addr) => {
            let identity =
                load_or_create_coaps_identity(&args.data, args.coaps_cert.as_deref(), args.coaps_key.as_deref())?;
            let socket = driver::bind(addr).with_context(|| format!("binding coaps to {addr}"))?;
            let local = socket.local_addr()?;
            let mut dtls = suitcase_dtls::ServerConfig::new(Arc::new(TokenCredentials(tokens.clone())));
            dtls.certificate = Some(identity.clone());
            dtls.max_sessions = args.coaps_max_sessions.max(1);
            dtls.max_handshakes = (dtls.max_sessions / 4).clamp(1, 256);
            dtls.idle_timeout = std::time::Duration::from_secs(args.coaps_idle_secs.clamp(1, 86_400));
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness for the DTLS cookies: {e}"))?;
            let endpoint =
                suitcase_dtls::Endpoint::new(dtls, secret, std::time::Instant::now()).context("setting up DTLS")?;
            // Amplification needs no Echo here: the cookie proved the address.
            let server = Server::new(
                suitcase_coap::Config {
                    amplification_limit: 0,
                    ..config
                },
                resources(),
                std::time::Instant::now(),
                seed ^ 0x5eed,
            );
            let (requests, requests_rx) = tokio::sync::mpsc::channel(256);
            let (replies, replies_rx) = tokio::sync::mpsc::channel(256);
            tokio::spawn(crate::fleet::coap_reports(fleet.clone(), requests_rx, replies));
            let hooks = driver::Hooks {
                metrics: Some(coaps_metrics.clone()),
                transfers: Some(transfers.clone()),
                blocks: (!args.no_tracking).then(|| fleet.block_sink()),
                app: Some(driver::AppChannel {
                    requests,
                    replies: replies_rx,
                }),
            };
            let on_session = {
                let fleet = fleet.clone();
                Box::new(move |peer, device: &str| fleet.secured(device.to_string(), peer))
                    as suitcase_coap::dtls_driver::OnSession
            };
            let thread = suitcase_coap::dtls_driver::spawn_thread(
                socket,
                server,
                endpoint,
                cancel.clone(),
                hooks,
                Some(on_session),
                Some(dtls_stats.clone()),
            )
            .context("starting the coaps thread")?;
            tracing::info!(
                server_key_sha256 = %identity.spki_sha256().map(hex::encode).unwrap_or_default(),
                require_dtls = args.coap_require_dtls,
                "listening for coaps (DTLS 1.2) on {local}"
            );
            Some(thread)
        }
        None => None,
    };
    let health = Arc::new(suitcase_http::Health {
        coap_running: Some(std::sync::atomic::AtomicBool::new(true)),
        data_dir: Some(args.data.clone()),
        store: probe,
    });

    let coaps_on = coaps.is_some();
    let state = AppState {
        store,
        signer: Arc::new(
            Signer::new(key, args.vendor_domain.clone()).with_riot_vendor_domain(args.riot_vendor_domain.clone()),
        ),
        config: Arc::new(suitcase_http::Config {
            coap_base_url: args.coap_url.clone(),
            coap_port: coap_addr.port(),
            max_body_bytes: args.max_upload_mib.saturating_mul(1024 * 1024),
            public_http_url: args.http_url.clone(),
            tls: args.tls_cert.is_some(),
            trusted_keys,
        }),
        tokens: tokens.clone(),
        notifier: Some(Arc::new(crate::notify::CoapNotifier {
            client: trigger_client,
            transfers: transfers.clone(),
        })),
        fleet: Some(fleet.clone()),
        health: health.clone(),
        metrics: Arc::new(suitcase_http::metrics::Metrics::with_extra(Box::new(move |r| {
            crate::fleet::coap_metrics(&coap_metrics, r);
            if coaps_on {
                crate::fleet::coaps_metrics(&coaps_metrics, &dtls_stats, r);
            }
        }))),
    };
    tracing::info!("listening for CoAP on {coap_addr}");
    // Kept until the server stops; dropping it withdraws the announcement.
    let _mdns = match &args.mdns {
        Some(name) => Some(announce(name, coap_addr.port(), http_addr.port(), args.mdns_loopback)?),
        None => None,
    };
    let scheme = if args.tls_cert.is_some() { "HTTPS" } else { "HTTP" };
    tracing::info!("listening for {scheme} on {http_addr}");
    if args.coap_url.is_none() {
        tracing::info!(
            "manifest URLs use the host publishers connect to; set --coap-url if devices reach this server elsewhere"
        );
    }

    let shutdown = cancel.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    let limits = suitcase_http::Limits {
        max_connections: args.max_connections.max(1),
        timeout: std::time::Duration::from_secs(args.http_timeout_secs.clamp(1, 86_400)),
        min_body_rate: args.min_upload_rate_kib.saturating_mul(1024),
    };
    let http = {
        let cancel = cancel.clone();
        async move {
            match (&args.tls_cert, &args.tls_key) {
                (Some(cert), Some(key)) => {
                    suitcase_http::serve_tls(http_listener, state, limits, cert, key, cancel.cancelled_owned())
                        .await
                        .context("HTTPS server")
                }
                _ => suitcase_http::serve(
                    tokio::net::TcpListener::from_std(http_listener)?,
                    state,
                    limits,
                    cancel.cancelled_owned(),
                )
                .await
                .context("HTTP server"),
            }
        }
    };
    let result = supervise(http, coap_thread, cancel.clone(), health).await;
    // The coaps thread stops with the rest (it cancels everything when it fails on its own).
    let result = match coaps {
        Some(t) => {
            let joined = tokio::task::spawn_blocking(move || t.join()).await;
            match (result, joined) {
                (Err(e), _) => Err(e),
                (Ok(()), Ok(Ok(Ok(())))) => Ok(()),
                (Ok(()), Ok(Ok(Err(e)))) => Err(anyhow::Error::new(e).context("coaps server")),
                (Ok(()), _) => Err(anyhow::anyhow!("the coaps thread panicked")),
            }
        }
        None => result,
    };
    // What the tracker holds (progress since its last write) goes to the database first.
    if let Err(e) = fleet.shutdown().await {
        tracing::warn!(error = %e, "the fleet's last changes could not be written");
    }
    result
}

/// Run the HTTP server and watch the CoAP thread: whichever stops first stops the other. A
/// CoAP thread that ends on its own (an error or a panic) ends the process with an error,
/// so HTTP is never served on silently without CoAP.
async fn supervise(
    http: impl std::future::Future<Output = anyhow::Result<()>>,
    coap_thread: std::thread::JoinHandle<std::io::Result<()>>,
    cancel: CancellationToken,
    health: Arc<suitcase_http::Health>,
) -> anyhow::Result<()> {
    // The join blocks: wait for it on a blocking thread, not on a runtime worker.
    let mut coap = tokio::task::spawn_blocking(move || {
        let joined = coap_thread.join();
        if let Some(alive) = &health.coap_running {
            alive.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        joined
    });
    let coap_result = |joined: Result<std::thread::Result<std::io::Result<()>>, tokio::task::JoinError>| match joined {
        Ok(Ok(r)) => r.context("CoAP server"),
        Ok(Err(_)) => Err(anyhow::anyhow!("the CoAP thread panicked")),
        Err(e) => Err(anyhow::anyhow!("waiting for the CoAP thread: {e}")),
    };
    tokio::pin!(http);
    tokio::select! {
        r = &mut http => {
            cancel.cancel();
            let coap = coap_result(coap.await);
            r?;
            coap
        }
        joined = &mut coap => {
            let stopping = cancel.is_cancelled();
            cancel.cancel();
            let r = coap_result(joined);
            if stopping {
                r?;
                return http.await;
            }
            let why = match r {
                Err(e) => format!("{e:#}"),
                Ok(()) => "it stopped".to_string(),
            };
            tracing::error!(error = %why, "the CoAP server failed; stopping HTTP too");
            bail!("the CoAP server failed: {why}")
        }
    }
}

/// Raise the soft limit on open files to the hard limit, and warn when the HTTP connection
/// cap does not fit under it (a connection is one descriptor; the store, the CoAP and notify
/// sockets need a few more).
fn raise_fd_limit(max_connections: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let soft = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    if (max_connections as u64).saturating_add(64) > soft {
        tracing::warn!(
            open_files = soft,
            max_connections,
            "--max-connections is close to or above the open-file limit; lower it or raise the limit"
        );
    }
}

/// An mDNS/DNS-SD announcement; withdrawn (goodbye packets) when dropped.
struct Announcement(mdns_sd::ServiceDaemon, Vec<String>);

impl Drop for Announcement {
    fn drop(&mut self) {
        for name in &self.1 {
            let _ = self.0.unregister(name);
        }
        let _ = self.0.shutdown();
    }
}

/// Announce `_coap._udp` and `_http._tcp` as `name` on host `name.local`, with the addresses
/// of every interface (loopback too with `loopback`).
fn announce(name: &str, coap_port: u16, http_port: u16, loopback: bool) -> anyhow::Result<Announcement> {
    if name.is_empty() || name.len() > 63 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        bail!("--mdns {name:?}: a host label of 1-63 letters, digits and '-'");
    }
    let daemon = mdns_sd::ServiceDaemon::new().context("starting mDNS")?;
    if loopback {
        daemon
            .enable_interface(vec![mdns_sd::IfKind::LoopbackV4, mdns_sd::IfKind::LoopbackV6])
            .context("mDNS on loopback")?;
    }
    let host = format!("{name}.local.");
    let mut names = Vec::new();
    for (ty, port) in [("_coap._udp.local.", coap_port), ("_http._tcp.local.", http_port)] {
        let info = mdns_sd::ServiceInfo::new(ty, name, &host, "", port, &[("path", "/")][..])
            .context("mDNS service")?
            .enable_addr_auto();
        names.push(info.get_fullname().to_string());
        daemon.register(info).context("announcing over mDNS")?;
    }
    tracing::info!(name, host = %host, coap_port, http_port, "announced over mDNS/DNS-SD (_coap._udp, _http._tcp)");
    Ok(Announcement(daemon, names))
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// `/readyz`'s check of a shared store: its database and object store answer.
struct SharedProbe(suitcase_store_shared::SharedStore);

impl std::fmt::Debug for SharedProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedProbe")
    }
}

impl suitcase_http::Probe for SharedProbe {
    fn check(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move { self.0.ping().await.map_err(|e| e.to_string()) })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// HTTP that runs until cancelled, like the real server.
    fn http_until(cancel: &CancellationToken) -> impl std::future::Future<Output = anyhow::Result<()>> {
        let c = cancel.clone();
        async move {
            c.cancelled().await;
            Ok(())
        }
    }

    #[test]
    fn a_failing_or_panicking_coap_thread_stops_the_server_with_an_error() {
        let rt = runtime();
        let cancel = CancellationToken::new();
        let t = std::thread::spawn(|| Err(std::io::Error::other("socket gone")));
        let r = rt.block_on(supervise(http_until(&cancel), t, cancel.clone(), Default::default()));
        assert!(r.unwrap_err().to_string().contains("socket gone"));
        assert!(cancel.is_cancelled(), "HTTP was told to stop");

        let cancel = CancellationToken::new();
        let t = std::thread::spawn(|| -> std::io::Result<()> { panic!("bug") });
        let r = rt.block_on(supervise(http_until(&cancel), t, cancel.clone(), Default::default()));
        assert!(r.unwrap_err().to_string().contains("panicked"));
        assert!(cancel.is_cancelled());
    }

    #[test]
    fn a_shutdown_stops_both_cleanly() {
        let rt = runtime();
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let t = std::thread::spawn(move || {
            while !c.is_cancelled() {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Ok(())
        });
        let c = cancel.clone();
        let http = async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            c.cancel();
            Ok(())
        };
        rt.block_on(supervise(http, t, cancel, Default::default())).unwrap();
    }
}
