//! The device half of suitcase: an inventory of devices and the state of their updates,
//! kept in SQLite (the default, a file in the data directory) or PostgreSQL.
//!
//! One task, the tracker, owns every change: it holds the devices in memory, applies what
//! the servers saw (compact block events from the CoAP thread through a bounded channel,
//! HTTP downloads, trigger acknowledgements) and what devices report, and writes the
//! changed rows in batches. Publisher changes and reports are written before they are
//! acknowledged; state changes are written every `flush_interval` (1 s), progress alone
//! every `progress_interval` (5 s). Reads go to the database.

mod cluster;
mod db;
mod gate;
pub mod model;
pub mod report;
pub mod rollout;
mod tracker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use suitcase_coap::BlockServed;
use suitcase_store::Store;
use tokio::sync::{mpsc, oneshot};

pub use db::{redact, Backend};
pub use gate::Gates;
pub use model::{validate_id, version_text, Device, Filter, NewDevice, State};
pub use report::{Report, ReportError};
pub use rollout::{RolloutRequest, RolloutState, RolloutView, TriggerKind};

/// What went wrong (serialisable: a node that does not run the tracker gets it back from
/// the one that does).
#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
pub enum FleetError {
    /// Bad input (answered 400 / 4.00).
    #[error("{0}")]
    Invalid(String),
    /// No such device.
    #[error("no device {0:?}")]
    NotFound(String),
    /// The id is taken by a registered device.
    #[error("device {0:?} exists")]
    Exists(String),
    /// Too many devices.
    #[error("{0}")]
    Full(String),
    /// The database failed.
    #[error("database: {0}")]
    Database(String),
    /// No such rollout.
    #[error("no rollout {0}")]
    NoRollout(u64),
    /// The tracker is gone (shutting down).
    #[error("the fleet tracker has stopped")]
    Stopped,
    /// Not now: no node runs the shared fleet, or it is too busy (answered 503 / 5.03).
    #[error("{0}")]
    Unavailable(String),
}

impl From<ReportError> for FleetError {
    fn from(e: ReportError) -> Self {
        FleetError::Invalid(e.to_string())
    }
}

/// Settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// A device `downloaded` this long without a report (or a slot change) turns `failed`
    /// with the reason `timeout`.
    pub install_timeout: Duration,
    /// How often device changes (states, targets, addresses) are written.
    pub flush_interval: Duration,
    /// How often progress alone (bytes served, last seen) is written.
    pub progress_interval: Duration,
    /// Devices recorded without being added (seen fetching a manifest) at most; past it
    /// new peers are not recorded (counted).
    pub max_unregistered: usize,
    /// Devices at most in all.
    pub max_devices: usize,
    /// How often a device's `suit/slot/active` is read after its download.
    pub slot_poll: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            install_timeout: Duration::from_secs(600),
            flush_interval: Duration::from_secs(1),
            progress_interval: Duration::from_secs(5),
            max_unregistered: 10_000,
            max_devices: 1_000_000,
            slot_poll: Duration::from_secs(5),
        }
    }
}

/// Counters (for logs, `/metrics` and benchmarks).
#[derive(Debug, Default)]
pub struct Counters {
    /// Block events received from the CoAP server.
    pub blocks: AtomicU64,
    /// Block events the CoAP server dropped because the channel was full.
    pub blocks_dropped: Arc<AtomicU64>,
    /// HTTP and notify events dropped because the channel was full.
    pub events_dropped: AtomicU64,
    /// Rows written.
    pub rows_written: AtomicU64,
    /// Write transactions.
    pub transactions: AtomicU64,
    /// Peers not recorded because of `max_unregistered`.
    pub unrecorded: AtomicU64,
    /// Shared fleet: whether this node holds the lease and runs the tracker.
    pub leading: std::sync::atomic::AtomicBool,
    /// Shared fleet: requests and event batches this node handed to the leader.
    pub forwarded: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct CountersView {
    /// Block events received.
    pub blocks: u64,
    /// Block events dropped by the CoAP server (channel full).
    pub blocks_dropped: u64,
    /// Other events dropped.
    pub events_dropped: u64,
    /// Rows written.
    pub rows_written: u64,
    /// Write transactions.
    pub transactions: u64,
    /// Peers not recorded.
    pub unrecorded: u64,
    /// Whether this node runs the tracker (always, on SQLite; the lease holder, on PostgreSQL).
    pub leading: bool,
    /// Requests and event batches handed to the leader (PostgreSQL).
    pub forwarded: u64,
}

/// An HTTP download (or a part of one) served to a device.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HttpServed {
    /// Who.
    pub peer: SocketAddr,
    /// The identity it gave (ESP MAC, esp32FOTA `addr`, device token name).
    pub identity: Option<String>,
    /// The version it says it runs (ESP headers).
    pub running_semver: Option<String>,
    /// The representation (first 8 bytes of its SHA-256, as the CoAP ETag).
    pub etag: [u8; 8],
    /// Offset just past the bytes sent.
    pub end: u64,
    /// Its size.
    pub size: u64,
}

/// Who a report comes from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Reporter {
    /// A device by id (HTTP).
    Id(String),
    /// A CoAP peer, reporting under a publish-id.
    Peer(SocketAddr, String),
}

/// What the servers tell the tracker without waiting for an answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Heard {
    Notified {
        target: String,
        address: Option<SocketAddr>,
        publish_id: String,
        version: u64,
        sent_at: i64,
    },
    Http(HttpServed),
    Secured {
        id: String,
        peer: SocketAddr,
    },
    CheckIn {
        peer: Option<SocketAddr>,
        identity: Option<String>,
        publish_id: String,
        running_semver: String,
    },
}

pub(crate) enum Command {
    Add {
        devices: Vec<NewDevice>,
        replace: bool,
        reply: oneshot::Sender<Result<Vec<Device>, FleetError>>,
    },
    Remove {
        id: String,
        reply: oneshot::Sender<Result<bool, FleetError>>,
    },
    Report {
        from: Reporter,
        report: Report,
        reply: oneshot::Sender<Result<Device, FleetError>>,
    },
    /// Something a server saw (no answer; a follower hands these on in batches).
    Heard(Heard),
    Slot {
        id: String,
        version: u64,
        before: bool,
        value: String,
    },
    Shutdown {
        reply: oneshot::Sender<Result<(), FleetError>>,
    },
    CreateRollout {
        request: Box<rollout::RolloutRequest>,
        plan: Box<rollout::Plan>,
        start_at: Option<i64>,
        urls: BaseUrls,
        reply: oneshot::Sender<Result<RolloutView, FleetError>>,
    },
    RolloutViews {
        id: Option<u64>,
        reply: oneshot::Sender<Result<Vec<RolloutView>, FleetError>>,
    },
    ControlRollout {
        id: u64,
        action: Control,
        reply: oneshot::Sender<Result<RolloutView, FleetError>>,
    },
    Triggered {
        rollout: u64,
        device: String,
        result: Result<String, String>,
    },
}

/// What a publisher does to a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// Stop triggering until resumed.
    Pause,
    /// Go on.
    Resume,
    /// Stop for good.
    Abort,
}

/// This server's base URLs, as the device-facing side sees them (from the request that
/// creates a rollout, or the `--coap-url`/`--http-url` settings).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BaseUrls {
    /// `coap://host:port` (manifest URLs of CoAP and MQTT triggers).
    pub coap: Option<String>,
    /// `http://host:port` (firmware URLs in MQTT messages to HTTP devices).
    pub http: Option<String>,
}

/// A trigger to send for a rollout (CoAP or MQTT).
#[derive(Clone, Debug)]
pub struct TriggerJob {
    /// The rollout.
    pub rollout: u64,
    /// CoAP or MQTT.
    pub kind: TriggerKind,
    /// The device.
    pub device: String,
    /// Its CoAP address (CoAP).
    pub coap: Option<String>,
    /// The topic (MQTT), its template filled in.
    pub topic: String,
    /// The publish-id.
    pub publish_id: String,
    /// The store version.
    pub version: u64,
    /// The manifest's sequence number.
    pub seq: Option<u64>,
    /// The semver.
    pub semver: Option<String>,
    /// What the device is to fetch: the manifest's CoAP URL, or for a device known by an HTTP
    /// identity only, the firmware's HTTP URL.
    pub url: String,
}

/// Sends rollout triggers (implemented by the binary: the CoAP trigger client and MQTT).
pub trait Triggers: Send + Sync + 'static {
    /// Send one; `Ok(detail)` when the device (CoAP) or the broker (MQTT) took it.
    fn send(
        &self,
        job: TriggerJob,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send>>;
    /// Whether this kind can be sent (`Err`: why not, e.g. no MQTT broker configured).
    fn supports(&self, kind: TriggerKind) -> Result<(), String> {
        let _ = kind;
        Ok(())
    }
}

/// The fleet: a handle to the tracker and the database. Cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    db: db::Db,
    commands: mpsc::Sender<Command>,
    blocks: mpsc::Sender<Vec<BlockServed>>,
    counters: Arc<Counters>,
    gates: Arc<Gates>,
}

/// Commands queued for the tracker at most.
const QUEUE: usize = 1024;

/// Block batches queued for the tracker at most (each at most the CoAP server's
/// `max_block_events`; 32 × 16,384 events × 48 bytes ≈ 25 MB at the very worst).
const BLOCK_QUEUE: usize = 32;

/// Devices listed at most in one answer.
pub const MAX_LIST: usize = 100_000;

/// Reads a device's running slot (RIOT's `GET suit/slot/active`), for the tracker.
pub trait SlotReader: Send + Sync + 'static {
    /// The slot the device at `coap` (as registered) runs, or `None` when it cannot tell.
    fn active_slot(&self, coap: String) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send>>;
}

impl Fleet {
    /// Open the database at `url` (`sqlite:PATH` or `postgres://…`), migrate it, load the
    /// devices and start the tracker on the current runtime. It stops at [`Fleet::shutdown`]
    /// (after writing what it holds), or when every `Fleet` handle and slot read is gone.
    pub async fn open(
        url: &str,
        store: Arc<dyn Store>,
        config: Config,
        slots: Option<Arc<dyn SlotReader>>,
        triggers: Option<Arc<dyn Triggers>>,
    ) -> Result<Fleet, FleetError> {
        let db = db::Db::open(url).await?;
        let gates = Arc::new(Gates::default());
        let counters = Arc::new(Counters::default());
        let parts = tracker::Parts {
            store,
            config,
            counters: counters.clone(),
            slots,
            triggers,
            gates: gates.clone(),
        };
        if db.backend == Backend::Postgres {
            // Many nodes may share this database: the lease holder runs the tracker, and
            // this node's handles lead to a router.
            let (commands, commands_rx) = mpsc::channel(QUEUE);
            let (blocks, blocks_rx) = mpsc::channel(BLOCK_QUEUE);
            cluster::start(url, db.clone(), parts, commands_rx, blocks_rx).await?;
            return Ok(Fleet {
                db,
                commands,
                blocks,
                counters,
                gates,
            });
        }
        let started = tracker::start(db.clone(), &parts, None).await?;
        counters.leading.store(true, Ordering::Relaxed);
        Ok(Fleet {
            db,
            commands: started.commands,
            blocks: started.blocks,
            counters,
            gates,
        })
    }

    /// Which database.
    pub fn backend(&self) -> Backend {
        self.db.backend
    }

    /// Where the CoAP server sends its block events (bounded: it uses `try_send` and counts
    /// what does not fit in [`Fleet::counters`]).
    pub fn block_sink(&self) -> suitcase_coap::driver::BlockSink {
        suitcase_coap::driver::BlockSink {
            tx: self.blocks.clone(),
            dropped: self.counters.blocks_dropped.clone(),
        }
    }

    /// The counters.
    pub fn counters(&self) -> CountersView {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CountersView {
            blocks: l(&c.blocks),
            blocks_dropped: l(&c.blocks_dropped),
            events_dropped: l(&c.events_dropped),
            rows_written: l(&c.rows_written),
            transactions: l(&c.transactions),
            unrecorded: l(&c.unrecorded),
            leading: c.leading.load(Ordering::Relaxed),
            forwarded: l(&c.forwarded),
        }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, FleetError>>) -> Command,
    ) -> Result<T, FleetError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| FleetError::Stopped)?;
        rx.await.map_err(|_| FleetError::Stopped)?
    }

    /// Add devices (all or none). Without `replace`, an id a registered device holds is
    /// refused; with it (an import), such devices are updated. A device only seen so far
    /// is adopted either way (its state kept).
    pub async fn add(&self, devices: Vec<NewDevice>, replace: bool) -> Result<Vec<Device>, FleetError> {
        let devices = devices
            .into_iter()
            .map(NewDevice::validate)
            .collect::<Result<Vec<_>, _>>()?;
        if devices.is_empty() {
            return Err(FleetError::Invalid("no devices".into()));
        }
        let mut ids: Vec<&str> = devices.iter().map(|d| d.id.as_str()).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(FleetError::Invalid(format!("device {:?} given twice", w[0])));
        }
        self.ask(|reply| Command::Add {
            devices,
            replace,
            reply,
        })
        .await
    }

    /// Write everything the tracker holds and stop it (further calls fail with `Stopped`).
    pub async fn shutdown(&self) -> Result<(), FleetError> {
        self.ask(|reply| Command::Shutdown { reply }).await
    }

    /// Remove a device; whether it existed.
    pub async fn remove(&self, id: &str) -> Result<bool, FleetError> {
        let id = id.to_string();
        self.ask(|reply| Command::Remove { id, reply }).await
    }

    /// Record a report; the device as it is after it.
    pub async fn report(&self, from: Reporter, report: Report) -> Result<Device, FleetError> {
        self.ask(|reply| Command::Report { from, report, reply }).await
    }

    /// A device.
    pub async fn get(&self, id: &str) -> Result<Option<Device>, FleetError> {
        self.db.get(id).await
    }

    /// The id of the device registered with this CoAP address (as written).
    pub async fn id_of_coap(&self, coap: &str) -> Result<Option<String>, FleetError> {
        self.db.id_of_coap(coap).await
    }

    /// Devices matching `filter`, by id, at most `limit` ([`MAX_LIST`]).
    pub async fn list(&self, filter: &Filter, limit: usize) -> Result<Vec<Device>, FleetError> {
        if let Some(g) = &filter.group {
            model::validate_group(g)?;
        }
        self.db.list(filter, limit.min(MAX_LIST)).await
    }

    /// Whether the database answers (`SELECT 1`).
    pub async fn ping(&self) -> Result<(), FleetError> {
        sqlx::query("SELECT 1")
            .execute(&self.db.pool)
            .await
            .map(|_| ())
            .map_err(|e| FleetError::Database(e.to_string()))
    }

    /// How many devices are in each state.
    pub async fn counts(&self) -> Result<Vec<(String, i64)>, FleetError> {
        self.db.counts().await
    }

    /// A device acknowledged a trigger for `publish_id` version `version`, sent at `sent_at`
    /// ([`now_ms`]); a device already further since then keeps its state (never waits).
    pub fn notified(
        &self,
        target: String,
        address: Option<SocketAddr>,
        publish_id: String,
        version: u64,
        sent_at: i64,
    ) {
        self.event(Heard::Notified {
            target,
            address,
            publish_id,
            version,
            sent_at,
        });
    }

    /// An HTTP device asked for updates of `publish_id` saying it runs `running_semver` (ESP
    /// `x-ESP*-version`, esp32FOTA `vers`): recorded, and an update to that version (or an
    /// older one) in progress is installed (never waits).
    pub fn checked_in(
        &self,
        peer: Option<SocketAddr>,
        identity: Option<String>,
        publish_id: String,
        running_semver: String,
    ) {
        self.event(Heard::CheckIn {
            peer,
            identity,
            publish_id,
            running_semver,
        });
    }

    /// Device `id` (a DTLS credential's name) opened a `coaps://` session from `peer`: the
    /// fleet knows it at that address from now on (recorded as unregistered if nobody added
    /// it; never waits).
    pub fn secured(&self, id: String, peer: SocketAddr) {
        self.event(Heard::Secured { id, peer });
    }

    /// Bytes of a file were sent over HTTP (never waits).
    pub fn http_served(&self, e: HttpServed) {
        self.event(Heard::Http(e));
    }

    /// The rollouts' gates (for the CoAP and HTTP servers).
    pub fn gates(&self) -> Arc<Gates> {
        self.gates.clone()
    }

    /// Create a rollout (and start it, unless it is scheduled later).
    pub async fn create_rollout(&self, request: RolloutRequest, urls: BaseUrls) -> Result<RolloutView, FleetError> {
        let plan = request.plan()?;
        let start_at = match request.start_at.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(t) => {
                let at =
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).map_err(|e| {
                        FleetError::Invalid(format!("start_at {t:?}: RFC 3339 (2026-11-24T02:00:00Z): {e}"))
                    })?;
                Some(i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX))
            }
        };
        self.ask(|reply| Command::CreateRollout {
            request: Box::new(request),
            plan: Box::new(plan),
            start_at,
            urls,
            reply,
        })
        .await
    }

    /// Rollouts, newest first (at most `limit`).
    pub async fn rollouts(&self, limit: usize) -> Result<Vec<RolloutView>, FleetError> {
        let live = self.ask(|reply| Command::RolloutViews { id: None, reply }).await?;
        let mut out = Vec::new();
        for r in self.db.list_rollouts(limit).await? {
            match live.iter().find(|v| v.id == r.id) {
                Some(v) => out.push(v.clone()),
                None => out.push(self.stored_view(r).await?),
            }
        }
        Ok(out)
    }

    /// One rollout.
    pub async fn rollout(&self, id: u64) -> Result<Option<RolloutView>, FleetError> {
        let live = self.ask(|reply| Command::RolloutViews { id: Some(id), reply }).await?;
        if let Some(v) = live.into_iter().next() {
            return Ok(Some(v));
        }
        match self.db.get_rollout(id).await? {
            Some(r) => Ok(Some(self.stored_view(r).await?)),
            None => Ok(None),
        }
    }

    /// The view of a rollout the tracker no longer holds, from the database.
    async fn stored_view(&self, r: rollout::Rollout) -> Result<RolloutView, FleetError> {
        Ok(r.view_from(&self.db.member_counts(r.id).await?))
    }

    /// A rollout's devices (at most `limit`), as last written.
    pub async fn rollout_devices(&self, id: u64, limit: usize) -> Result<Vec<rollout::Member>, FleetError> {
        self.db.members(id, limit.min(MAX_LIST)).await
    }

    /// Pause, resume or abort a rollout.
    pub async fn control_rollout(&self, id: u64, action: Control) -> Result<RolloutView, FleetError> {
        self.ask(|reply| Command::ControlRollout { id, action, reply }).await
    }

    fn event(&self, h: Heard) {
        if self.commands.try_send(Command::Heard(h)).is_err() {
            self.counters.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Now, in Unix milliseconds (the fleet's clock).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
