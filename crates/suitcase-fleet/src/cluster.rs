//! One fleet for many nodes (PostgreSQL).
//!
//! The tracker owns every change, so exactly one node runs it: the holder of a session
//! advisory lock (the *lease*). The lease is taken by the single connection of the
//! leader's own pool, in that connection's `after_connect`: every write the tracker makes
//! goes through a connection that holds the lease, and a connection that cannot take it
//! cannot be made. When the leader dies its session ends, PostgreSQL frees the lock, and
//! another node (which tries every second) takes it, loads the devices and the live
//! rollouts from the tables and goes on.
//!
//! Every other node (a follower) hands what it hears to the leader through the table
//! `fleet_inbox` and `NOTIFY`:
//! * events (downloads seen, HTTP check-ins, trigger acknowledgements) in batches every
//!   200 ms, CoAP blocks aggregated per peer and representation as the tracker does;
//! * requests (add, remove, report, rollout commands) one row each; the leader writes the
//!   answer into the row and notifies, and the follower answers its caller (or says that
//!   no leader answered within 15 s).
//!
//! The leader writes the rollouts' gates to `fleet_gates` before it sends the triggers that
//! rely on them; followers read them on `NOTIFY` (and every second as a backstop), so a
//! device told to update may fetch from any node. Reads (device lists, rollout members)
//! go to the tables from any node.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnection, PgListener};
use sqlx::{Connection as _, Row as _};
use suitcase_coap::BlockServed;
use suitcase_store::Store;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

use crate::db::{redact, Backend, Db};
use crate::gate::{Gates, OneGate};
use crate::model::{Device, NewDevice};
use crate::report::Report;
use crate::rollout::{Plan, RolloutRequest, RolloutView};
use crate::{
    now_ms, tracker, BaseUrls, Command, Config, Control, Counters, FleetError, HttpServed, Reporter, SlotReader,
    Triggers, BLOCK_QUEUE, QUEUE,
};

/// The advisory lock whose holder runs the tracker ("suitflee").
const LEASE_KEY: i64 = 0x7375_6974_666c_6565;
/// The lock that serialises the creation of the tables below.
const SCHEMA_KEY: i64 = 0x7375_6974_666c_7363;
const INBOX: &str = "suitcase_fleet_inbox";
const REPLIES: &str = "suitcase_fleet_reply";
const GATES: &str = "suitcase_fleet_gates";

/// How long a follower waits for the leader's answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a follower tries to take the lease, and the leader checks it still holds it.
const CAMPAIGN: Duration = Duration::from_secs(1);
/// How long the lease connection has to answer the leader's check.
const LEASE_CHECK: Duration = Duration::from_secs(3);
/// How often a follower hands its events on.
const FORWARD_EVERY: Duration = Duration::from_millis(200);
/// The backstop when a notification is lost (LISTEN refused, a reconnect).
const POLL: Duration = Duration::from_millis(500);
/// Events a follower holds at most between two hand-overs (the excess is counted dropped).
const MAX_EVENTS: usize = 20_000;
/// Peers and representations a follower aggregates at most between two hand-overs.
const MAX_BLOCKS: usize = 200_000;
/// Requests a follower has waiting for the leader at most.
const MAX_WAITING: usize = 1024;
/// Inbox rows the leader takes at a time.
const BATCH: i64 = 128;
/// Event rows older than this are dropped unread (no leader for that long: stale).
const STALE_EVENTS_MS: i64 = 300_000;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS fleet_inbox (
        id BIGSERIAL PRIMARY KEY,
        node TEXT NOT NULL,
        kind TEXT NOT NULL,
        body TEXT NOT NULL,
        taken BOOLEAN NOT NULL DEFAULT FALSE,
        reply TEXT,
        created_at BIGINT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS fleet_gates (
        id INTEGER PRIMARY KEY,
        version BIGINT NOT NULL,
        body TEXT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS fleet_nodes (
        node TEXT PRIMARY KEY,
        gates_version BIGINT NOT NULL,
        seen_at BIGINT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS fleet_leader (
        id INTEGER PRIMARY KEY,
        node TEXT NOT NULL,
        since BIGINT NOT NULL
    )",
];

/// A request a follower hands to the leader.
#[derive(Debug, Serialize, Deserialize)]
enum Request {
    Add {
        devices: Vec<NewDevice>,
        replace: bool,
    },
    Remove {
        id: String,
    },
    Report {
        from: Reporter,
        report: Report,
    },
    CreateRollout {
        request: Box<RolloutRequest>,
        plan: Box<Plan>,
        start_at: Option<i64>,
        urls: BaseUrls,
    },
    RolloutViews {
        id: Option<u64>,
    },
    ControlRollout {
        id: u64,
        action: Control,
    },
}

/// The leader's answer.
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Devices(Vec<Device>),
    Removed(bool),
    Device(Box<Device>),
    View(Box<RolloutView>),
    Views(Vec<RolloutView>),
    Error(FleetError),
}

/// An event a follower hands to the leader.
#[derive(Debug, Serialize, Deserialize)]
enum Event {
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
    /// Blocks served: (peer, ETag, end, size).
    Blocks(Vec<(SocketAddr, [u8; 8], u64, u64)>),
}

fn db_err(e: sqlx::Error) -> FleetError {
    FleetError::Database(e.to_string())
}

fn json<T: Serialize>(v: &T) -> Result<String, FleetError> {
    serde_json::to_string(v).map_err(|e| FleetError::Database(format!("encoding for the inbox: {e}")))
}

/// What a tracker needs, kept to start one when this node takes the lease.
pub(crate) struct Parts {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: Config,
    pub(crate) counters: Arc<Counters>,
    pub(crate) slots: Option<Arc<dyn SlotReader>>,
    pub(crate) triggers: Option<Arc<dyn Triggers>>,
    pub(crate) gates: Arc<Gates>,
}

/// This node's side of the shared fleet.
pub(crate) struct Shared {
    url: String,
    db: Db,
    node: String,
    parts: Parts,
    /// Followers waiting for the leader's answer, by inbox row.
    waiters: Mutex<HashMap<i64, Arc<Notify>>>,
    /// New inbox rows (for the leader).
    inbox: Notify,
    waiting: Arc<tokio::sync::Semaphore>,
}

/// Create the tables (once, under a lock: several nodes may start at once).
pub(crate) async fn migrate(db: &Db) -> Result<(), FleetError> {
    let mut tx = db.pool.begin().await.map_err(db_err)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SCHEMA_KEY)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    for s in SCHEMA {
        sqlx::query(s).execute(&mut *tx).await.map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)
}

/// Write the gates for the followers (the leader, through its lease connection); their
/// version.
pub(crate) async fn save_gates(db: &Db, gates: &HashMap<String, OneGate>) -> Result<i64, FleetError> {
    let body = json(gates)?;
    let mut tx = db.begin_write().await?;
    let version: i64 = sqlx::query_scalar(
        "INSERT INTO fleet_gates (id, version, body) VALUES (1, 1, $1) \
         ON CONFLICT (id) DO UPDATE SET version = fleet_gates.version + 1, body = EXCLUDED.body \
         RETURNING version",
    )
    .bind(body)
    .fetch_one(&mut *tx)
    .await
    .map_err(db_err)?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(GATES)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok(version)
}

/// Nodes heard from within this long count for [`await_gates`].
const ALIVE_MS: i64 = 5_000;
/// How long the leader waits for the followers to apply new gates before it sends the
/// triggers that rely on them.
const GATES_BARRIER: Duration = Duration::from_secs(1);

/// Wait (at most [`GATES_BARRIER`]) until every live follower says it applied gates
/// `version`: a device told to update may then fetch from any node. Whether they all did.
pub(crate) async fn await_gates(db: &Db, version: i64, me: &str) -> Result<bool, FleetError> {
    let deadline = tokio::time::Instant::now() + GATES_BARRIER;
    loop {
        let behind: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM fleet_nodes WHERE node <> $1 AND seen_at > $2 AND gates_version < $3",
        )
        .bind(me)
        .bind(now_ms() - ALIVE_MS)
        .bind(version)
        .fetch_one(&db.pool)
        .await
        .map_err(db_err)?;
        if behind == 0 {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A follower says it is alive and which gates it applied.
async fn heartbeat(db: &Db, me: &str, gates_version: i64) -> Result<(), FleetError> {
    sqlx::query(
        "INSERT INTO fleet_nodes (node, gates_version, seen_at) VALUES ($1, $2, $3) \
         ON CONFLICT (node) DO UPDATE SET gates_version = EXCLUDED.gates_version, seen_at = EXCLUDED.seen_at",
    )
    .bind(me)
    .bind(gates_version)
    .bind(now_ms())
    .execute(&db.pool)
    .await
    .map(|_| ())
    .map_err(db_err)
}

/// This node's name in logs and `fleet_leader`: host and process.
fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    format!("{host}:{}", std::process::id())
}

/// Whether the session `pid` holds the lease (the fence of every write of the tracker).
pub(crate) async fn holds_lease(conn: &mut sqlx::AnyConnection, pid: i32) -> Result<bool, FleetError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = $1 \
         AND objsubid = 1 AND classid::bigint = $2 AND objid::bigint = $3",
    )
    .bind(pid)
    .bind(LEASE_KEY >> 32)
    .bind(LEASE_KEY & 0xffff_ffff)
    .fetch_one(&mut *conn)
    .await
    .map_err(db_err)?;
    Ok(n > 0)
}

/// The lease: a connection of its own that holds the advisory lock, and its backend pid;
/// `None` when another node holds it.
async fn take_lease(url: &str, db: &Db) -> Result<Option<(PgConnection, i32)>, FleetError> {
    // Cheap first: no connection is made while the lease is visibly held.
    let held: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND objsubid = 1 AND classid::bigint = $1 AND objid::bigint = $2)",
    )
    .bind(LEASE_KEY >> 32)
    .bind(LEASE_KEY & 0xffff_ffff)
    .fetch_one(&db.pool)
    .await
    .map_err(db_err)?;
    if held {
        return Ok(None);
    }
    let mut conn = PgConnection::connect(url)
        .await
        .map_err(|e| FleetError::Database(format!("taking the fleet lease on {}: {e}", redact(url))))?;
    // A leader whose machine vanishes (no FIN, no RST) is noticed by the server within
    // about 10 s, and its lease freed. (Refused on a Unix socket, where it is moot.)
    for set in [
        "SET tcp_keepalives_idle = 4",
        "SET tcp_keepalives_interval = 2",
        "SET tcp_keepalives_count = 3",
    ] {
        let _ = sqlx::query(set).execute(&mut conn).await;
    }
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LEASE_KEY)
        .fetch_one(&mut conn)
        .await
        .map_err(db_err)?;
    if !got {
        let _ = conn.close().await;
        return Ok(None);
    }
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .map_err(db_err)?;
    Ok(Some((conn, pid)))
}

/// What runs while this node leads.
struct Leading {
    /// The connection that holds the lease.
    lease: PgConnection,
    commands: mpsc::Sender<Command>,
    blocks: mpsc::Sender<Vec<BlockServed>>,
    tracker: JoinHandle<()>,
    consumer: JoinHandle<()>,
    failures: u32,
}

impl Shared {
    pub(crate) fn new(url: &str, db: Db, parts: Parts) -> Arc<Shared> {
        Arc::new(Shared {
            url: url.to_string(),
            db,
            node: node_name(),
            parts,
            waiters: Mutex::new(HashMap::new()),
            inbox: Notify::new(),
            waiting: Arc::new(tokio::sync::Semaphore::new(MAX_WAITING)),
        })
    }

    /// Take the lease if it is free: load the fleet and start the tracker.
    async fn lead(self: &Arc<Self>) -> Result<Option<Leading>, FleetError> {
        let Some((lease, pid)) = take_lease(&self.url, &self.db).await? else {
            return Ok(None);
        };
        let db = Db {
            pool: self.db.pool.clone(),
            backend: Backend::Postgres,
            fence: Some(pid),
        };
        let started = async {
            let devices = db.load_all().await?;
            let rollouts = db.load_rollouts().await?;
            let next_id = db.max_rollout_id().await? + 1;
            sqlx::query(
                "INSERT INTO fleet_leader (id, node, since) VALUES (1, $1, $2) \
                 ON CONFLICT (id) DO UPDATE SET node = EXCLUDED.node, since = EXCLUDED.since",
            )
            .bind(&self.node)
            .bind(now_ms())
            .execute(&db.pool)
            .await
            .map_err(db_err)?;
            Ok::<_, FleetError>((devices, rollouts, next_id))
        }
        .await;
        let (devices, rollouts, next_id) = match started {
            Ok(x) => x,
            Err(e) => {
                let _ = lease.close().await;
                return Err(e);
            }
        };
        let live = rollouts.len();
        let n = devices.len();
        let (commands, commands_rx) = mpsc::channel(QUEUE);
        let (blocks, blocks_rx) = mpsc::channel(BLOCK_QUEUE);
        let p = &self.parts;
        let t = tracker::Tracker::new(
            db,
            p.store.clone(),
            p.config.clone(),
            devices,
            p.counters.clone(),
            p.slots.clone(),
            commands.downgrade(),
            tracker::Rollouts {
                live: rollouts,
                next_id,
                gates: p.gates.clone(),
                triggers: p.triggers.clone(),
                shared: Some(self.node.clone()),
            },
        );
        let tracker = tokio::spawn(t.run(commands_rx, blocks_rx));
        let consumer = tokio::spawn(consume(self.clone(), commands.clone(), blocks.clone()));
        tracing::info!(node = %self.node, devices = n, rollouts = live, "fleet: this node holds the lease and runs the tracker");
        Ok(Some(Leading {
            lease,
            commands,
            blocks,
            tracker,
            consumer,
            failures: 0,
        }))
    }

    /// Hand a request to the leader and wait for its answer.
    async fn request(&self, req: Request) -> Result<Reply, FleetError> {
        let body = json(&req)?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO fleet_inbox (node, kind, body, created_at) VALUES ($1, 'request', $2, $3) RETURNING id",
        )
        .bind(&self.node)
        .bind(body)
        .bind(now_ms())
        .fetch_one(&self.db.pool)
        .await
        .map_err(db_err)?;
        let wake = Arc::new(Notify::new());
        self.waiters.lock().insert(id, wake.clone());
        let r = self.await_reply(id, &wake).await;
        self.waiters.lock().remove(&id);
        r
    }

    async fn await_reply(&self, id: i64, wake: &Notify) -> Result<Reply, FleetError> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(INBOX)
            .execute(&self.db.pool)
            .await
            .map_err(db_err)?;
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            let reply: Option<Option<String>> = sqlx::query_scalar("SELECT reply FROM fleet_inbox WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.db.pool)
                .await
                .map_err(db_err)?;
            if let Some(Some(body)) = reply {
                // Read: the row has done its work.
                let _ = sqlx::query("DELETE FROM fleet_inbox WHERE id = $1")
                    .bind(id)
                    .execute(&self.db.pool)
                    .await;
                return serde_json::from_str(&body)
                    .map_err(|e| FleetError::Database(format!("the leader's answer does not read: {e}")));
            }
            if tokio::time::Instant::now() >= deadline {
                let withdrawn = sqlx::query("DELETE FROM fleet_inbox WHERE id = $1 AND NOT taken")
                    .bind(id)
                    .execute(&self.db.pool)
                    .await
                    .map_err(db_err)?
                    .rows_affected();
                return Err(FleetError::Database(if withdrawn == 1 {
                    format!(
                        "no node ran the fleet within {} s (nothing was changed; try again)",
                        REQUEST_TIMEOUT.as_secs()
                    )
                } else {
                    format!(
                        "the fleet's leader took the request but did not answer within {} s",
                        REQUEST_TIMEOUT.as_secs()
                    )
                }));
            }
            let _ = tokio::time::timeout(POLL, wake.notified()).await;
        }
    }

    /// Hand a batch of events to the leader.
    async fn hand_on(&self, events: &[Event]) -> Result<(), FleetError> {
        let body = json(&events)?;
        let mut tx = self.db.pool.begin().await.map_err(db_err)?;
        sqlx::query("INSERT INTO fleet_inbox (node, kind, body, created_at) VALUES ($1, 'events', $2, $3)")
            .bind(&self.node)
            .bind(body)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(INBOX)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    /// The node that holds the lease, as it wrote itself down.
    pub(crate) async fn leader(&self) -> Result<Option<String>, FleetError> {
        sqlx::query_scalar("SELECT node FROM fleet_leader WHERE id = 1")
            .fetch_optional(&self.db.pool)
            .await
            .map_err(db_err)
    }
}

/// The router: every command and block batch of this node's `Fleet` handles goes to the
/// tracker when this node leads, else to the leader through the inbox. It also campaigns
/// for the lease and steps down when the lease connection is lost.
async fn route(
    shared: Arc<Shared>,
    mut commands: mpsc::Receiver<Command>,
    mut blocks: mpsc::Receiver<Vec<BlockServed>>,
    mut leading: Option<Leading>,
) {
    let counters = shared.parts.counters.clone();
    let mut events: Vec<Event> = Vec::new();
    let mut served: HashMap<(SocketAddr, [u8; 8]), (u64, u64, u64)> = HashMap::new();
    let mut tick = tokio::time::interval(FORWARD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_campaign = tokio::time::Instant::now();
    let mut handing_on: Option<JoinHandle<()>> = None;
    tokio::spawn(follow(Arc::downgrade(&shared)));
    counters.leading.store(leading.is_some(), Ordering::Relaxed);
    loop {
        tokio::select! {
            c = commands.recv() => match c {
                None => break,
                Some(Command::Shutdown { reply }) => {
                    let r = match leading.take() {
                        Some(l) => stop_leading(l, true).await,
                        None => {
                            flush_events(&shared, &mut events, &mut served).await;
                            Ok(())
                        }
                    };
                    counters.leading.store(false, Ordering::Relaxed);
                    let _ = reply.send(r);
                    return;
                }
                Some(c) => match &leading {
                    Some(l) => {
                        if let Err(mpsc::error::SendError(c)) = l.commands.send(c).await {
                            // The tracker ended (its lease lost): follow, and hand this on.
                            if let Some(l) = leading.take() {
                                let _ = stop_leading(l, false).await;
                            }
                            counters.leading.store(false, Ordering::Relaxed);
                            forward(&shared, c, &mut events);
                        }
                    }
                    None => forward(&shared, c, &mut events),
                },
            },
            Some(batch) = blocks.recv() => match &leading {
                Some(l) => {
                    if l.blocks.try_send(batch).is_err() {
                        counters.blocks_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                None => {
                    for b in batch {
                        let key = (b.peer, b.etag);
                        if let Some(e) = served.get_mut(&key) {
                            e.0 = e.0.min(b.end);
                            e.1 = e.1.max(b.end);
                        } else if served.len() < MAX_BLOCKS {
                            served.insert(key, (b.end, b.end, b.size));
                        } else {
                            counters.blocks_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            },
            _ = tick.tick() => {
                if leading.is_none() && (!events.is_empty() || !served.is_empty())
                    && handing_on.as_ref().is_none_or(JoinHandle::is_finished)
                {
                    let batch = take_events(&mut events, &mut served);
                    let s = shared.clone();
                    counters.forwarded.fetch_add(1, Ordering::Relaxed);
                    handing_on = Some(tokio::spawn(async move {
                        if let Err(e) = s.hand_on(&batch).await {
                            tracing::warn!(error = %e, events = batch.len(), "fleet: handing events to the leader failed; dropped");
                            s.parts.counters.events_dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        }
                    }));
                }
                if last_campaign.elapsed() < CAMPAIGN {
                    continue;
                }
                last_campaign = tokio::time::Instant::now();
                match leading.as_mut() {
                    None => match shared.lead().await {
                        Ok(Some(l)) => {
                            // What this node held for the leader goes to itself now.
                            for e in take_events(&mut events, &mut served) {
                                apply_event(e, &l.commands, &l.blocks).await;
                            }
                            leading = Some(l);
                            counters.leading.store(true, Ordering::Relaxed);
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "fleet: taking the lease failed"),
                    },
                    Some(l) => {
                        let lost = if l.tracker.is_finished() {
                            true
                        } else {
                            let check = sqlx::query("SELECT 1").execute(&mut l.lease);
                            match tokio::time::timeout(LEASE_CHECK, check).await {
                                Ok(Ok(_)) => {
                                    l.failures = 0;
                                    false
                                }
                                Ok(Err(e)) => {
                                    tracing::warn!(error = %e, "fleet: the lease connection failed");
                                    true
                                }
                                Err(_) => {
                                    l.failures += 1;
                                    tracing::warn!(failures = l.failures, "fleet: the lease connection does not answer");
                                    l.failures >= 2
                                }
                            }
                        };
                        if lost {
                            if let Some(l) = leading.take() {
                                let _ = stop_leading(l, false).await;
                            }
                            counters.leading.store(false, Ordering::Relaxed);
                            tracing::warn!(node = %shared.node, "fleet: the lease is lost; this node follows");
                        }
                    }
                }
            }
        }
    }
    // Every handle is gone.
    if let Some(l) = leading.take() {
        let _ = stop_leading(l, true).await;
    }
}

/// Stop leading: with `flush`, the tracker writes what it holds first (a clean shutdown);
/// without, it is stopped at once (the lease is gone: it must not write any more).
async fn stop_leading(l: Leading, flush: bool) -> Result<(), FleetError> {
    l.consumer.abort();
    let r = if flush && !l.tracker.is_finished() {
        let (tx, rx) = oneshot::channel();
        match l.commands.send(Command::Shutdown { reply: tx }).await {
            Ok(()) => rx.await.unwrap_or(Err(FleetError::Stopped)),
            Err(_) => Err(FleetError::Stopped),
        }
    } else {
        l.tracker.abort();
        Ok(())
    };
    // Closing the lease connection frees the lock for the next node at once.
    let _ = tokio::time::timeout(LEASE_CHECK, l.lease.close()).await;
    r
}

fn take_events(events: &mut Vec<Event>, served: &mut HashMap<(SocketAddr, [u8; 8]), (u64, u64, u64)>) -> Vec<Event> {
    let mut out = std::mem::take(events);
    if !served.is_empty() {
        let mut blocks = Vec::with_capacity(served.len() * 2);
        for ((peer, etag), (min, max, size)) in served.drain() {
            blocks.push((peer, etag, min, size));
            if max != min {
                blocks.push((peer, etag, max, size));
            }
        }
        out.push(Event::Blocks(blocks));
    }
    out
}

async fn flush_events(
    shared: &Shared,
    events: &mut Vec<Event>,
    served: &mut HashMap<(SocketAddr, [u8; 8]), (u64, u64, u64)>,
) {
    let batch = take_events(events, served);
    if !batch.is_empty() {
        if let Err(e) = shared.hand_on(&batch).await {
            tracing::warn!(error = %e, "fleet: the last events could not be handed to the leader");
        }
    }
}

/// A follower's command: an event joins the batch, a request goes to the leader.
fn forward(shared: &Arc<Shared>, c: Command, events: &mut Vec<Event>) {
    let event = match c {
        Command::Add {
            devices,
            replace,
            reply,
        } => {
            return ask(shared, Request::Add { devices, replace }, reply, |r| match r {
                Reply::Devices(d) => Some(d),
                _ => None,
            })
        }
        Command::Remove { id, reply } => {
            return ask(shared, Request::Remove { id }, reply, |r| match r {
                Reply::Removed(b) => Some(b),
                _ => None,
            })
        }
        Command::Report { from, report, reply } => {
            return ask(shared, Request::Report { from, report }, reply, |r| match r {
                Reply::Device(d) => Some(*d),
                _ => None,
            })
        }
        Command::CreateRollout {
            request,
            plan,
            start_at,
            urls,
            reply,
        } => {
            return ask(
                shared,
                Request::CreateRollout {
                    request,
                    plan,
                    start_at,
                    urls,
                },
                reply,
                |r| match r {
                    Reply::View(v) => Some(*v),
                    _ => None,
                },
            )
        }
        Command::RolloutViews { id, reply } => {
            return ask(shared, Request::RolloutViews { id }, reply, |r| match r {
                Reply::Views(v) => Some(v),
                _ => None,
            })
        }
        Command::ControlRollout { id, action, reply } => {
            return ask(shared, Request::ControlRollout { id, action }, reply, |r| match r {
                Reply::View(v) => Some(*v),
                _ => None,
            })
        }
        Command::Notified {
            target,
            address,
            publish_id,
            version,
            sent_at,
        } => Event::Notified {
            target,
            address,
            publish_id,
            version,
            sent_at,
        },
        Command::Http(h) => Event::Http(h),
        Command::Secured { id, peer } => Event::Secured { id, peer },
        Command::CheckIn {
            peer,
            identity,
            publish_id,
            running_semver,
        } => Event::CheckIn {
            peer,
            identity,
            publish_id,
            running_semver,
        },
        // The tracker's own (slot reads, trigger results): only a tracker sends them.
        Command::Slot { .. } | Command::Triggered { .. } => return,
        Command::Shutdown { reply } => {
            let _ = reply.send(Ok(()));
            return;
        }
    };
    if events.len() < MAX_EVENTS {
        events.push(event);
    } else {
        shared.parts.counters.events_dropped.fetch_add(1, Ordering::Relaxed);
    }
}

fn ask<T: Send + 'static>(
    shared: &Arc<Shared>,
    req: Request,
    reply: oneshot::Sender<Result<T, FleetError>>,
    pick: fn(Reply) -> Option<T>,
) {
    let Ok(permit) = shared.waiting.clone().try_acquire_owned() else {
        let _ = reply.send(Err(FleetError::Full(format!(
            "{MAX_WAITING} requests are waiting for the fleet's leader; try again"
        ))));
        return;
    };
    shared.parts.counters.forwarded.fetch_add(1, Ordering::Relaxed);
    let shared = shared.clone();
    tokio::spawn(async move {
        let r = match shared.request(req).await {
            Ok(Reply::Error(e)) => Err(e),
            Ok(r) => pick(r).ok_or_else(|| FleetError::Database("the leader answered something else".into())),
            Err(e) => Err(e),
        };
        let _ = reply.send(r);
        drop(permit);
    });
}

async fn apply_event(e: Event, commands: &mpsc::Sender<Command>, blocks: &mpsc::Sender<Vec<BlockServed>>) {
    let c = match e {
        Event::Notified {
            target,
            address,
            publish_id,
            version,
            sent_at,
        } => Command::Notified {
            target,
            address,
            publish_id,
            version,
            sent_at,
        },
        Event::Http(h) => Command::Http(h),
        Event::Secured { id, peer } => Command::Secured { id, peer },
        Event::CheckIn {
            peer,
            identity,
            publish_id,
            running_semver,
        } => Command::CheckIn {
            peer,
            identity,
            publish_id,
            running_semver,
        },
        Event::Blocks(b) => {
            let batch = b
                .into_iter()
                .map(|(peer, etag, end, size)| BlockServed { peer, etag, end, size })
                .collect();
            let _ = blocks.send(batch).await;
            return;
        }
    };
    let _ = commands.send(c).await;
}

/// The leader's side of the inbox: apply the followers' events, answer their requests.
async fn consume(shared: Arc<Shared>, commands: mpsc::Sender<Command>, blocks: mpsc::Sender<Vec<BlockServed>>) {
    loop {
        let _ = tokio::time::timeout(POLL, shared.inbox.notified()).await;
        if let Err(e) = consume_once(&shared, &commands, &blocks).await {
            tracing::warn!(error = %e, "fleet: reading the inbox failed");
            tokio::time::sleep(POLL).await;
        }
    }
}

async fn consume_once(
    shared: &Arc<Shared>,
    commands: &mpsc::Sender<Command>,
    blocks: &mpsc::Sender<Vec<BlockServed>>,
) -> Result<(), FleetError> {
    let pool = &shared.db.pool;
    // Answers nobody came for, and events with no leader for too long.
    sqlx::query("DELETE FROM fleet_inbox WHERE (taken AND created_at < $1) OR (kind = 'events' AND created_at < $2)")
        .bind(now_ms() - 2 * REQUEST_TIMEOUT.as_millis() as i64)
        .bind(now_ms() - STALE_EVENTS_MS)
        .execute(pool)
        .await
        .map_err(db_err)?;
    loop {
        let rows = sqlx::query("SELECT id, kind, body FROM fleet_inbox WHERE NOT taken ORDER BY id LIMIT $1")
            .bind(BATCH)
            .fetch_all(pool)
            .await
            .map_err(db_err)?;
        if rows.is_empty() {
            return Ok(());
        }
        let more = rows.len() as i64 == BATCH;
        for row in rows {
            let id: i64 = row.try_get("id").map_err(db_err)?;
            let kind: String = row.try_get("kind").map_err(db_err)?;
            let body: String = row.try_get("body").map_err(db_err)?;
            if kind == "events" {
                match serde_json::from_str::<Vec<Event>>(&body) {
                    Ok(events) => {
                        for e in events {
                            apply_event(e, commands, blocks).await;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, row = id, "fleet: an inbox row does not read; dropped"),
                }
                sqlx::query("DELETE FROM fleet_inbox WHERE id = $1")
                    .bind(id)
                    .execute(pool)
                    .await
                    .map_err(db_err)?;
                continue;
            }
            // A request: taken first (a new leader does not run it twice), then answered.
            let taken = sqlx::query("UPDATE fleet_inbox SET taken = TRUE WHERE id = $1 AND NOT taken")
                .bind(id)
                .execute(pool)
                .await
                .map_err(db_err)?
                .rows_affected();
            if taken == 0 {
                continue; // withdrawn by its node
            }
            match serde_json::from_str::<Request>(&body) {
                Ok(req) => answer(shared.clone(), id, req, commands).await,
                Err(e) => {
                    let r = Reply::Error(FleetError::Invalid(format!("a request this leader cannot read: {e}")));
                    shared.answer(id, &r).await;
                }
            }
        }
        if !more {
            return Ok(());
        }
    }
}

impl Shared {
    async fn answer(&self, id: i64, reply: &Reply) {
        let body = match json(reply) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "fleet: an answer could not be encoded");
                return;
            }
        };
        let r = async {
            sqlx::query("UPDATE fleet_inbox SET reply = $2 WHERE id = $1")
                .bind(id)
                .bind(body)
                .execute(&self.db.pool)
                .await?;
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(REPLIES)
                .bind(id.to_string())
                .execute(&self.db.pool)
                .await
        }
        .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, row = id, "fleet: an answer could not be written");
        }
    }
}

/// Put a follower's request to the tracker; its answer is written back when it comes.
async fn answer(shared: Arc<Shared>, id: i64, req: Request, commands: &mpsc::Sender<Command>) {
    fn wrap<T: Send + 'static>(
        shared: Arc<Shared>,
        id: i64,
        make: fn(T) -> Reply,
    ) -> oneshot::Sender<Result<T, FleetError>> {
        let (tx, rx) = oneshot::channel::<Result<T, FleetError>>();
        tokio::spawn(async move {
            let reply = match rx.await {
                Ok(Ok(v)) => make(v),
                Ok(Err(e)) => Reply::Error(e),
                Err(_) => Reply::Error(FleetError::Stopped),
            };
            shared.answer(id, &reply).await;
        });
        tx
    }
    let c = match req {
        Request::Add { devices, replace } => Command::Add {
            devices,
            replace,
            reply: wrap(shared, id, Reply::Devices),
        },
        Request::Remove { id: device } => Command::Remove {
            id: device,
            reply: wrap(shared, id, Reply::Removed),
        },
        Request::Report { from, report } => Command::Report {
            from,
            report,
            reply: wrap(shared, id, |d| Reply::Device(Box::new(d))),
        },
        Request::CreateRollout {
            request,
            plan,
            start_at,
            urls,
        } => Command::CreateRollout {
            request,
            plan,
            start_at,
            urls,
            reply: wrap(shared, id, |v| Reply::View(Box::new(v))),
        },
        Request::RolloutViews { id: rollout } => Command::RolloutViews {
            id: rollout,
            reply: wrap(shared, id, Reply::Views),
        },
        Request::ControlRollout { id: rollout, action } => Command::ControlRollout {
            id: rollout,
            action,
            reply: wrap(shared, id, |v| Reply::View(Box::new(v))),
        },
    };
    let _ = commands.send(c).await;
}

/// Every node: LISTEN for the inbox, the answers and the gates; a follower applies the
/// leader's gates (read again every second as a backstop).
async fn follow(shared: std::sync::Weak<Shared>) {
    let mut listener: Option<PgListener> = None;
    let mut gates_version: i64 = -1;
    let mut last_gates_read = tokio::time::Instant::now() - CAMPAIGN;
    loop {
        let Some(me) = shared.upgrade() else { return };
        if listener.is_none() {
            match PgListener::connect(&me.url).await {
                Ok(mut l) => match l.listen_all([INBOX, REPLIES, GATES]).await {
                    Ok(()) => listener = Some(l),
                    Err(e) => tracing::warn!(error = %e, "fleet: LISTEN failed; polling"),
                },
                Err(e) => tracing::warn!(error = %e, "fleet: no listener connection; polling"),
            }
        }
        let mut gates_changed = false;
        match listener.as_mut() {
            Some(l) => match tokio::time::timeout(POLL, l.recv()).await {
                Ok(Ok(n)) => match n.channel() {
                    INBOX => me.inbox.notify_one(),
                    GATES => gates_changed = true,
                    _ => {
                        if let Ok(id) = n.payload().parse::<i64>() {
                            if let Some(w) = me.waiters.lock().get(&id) {
                                w.notify_one();
                            }
                        }
                    }
                },
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "fleet: the listener failed; reconnecting");
                    listener = None;
                }
                Err(_) => {}
            },
            None => {
                drop(me);
                tokio::time::sleep(POLL).await;
                continue;
            }
        }
        let leading = me.parts.counters.leading.load(Ordering::Relaxed);
        if leading {
            gates_version = -1;
        } else if gates_changed || last_gates_read.elapsed() >= CAMPAIGN {
            last_gates_read = tokio::time::Instant::now();
            match read_gates(&me.db, gates_version).await {
                Ok(Some((v, g))) => {
                    gates_version = v;
                    me.parts.gates.set(g);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "fleet: reading the leader's gates failed"),
            }
            if let Err(e) = heartbeat(&me.db, &me.node, gates_version).await {
                tracing::warn!(error = %e, "fleet: writing this node's heartbeat failed");
            }
        }
    }
}

/// The gates, when their version is not `seen`.
async fn read_gates(db: &Db, seen: i64) -> Result<Option<(i64, HashMap<String, OneGate>)>, FleetError> {
    let row = sqlx::query("SELECT version, body FROM fleet_gates WHERE id = 1 AND version <> $1")
        .bind(seen)
        .fetch_optional(&db.pool)
        .await
        .map_err(db_err)?;
    let Some(row) = row else { return Ok(None) };
    let v: i64 = row.try_get("version").map_err(db_err)?;
    let body: String = row.try_get("body").map_err(db_err)?;
    let g = serde_json::from_str(&body).map_err(|e| FleetError::Database(format!("the gates do not read: {e}")))?;
    Ok(Some((v, g)))
}

/// Start this node's side: take the lease if it is free (a lone node leads from the
/// start), then route.
pub(crate) async fn start(
    url: &str,
    db: Db,
    parts: Parts,
    commands: mpsc::Receiver<Command>,
    blocks: mpsc::Receiver<Vec<BlockServed>>,
) -> Result<Arc<Shared>, FleetError> {
    migrate(&db).await?;
    let shared = Shared::new(url, db, parts);
    let leading = shared.lead().await?;
    if leading.is_none() {
        tracing::info!(node = %shared.node, "fleet: another node runs the tracker; this one hands it what it hears");
    }
    tokio::spawn(route(shared.clone(), commands, blocks, leading));
    Ok(shared)
}
