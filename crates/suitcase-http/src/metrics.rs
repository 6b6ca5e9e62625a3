//! `GET /metrics`: Prometheus text (prometheus-client). Counters that only the HTTP side
//! sees are kept here; everything else (store, fleet, and whatever the binary adds, the
//! CoAP server's counters) is read at scrape time into a fresh registry, so nothing on a
//! serving path does more than an atomic add or a short lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::{ApiError, AppState};

/// Adds metrics of other parts of the process (the binary: CoAP) at scrape time.
pub type Extra = Box<dyn Fn(&mut Registry) + Send + Sync>;

/// The HTTP side's counters.
#[derive(Default)]
pub struct Metrics {
    /// (route template, method, status) → requests.
    requests: Mutex<HashMap<(String, &'static str, u16), u64>>,
    /// Trigger results (`ok`, `error`, `timeout`, …) → count.
    triggers: Mutex<HashMap<String, u64>>,
    uploads: AtomicU64,
    upload_bytes: AtomicU64,
    /// More metrics, added at scrape time.
    pub extra: Option<Extra>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Counters with `extra` added at scrape time.
    pub fn with_extra(extra: Extra) -> Self {
        Metrics {
            extra: Some(extra),
            ..Default::default()
        }
    }

    pub(crate) fn trigger(&self, result: &str) {
        *self.triggers.lock().entry(result.to_string()).or_default() += 1;
    }

    pub(crate) fn upload(&self, bytes: u64) {
        self.uploads.fetch_add(1, Ordering::Relaxed);
        self.upload_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        _ => "other",
    }
}

/// Count every request by route template (not the path: the label set stays bounded),
/// method and status.
pub(crate) async fn count_requests(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let method = method_label(req.method());
    let response = next.run(req).await;
    *st.metrics
        .requests
        .lock()
        .entry((route, method, response.status().as_u16()))
        .or_default() += 1;
    response
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// A counter with `v`, registered as `name`.
pub fn counter(r: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    r.register(name, help, c);
}

/// A gauge with `v`, registered as `name`.
pub fn gauge(r: &mut Registry, name: &str, help: &str, v: i64) {
    let g: Gauge = Gauge::default();
    g.set(v);
    r.register(name, help, g);
}

pub(crate) async fn scrape(State(st): State<AppState>) -> Result<Response, ApiError> {
    let mut r = Registry::with_prefix("suitcase");
    let requests = Family::<RequestLabels, Counter>::default();
    for ((route, method, status), n) in st.metrics.requests.lock().iter() {
        requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                method: (*method).to_string(),
                status: status.to_string(),
            })
            .inc_by(*n);
    }
    r.register("http_requests", "HTTP requests by route, method and status", requests);
    let triggers = Family::<ResultLabel, Counter>::default();
    for (result, n) in st.metrics.triggers.lock().iter() {
        triggers
            .get_or_create(&ResultLabel { result: result.clone() })
            .inc_by(*n);
    }
    r.register("triggers", "Triggers sent to devices, by result", triggers);
    counter(
        &mut r,
        "uploads",
        "Versions published over HTTP",
        st.metrics.uploads.load(Ordering::Relaxed),
    );
    counter(
        &mut r,
        "upload_bytes",
        "Bytes of the files published over HTTP",
        st.metrics.upload_bytes.load(Ordering::Relaxed),
    );
    // The store: what it holds and its content cache.
    let store = st.store.clone();
    let (ids, versions, bytes) = tokio::task::spawn_blocking(move || {
        let ids = store.publish_ids();
        let mut versions = 0u64;
        let mut bytes = 0u64;
        for id in &ids {
            for v in store.versions(id) {
                versions += 1;
                bytes += v.files.iter().map(|f| f.size).sum::<u64>() + v.manifest.as_ref().map_or(0, |m| m.file.size);
            }
        }
        (ids.len() as u64, versions, bytes)
    })
    .await
    .map_err(ApiError::internal)?;
    gauge(&mut r, "store_publish_ids", "Publish-ids in the store", ids as i64);
    gauge(&mut r, "store_versions", "Versions served", versions as i64);
    gauge(
        &mut r,
        "store_bytes",
        "Bytes of the versions served (files and manifests)",
        bytes as i64,
    );
    let cache = st.store.cache_stats();
    counter(
        &mut r,
        "store_cache_hits",
        "Content cache lookups answered from memory",
        cache.hits,
    );
    counter(
        &mut r,
        "store_cache_misses",
        "Content cache lookups that read the disk",
        cache.misses,
    );
    gauge(
        &mut r,
        "store_cache_bytes",
        "Bytes of file content held in memory",
        cache.bytes as i64,
    );
    if let Some(fleet) = &st.fleet {
        let devices = Family::<StateLabel, Gauge>::default();
        for state in suitcase_fleet::State::ALL {
            devices
                .get_or_create(&StateLabel {
                    state: state.as_str().into(),
                })
                .set(0);
        }
        for (state, n) in fleet.counts().await? {
            devices.get_or_create(&StateLabel { state }).set(n);
        }
        r.register("fleet_devices", "Devices by the state of their update", devices);
        let c = fleet.counters();
        counter(
            &mut r,
            "fleet_block_events",
            "Block events the fleet tracker received",
            c.blocks,
        );
        counter(
            &mut r,
            "fleet_block_events_dropped",
            "Block events dropped (tracker behind)",
            c.blocks_dropped,
        );
        counter(
            &mut r,
            "fleet_events_dropped",
            "HTTP and trigger events dropped (tracker behind)",
            c.events_dropped,
        );
        counter(
            &mut r,
            "fleet_rows_written",
            "Device rows written to the database",
            c.rows_written,
        );
        counter(
            &mut r,
            "fleet_transactions",
            "Write transactions of the fleet tracker",
            c.transactions,
        );
        counter(
            &mut r,
            "fleet_unrecorded_peers",
            "Peers not recorded (unregistered limit)",
            c.unrecorded,
        );
        counter(
            &mut r,
            "fleet_forwarded",
            "Requests and event batches handed to the fleet's leader (PostgreSQL)",
            c.forwarded,
        );
        let leading = Gauge::<i64>::default();
        leading.set(i64::from(c.leading));
        r.register(
            "fleet_leading",
            "1 when this node runs the fleet tracker (holds the lease on PostgreSQL)",
            leading,
        );
    }
    if let Some(extra) = &st.metrics.extra {
        extra(&mut r);
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &r).map_err(ApiError::internal)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response())
}
