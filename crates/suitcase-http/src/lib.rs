//! The HTTP side of suitcase: publishing (multipart, compatible with ota-server's
//! `otaclient`), the CoAP URL lookup RIOT's build uses, and a JSON listing.
//!
//! [`router`] returns an axum `Router` that tests drive with `oneshot`; the binary serves it.

pub mod auth;
mod devices;
mod download;
mod error;
pub mod esp;
pub mod metrics;
mod notify;
mod publish;
mod rollouts;
mod server;
mod ui;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap};
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Serialize;
use suitcase_store::{Store, Version};

pub use error::ApiError;
pub use notify::{DeviceNotice, Notifier, NotifyOptions, TriggerNul};
pub use server::{BodyTimeout, GuardedBody, Limits};
pub use suitcase_policy::{BuildRequest, Signer, RIOT_MAX_MANIFEST, RIOT_MAX_URL, RIOT_VENDOR_DOMAIN};

/// Settings of the HTTP API.
#[derive(Clone, Debug)]
pub struct Config {
    /// Base of the CoAP URLs put into manifests and returned by `/coap/url`, e.g.
    /// `coap://[2001:db8::1]:5683`. `None`: derived from the Host the publisher used.
    pub coap_base_url: Option<String>,
    /// The CoAP port, for deriving URLs from the Host header.
    pub coap_port: u16,
    /// Largest request body accepted (uploads).
    pub max_body_bytes: usize,
    /// Base of HTTP URLs handed to devices (esp32FOTA manifests); `None`: from the Host header.
    pub public_http_url: Option<String>,
    /// Whether HTTP is served over TLS (for derived URLs).
    pub tls: bool,
    /// Keys an uploaded manifest must be signed with (one of them); empty: any manifest that
    /// decodes and matches its files is accepted.
    pub trusted_keys: Vec<suitcase_suit::VerifyingKey>,
}

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Builds and signs manifests.
    pub signer: Arc<Signer>,
    /// Settings.
    pub config: Arc<Config>,
    /// Sends triggers to devices; `None` answers `/notify` with 503.
    pub notifier: Option<Arc<dyn Notifier>>,
    /// Publisher and device tokens.
    pub tokens: Arc<auth::Tokens>,
    /// The device inventory; `None` (tracking off) answers the device API with 503.
    pub fleet: Option<suitcase_fleet::Fleet>,
    /// What `/readyz` checks besides the store and the fleet.
    pub health: Arc<Health>,
    /// Counters for `/metrics`.
    pub metrics: Arc<metrics::Metrics>,
}

/// What `/readyz` checks besides the store and the fleet database.
#[derive(Debug, Default)]
pub struct Health {
    /// The CoAP server thread runs (`None`: this process serves no CoAP).
    pub coap_running: Option<std::sync::atomic::AtomicBool>,
    /// The store's directory, checked readable.
    pub data_dir: Option<std::path::PathBuf>,
    /// The services a shared store depends on (its database and object store).
    pub store: Option<Arc<dyn Probe>>,
}

/// A dependency `/readyz` asks whether it answers.
pub trait Probe: Send + Sync + std::fmt::Debug {
    /// `Ok` when it answers; else what failed (logged, not sent).
    fn check(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>>;
}

impl AppState {
    /// The CoAP base URL for a request that came with `headers`.
    /// What a rollout's gate lets this requester see of `publish_id` (identity: what the
    /// device calls itself; else its device token's name, else its address decides).
    pub(crate) fn allowed(
        &self,
        publish_id: &str,
        peer: &download::Peer,
        identity: Option<&str>,
    ) -> suitcase_store::Allowed {
        use suitcase_store::Gate as _;
        let Some(fleet) = &self.fleet else {
            return suitcase_store::Allowed::Newest;
        };
        let gates = fleet.gates();
        if !gates.active() {
            return suitcase_store::Allowed::Newest;
        }
        let who = suitcase_store::Requester {
            addr: peer.addr,
            identity: identity.or(peer.token.as_deref()),
        };
        gates.allowed(publish_id, &who)
    }

    pub(crate) fn coap_base(&self, headers: &HeaderMap) -> String {
        if let Some(b) = &self.config.coap_base_url {
            return b.trim_end_matches('/').to_string();
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(host_only)
            .unwrap_or_else(|| "[::1]".to_string());
        format!("coap://{host}:{}", self.config.coap_port)
    }
}

/// The host part of a Host header value (`a:8080` → `a`, `[::1]:8080` → `[::1]`), if sane.
fn host_only(h: &str) -> Option<String> {
    let host = if let Some(rest) = h.strip_prefix('[') {
        format!("[{}]", rest.split(']').next()?)
    } else {
        h.split(':').next()?.to_string()
    };
    let ok = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]%".contains(&b));
    ok.then_some(host)
}

/// The router.
pub fn router(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    let mutations = Router::new()
        .route("/publish", post(publish::publish))
        .route("/notify", post(notify::notify))
        .route("/remove", post(notify::remove))
        .route("/images", put(esp::put_image))
        .route("/api/v1/devices", get(devices::list).post(devices::add))
        .route("/api/v1/devices/{id}", get(devices::get_one).delete(devices::remove))
        .route("/api/v1/fleet", get(devices::summary))
        .route("/api/v1/rollouts", get(rollouts::list).post(rollouts::create))
        .route("/api/v1/rollouts/{id}", get(rollouts::get_one))
        .route("/api/v1/rollouts/{id}/devices", get(rollouts::devices))
        .route("/api/v1/rollouts/{id}/{action}", post(rollouts::control))
        .route("/api/v1/whoami", get(whoami))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::publisher));
    let downloads = Router::new()
        .route("/firmware/{*name}", get(esp::firmware))
        .route("/images/images.json", get(esp::images_json))
        .route("/images/{*path}", get(esp::image_file))
        .route("/files/{*path}", get(download::files))
        .route("/api/v1/devices/{id}/report", post(devices::report))
        .route("/metrics", get(metrics::scrape))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::device));
    Router::new()
        .merge(mutations)
        .merge(downloads)
        .route("/", get(ui::index))
        .route("/ui/section/{name}", get(ui::section))
        .route("/ui/{asset}", get(ui::asset))
        .route("/coap/url/{*publish_id}", get(coap_url))
        .route("/api/v1/publish-ids", get(list_ids))
        .route("/api/v1/publish-ids/{*publish_id}", get(list_versions))
        .route("/api/v1/public-key", get(public_key))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .layer(middleware::from_fn_with_state(state.clone(), metrics::count_requests))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serve the API on an already bound listener until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    server::run(listener, router(state), limits, None, shutdown).await
}

/// Serve the API over TLS (rustls) on an already bound listener until `shutdown` completes.
pub async fn serve_tls(
    listener: std::net::TcpListener,
    state: AppState,
    limits: Limits,
    cert_pem: &std::path::Path,
    key_pem: &std::path::Path,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
    let certs = CertificateDer::pem_file_iter(cert_pem)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(format!("certificate {}: {e}", cert_pem.display())))?;
    if certs.is_empty() {
        return Err(bad(format!("no certificate in {}", cert_pem.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key_pem).map_err(|e| bad(format!("key {}: {e}", key_pem.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad(format!("TLS certificate/key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    server::run(listener, router(state), limits, Some(acceptor), shutdown).await
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    checks: std::collections::BTreeMap<&'static str, String>,
}

/// Whether `ping` answers within 2 s. The reason goes to the log only: a public endpoint
/// names no hosts or errors.
async fn answers<E: std::fmt::Display>(
    what: &str,
    ping: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), String> {
    match tokio::time::timeout(std::time::Duration::from_secs(2), ping).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: {what} fails");
            Err("unreachable".to_string())
        }
        Err(_) => Err("no answer within 2 s".to_string()),
    }
}

/// `GET /readyz`: 200 when the store's directory is readable, the CoAP thread runs and the
/// fleet database answers (within 2 s); else 503 naming what failed.
async fn readyz(State(st): State<AppState>) -> impl IntoResponse {
    let mut checks = std::collections::BTreeMap::new();
    let mut ready = true;
    let mut check = |name: &'static str, r: Result<(), String>| {
        ready &= r.is_ok();
        checks.insert(name, r.err().unwrap_or_else(|| "ok".into()));
    };
    if let Some(dir) = st.health.data_dir.clone() {
        let r = tokio::task::spawn_blocking(move || std::fs::read_dir(&dir).map(|_| ()))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        if let Err(e) = &r {
            tracing::warn!(error = %e, "readiness: the store's directory cannot be read");
        }
        check("store", r.map_err(|_| "unreadable".to_string()));
    }
    if let Some(alive) = &st.health.coap_running {
        let running = alive.load(std::sync::atomic::Ordering::Relaxed);
        check(
            "coap",
            if running {
                Ok(())
            } else {
                Err("the CoAP thread has stopped".into())
            },
        );
    }
    if let Some(probe) = &st.health.store {
        check("shared-store", answers("the shared store", probe.check()).await);
    }
    if let Some(fleet) = &st.fleet {
        check("database", answers("the fleet database", fleet.ping()).await);
    }
    let status = if ready {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(Readiness { ready, checks }))
}

/// `GET /api/v1/whoami`: the name of the publisher token shown (the page's sign-in check).
async fn whoami(name: Option<axum::Extension<auth::PublisherName>>) -> Result<Json<serde_json::Value>, ApiError> {
    let axum::Extension(auth::PublisherName(name)) =
        name.ok_or_else(|| ApiError::internal("whoami reached without the publisher guard"))?;
    Ok(Json(serde_json::json!({ "name": name, "role": "publisher" })))
}

async fn coap_url(State(st): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Result<String, ApiError> {
    suitcase_store::validate_publish_id(&id)?;
    Ok(format!("{}/{id}", st.coap_base(&headers)))
}

async fn public_key(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let pem = st.signer.public_key_pem().map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, "application/x-pem-file")], pem))
}

#[derive(Serialize)]
struct IdSummary {
    publish_id: String,
    latest: Option<u64>,
    versions: usize,
}

async fn list_ids(State(st): State<AppState>) -> Json<Vec<IdSummary>> {
    let out = st
        .store
        .publish_ids()
        .into_iter()
        .map(|id| {
            let versions = st.store.versions(&id);
            IdSummary {
                latest: versions.last().map(|v| v.seq),
                versions: versions.len(),
                publish_id: id,
            }
        })
        .collect();
    Json(out)
}

/// JSON view of a version.
#[derive(Serialize)]
pub struct VersionView {
    publish_id: String,
    version: u64,
    created_at: u64,
    semver: Option<String>,
    sequence_number: Option<u64>,
    manifest: Option<FileView>,
    files: Vec<FileView>,
    /// CoAP block size for devices that send no Block2, when chosen at publish time.
    #[serde(skip_serializing_if = "Option::is_none")]
    block_size: Option<u16>,
}

#[derive(Serialize)]
struct FileView {
    name: String,
    sha256: String,
    size: u64,
    url: String,
}

impl VersionView {
    pub(crate) fn new(v: &Version, coap_base: &str) -> Self {
        let url = |name: &str| {
            format!(
                "{coap_base}/{}",
                suitcase_store::paths::version_file_path(&v.publish_id, v.seq, name)
            )
        };
        let file = |f: &suitcase_store::FileEntry| FileView {
            name: f.name.clone(),
            sha256: f.sha256.to_hex(),
            size: f.size,
            url: url(&f.name),
        };
        VersionView {
            publish_id: v.publish_id.clone(),
            version: v.seq,
            created_at: v.created_at,
            semver: v.semver.as_ref().map(|s| s.to_string()),
            sequence_number: v.manifest.as_ref().and_then(|m| m.sequence_number),
            manifest: v.manifest.as_ref().map(|m| FileView {
                url: format!("{coap_base}/{}/manifest", v.publish_id),
                ..file(&m.file)
            }),
            files: v.files.iter().map(file).collect(),
            block_size: v.block_size,
        }
    }
}

async fn list_versions(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Vec<VersionView>>, ApiError> {
    suitcase_store::validate_publish_id(&id)?;
    let versions = st.store.versions(&id);
    if versions.is_empty() {
        return Err(ApiError::not_found(format!("no publish-id {id:?}")));
    }
    let base = st.coap_base(&headers);
    Ok(Json(
        versions.iter().rev().map(|v| VersionView::new(v, &base)).collect(),
    ))
}

#[cfg(test)]
mod tests;
