//! One fleet for many nodes (PostgreSQL).
//!
//! The tracker owns every change, so exactly one node runs it: the holder of a session
//! advisory lock (the *lease*) on a connection of its own, which a task keeps checking.
//! Each new leader raises the *term* in `fleet_leader` before it reads anything, and every
//! write transaction of its tracker first reads the term `FOR SHARE` and gives up unless it
//! is still its own: the raise waits for a former leader's writes in flight, and any write
//! it tries afterwards fails. When the leader dies its session ends, PostgreSQL frees the
//! lock (a vanished host: within about 10 s, by the TCP keepalives the lease session sets),
//! and another node (they try every second) takes it, loads the devices and the live
//! rollouts and goes on.
//!
//! Every other node (a follower) hands what it hears to the leader through the table
//! `fleet_inbox` and `NOTIFY`:
//! * events (downloads seen, HTTP check-ins, trigger acknowledgements) in batches every
//!   200 ms, CoAP blocks aggregated per peer and representation as the tracker does;
//! * requests (add, remove, report, rollout commands) one row each, with a deadline; the
//!   leader takes rows in a transaction fenced by its term (`FOR UPDATE SKIP LOCKED`),
//!   writes each answer into its row and notifies; the follower answers its caller, or
//!   withdraws the request and says that no leader answered in time.
//!
//! The leader writes the rollouts' gates to `fleet_gates` and waits (at most a second) for
//! the live followers to say they applied them (`fleet_nodes`) before it sends the triggers
//! that rely on them, so a device told to update may fetch from any node. Followers read
//! the gates on `NOTIFY` and every second. Reads (device lists, rollout members) go to the
//! tables from any node. Times in these tables are the database's clock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnection, PgListener};
use sqlx::{Connection as _, Row as _};
use suitcase_coap::BlockServed;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

use crate::db::{redact, Backend, Db};
use crate::gate::OneGate;
use crate::model::{Device, NewDevice};
use crate::report::Report;
use crate::rollout::{Plan, RolloutRequest, RolloutView};
use crate::{tracker, BaseUrls, Command, Control, FleetError, Heard, Reporter};
use tracker::{Parts, Served};

/// The advisory lock whose holder runs the tracker ("suitflee").
const LEASE_KEY: i64 = 0x7375_6974_666c_6565;
/// The lock that serialises the creation of the tables below.
const SCHEMA_KEY: i64 = 0x7375_6974_666c_7363;
const INBOX: &str = "suitcase_fleet_inbox";
const REPLIES: &str = "suitcase_fleet_reply";
const GATES: &str = "suitcase_fleet_gates";
/// The database's clock, in Unix milliseconds.
const NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

/// How long a follower waits for the leader's answer to most requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// … and to an import or a new rollout (many devices).
const LONG_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a follower tries to take the lease, and the leader checks it still holds it.
const CAMPAIGN: Duration = Duration::from_secs(1);
/// How long the lease connection has to answer the leader's check, or to connect.
const LEASE_CHECK: Duration = Duration::from_secs(3);
/// How often a follower hands its events on.
const FORWARD_EVERY: Duration = Duration::from_millis(200);
/// The backstop when a notification is lost (LISTEN refused, a reconnect).
const POLL: Duration = Duration::from_millis(500);
/// Events a follower holds at most between two hand-overs (the excess is counted dropped).
const MAX_EVENTS: usize = 20_000;
/// Requests a follower has waiting for the leader at most.
const MAX_WAITING: usize = 1024;
/// Inbox rows the leader takes at a time.
const BATCH: i64 = 128;
/// Event rows older than this are dropped unread (no leader for that long: stale).
const STALE_EVENTS_MS: i64 = 300_000;
/// Nodes heard from within this long count for [`await_gates`].
const ALIVE_MS: i64 = 5_000;
/// Node rows not heard from for this long are deleted.
const FORGET_NODES_MS: i64 = 86_400_000;
/// How long the leader waits for the followers to apply new gates before it sends the
/// triggers that rely on them.
const GATES_BARRIER: Duration = Duration::from_secs(1);

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS fleet_inbox (
        id BIGSERIAL PRIMARY KEY,
        node TEXT NOT NULL,
        kind TEXT NOT NULL,
        body TEXT NOT NULL,
        taken BOOLEAN NOT NULL DEFAULT FALSE,
        reply TEXT,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
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
        since BIGINT NOT NULL,
        term BIGINT NOT NULL
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

impl Request {
    fn timeout(&self) -> Duration {
        match self {
            Request::Add { .. } | Request::CreateRollout { .. } => LONG_REQUEST_TIMEOUT,
            _ => REQUEST_TIMEOUT,
        }
    }
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
    Heard(Heard),
    /// Blocks served: (peer, ETag, end, size).
    Blocks(Vec<(SocketAddr, [u8; 8], u64, u64)>),
}

/// `NOTIFY channel, payload` (sent when the transaction commits).
async fn notify(conn: &mut sqlx::AnyConnection, channel: &str, payload: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(conn)
        .await
        .map(|_| ())
}

fn db_err(e: sqlx::Error) -> FleetError {
    FleetError::Database(e.to_string())
}

fn json<T: Serialize>(v: &T) -> Result<String, FleetError> {
    serde_json::to_string(v).map_err(|e| FleetError::Database(format!("encoding for the inbox: {e}")))
}

/// This node's side of the shared fleet.
struct Shared {
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

/// The fence of every write of a shared fleet's tracker: the term is still `term` (read
/// `FOR SHARE`, so a new leader's raise waits for this transaction).
pub(crate) async fn check_term(conn: &mut sqlx::AnyConnection, term: i64) -> Result<(), FleetError> {
    let now: Option<i64> = sqlx::query_scalar("SELECT term FROM fleet_leader WHERE id = 1 FOR SHARE")
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?;
    if now == Some(term) {
        Ok(())
    } else {
        Err(FleetError::Unavailable(
            "this node no longer runs the fleet (another node took the lease)".into(),
        ))
    }
}

/// Write the gates for the followers (the leader, fenced); their version.
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
    notify(&mut tx, GATES, "").await.map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok(version)
}

/// Wait (at most [`GATES_BARRIER`]) until every live follower says it applied gates
/// `version`: a device told to update may then fetch from any node. Whether they all did.
pub(crate) async fn await_gates(db: &Db, version: i64, me: &str) -> Result<bool, FleetError> {
    let deadline = tokio::time::Instant::now() + GATES_BARRIER;
    loop {
        let behind: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM fleet_nodes WHERE node <> $1 AND seen_at > {NOW_MS} - $2 AND gates_version < $3"
        ))
        .bind(me)
        .bind(ALIVE_MS)
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
    sqlx::query(&format!(
        "INSERT INTO fleet_nodes (node, gates_version, seen_at) VALUES ($1, $2, {NOW_MS}) \
         ON CONFLICT (node) DO UPDATE SET gates_version = EXCLUDED.gates_version, seen_at = EXCLUDED.seen_at"
    ))
    .bind(me)
    .bind(gates_version)
    .execute(&db.pool)
    .await
    .map(|_| ())
    .map_err(db_err)
}

/// This node's name in logs and the tables: host, process and a random part (containers
/// share host names and pids).
fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32).rotate_left(16))
        .unwrap_or(0);
    format!("{host}:{}:{nonce:08x}", std::process::id())
}

/// The condition on `pg_locks` that names the lease (in this database).
const LEASE_LOCK: &str = "locktype = 'advisory' AND granted AND objsubid = 1 \
     AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
     AND classid::bigint = $1 AND objid::bigint = $2";

/// The lease: a connection of its own that holds the advisory lock; `None` when another
/// node holds it.
async fn take_lease(url: &str, db: &Db) -> Result<Option<PgConnection>, FleetError> {
    // Cheap first: no connection is made while the lease is visibly held.
    let held: bool = sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE {LEASE_LOCK})"))
        .bind(LEASE_KEY >> 32)
        .bind(LEASE_KEY & 0xffff_ffff)
        .fetch_one(&db.pool)
        .await
        .map_err(db_err)?;
    if held {
        return Ok(None);
    }
    let mut conn = match tokio::time::timeout(LEASE_CHECK, PgConnection::connect(url)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return Err(FleetError::Database(format!(
                "taking the fleet lease on {}: {e}",
                redact(url)
            )))
        }
        Err(_) => {
            return Err(FleetError::Database(format!(
                "taking the fleet lease on {}: no connection within {} s",
                redact(url),
                LEASE_CHECK.as_secs()
            )))
        }
    };
    // A leader whose machine vanishes (no FIN, no RST) is noticed by the server within
    // about 10 s, and its lease freed.
    for set in crate::db::PG_SESSION {
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
    Ok(Some(conn))
}

/// Keep the lease: check its connection every second; say when it is lost (an error, or
/// two checks without an answer), or close it when told to.
async fn keep_lease(
    mut conn: PgConnection,
    term: Arc<AtomicI64>,
    lost: oneshot::Sender<()>,
    mut release: oneshot::Receiver<()>,
) {
    let mut silent = 0;
    loop {
        tokio::select! {
            _ = &mut release => {
                // Closing the connection frees the lock for the next node at once.
                let _ = tokio::time::timeout(LEASE_CHECK, conn.close()).await;
                return;
            }
            _ = tokio::time::sleep(CAMPAIGN) => {}
        }
        // This session still holds the lock (not a pooler's shared backend that another
        // node's session also used), and the term is still this node's.
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE {LEASE_LOCK} AND pid = pg_backend_pid()) \
             AND ($3 = 0 OR COALESCE((SELECT term FROM fleet_leader WHERE id = 1) = $3, FALSE))"
        );
        let check = sqlx::query_scalar::<_, bool>(&sql)
            .bind(LEASE_KEY >> 32)
            .bind(LEASE_KEY & 0xffff_ffff)
            .bind(term.load(Ordering::Relaxed))
            .fetch_one(&mut conn);
        match tokio::time::timeout(LEASE_CHECK, check).await {
            Ok(Ok(true)) => silent = 0,
            Ok(Ok(false)) => {
                tracing::warn!("fleet: the lease or the term is another node's now");
                break;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "fleet: the lease connection failed");
                break;
            }
            Err(_) => {
                silent += 1;
                tracing::warn!(checks = silent, "fleet: the lease connection does not answer");
                if silent >= 2 {
                    break;
                }
            }
        }
    }
    let _ = lost.send(());
}

/// A task aborted when dropped (a `Leading` lost on the way, e.g. at shutdown, leaves no
/// tracker or consumer behind).
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What runs while this node leads.
struct Leading {
    term: i64,
    commands: mpsc::Sender<Command>,
    blocks: mpsc::Sender<Vec<BlockServed>>,
    tracker: Task,
    consumer: Task,
    /// Tells the consumer to stop between two batches.
    stop_consumer: Arc<AtomicBool>,
    keeper: JoinHandle<()>,
    release: oneshot::Sender<()>,
    lost: oneshot::Receiver<()>,
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

    /// Take the lease if it is free: raise the term, load the fleet, start the tracker.
    async fn lead(self: &Arc<Self>) -> Result<Option<Leading>, FleetError> {
        let Some(lease) = take_lease(&self.url, &self.db).await? else {
            return Ok(None);
        };
        let (lost_tx, lost) = oneshot::channel();
        let (release, release_rx) = oneshot::channel();
        let held_term = Arc::new(AtomicI64::new(0));
        let keeper = tokio::spawn(keep_lease(lease, held_term.clone(), lost_tx, release_rx));
        let started = async {
            // Waits for the writes of a former leader still in flight (they hold the row
            // FOR SHARE); any it tries later fail on the new term.
            // (Bounded: a former leader's dead session is ended by the server within 10 s,
            // see Db::open; past 15 s the lease is let go and taken again.)
            let mut tx = self.db.pool.begin().await.map_err(db_err)?;
            sqlx::query("SET LOCAL lock_timeout = '15s'")
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            let term: i64 = sqlx::query_scalar(&format!(
                "INSERT INTO fleet_leader (id, node, since, term) VALUES (1, $1, {NOW_MS}, 1) \
                 ON CONFLICT (id) DO UPDATE SET node = EXCLUDED.node, since = EXCLUDED.since, \
                 term = fleet_leader.term + 1 RETURNING term"
            ))
            .bind(&self.node)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            held_term.store(term, Ordering::Relaxed);
            // This node no longer follows.
            let _ = sqlx::query("DELETE FROM fleet_nodes WHERE node = $1")
                .bind(&self.node)
                .execute(&self.db.pool)
                .await;
            let db = Db {
                pool: self.db.pool.clone(),
                backend: Backend::Postgres,
                fence: Some(term),
            };
            let started = tracker::start(db.clone(), &self.parts, Some(self.node.clone())).await?;
            Ok::<_, FleetError>((term, db, started))
        }
        .await;
        let (term, db, started) = match started {
            Ok(x) => x,
            Err(e) => {
                let _ = release.send(());
                let _ = keeper.await;
                return Err(e);
            }
        };
        let tracker::Started {
            commands,
            blocks,
            task: tracker,
            devices: n,
            rollouts: live,
        } = started;
        let stop_consumer = Arc::new(AtomicBool::new(false));
        let consumer = tokio::spawn(consume(
            self.clone(),
            db,
            commands.clone(),
            blocks.clone(),
            stop_consumer.clone(),
        ));
        tracing::info!(node = %self.node, term, devices = n, rollouts = live, "fleet: this node holds the lease and runs the tracker");
        Ok(Some(Leading {
            term,
            commands,
            blocks,
            tracker: Task(tracker),
            consumer: Task(consumer),
            stop_consumer,
            keeper,
            release,
            lost,
        }))
    }

    /// Hand a request to the leader and wait for its answer.
    async fn request(&self, req: Request) -> Result<Reply, FleetError> {
        let timeout = req.timeout();
        let body = json(&req)?;
        let id = self
            .enqueue("request", body, i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX))
            .await?;
        let wake = Arc::new(Notify::new());
        self.waiters.lock().insert(id, wake.clone());
        let r = self.await_reply(id, &wake, timeout).await;
        self.waiters.lock().remove(&id);
        if r.is_err() {
            // Not to be run after its caller was told it failed.
            let _ = sqlx::query("DELETE FROM fleet_inbox WHERE id = $1 AND NOT taken")
                .bind(id)
                .execute(&self.db.pool)
                .await;
        }
        r
    }

    async fn await_reply(&self, id: i64, wake: &Notify, timeout: Duration) -> Result<Reply, FleetError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let row = sqlx::query("SELECT taken, reply FROM fleet_inbox WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.db.pool)
                .await
                .map_err(db_err)?;
            let Some(row) = row else {
                return Err(FleetError::Unavailable(
                    "the request was dropped unanswered (it expired): try again".into(),
                ));
            };
            let taken: bool = row.try_get("taken").map_err(db_err)?;
            if let Some(body) = row.try_get::<Option<String>, _>("reply").map_err(db_err)? {
                // Read: the row has done its work.
                let _ = sqlx::query("DELETE FROM fleet_inbox WHERE id = $1")
                    .bind(id)
                    .execute(&self.db.pool)
                    .await;
                return serde_json::from_str(&body)
                    .map_err(|e| FleetError::Database(format!("the leader's answer does not read: {e}")));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(FleetError::Unavailable(if taken {
                    format!(
                        "the fleet's leader took the request but did not answer within {} s",
                        timeout.as_secs()
                    )
                } else {
                    format!(
                        "no node ran the fleet within {} s (nothing was changed; try again)",
                        timeout.as_secs()
                    )
                }));
            }
            let _ = tokio::time::timeout(POLL, wake.notified()).await;
        }
    }

    /// Hand a batch of events to the leader.
    async fn hand_on(&self, events: &[Event]) -> Result<(), FleetError> {
        self.enqueue("events", json(&events)?, STALE_EVENTS_MS)
            .await
            .map(|_| ())
    }

    /// Put a row of `kind` in the inbox, to be taken within `ttl_ms`, and wake the leader;
    /// its id.
    async fn enqueue(&self, kind: &str, body: String, ttl_ms: i64) -> Result<i64, FleetError> {
        let mut tx = self.db.pool.begin().await.map_err(db_err)?;
        let id: i64 = sqlx::query_scalar(&format!(
            "INSERT INTO fleet_inbox (node, kind, body, created_at, expires_at) \
             VALUES ($1, $2, $3, {NOW_MS}, {NOW_MS} + $4) RETURNING id"
        ))
        .bind(&self.node)
        .bind(kind)
        .bind(body)
        .bind(ttl_ms)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        notify(&mut tx, INBOX, "").await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(id)
    }

    async fn answer(&self, id: i64, reply: &Reply) {
        let body = match json(reply) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "fleet: an answer could not be encoded");
                return;
            }
        };
        for attempt in 0..3 {
            let r = async {
                let mut tx = self.db.pool.begin().await?;
                sqlx::query("UPDATE fleet_inbox SET reply = $2 WHERE id = $1")
                    .bind(id)
                    .bind(&body)
                    .execute(&mut *tx)
                    .await?;
                notify(&mut tx, REPLIES, &id.to_string()).await?;
                tx.commit().await
            }
            .await;
            match r {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, row = id, attempt, "fleet: an answer could not be written");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// The router: every command and block batch of this node's `Fleet` handles goes to the
/// tracker when this node leads, else to the leader through the inbox. Taking the lease
/// and watching it run in tasks of their own: nothing here waits on the database but the
/// hand-over of the last events at shutdown.
async fn route(
    shared: Arc<Shared>,
    mut commands: mpsc::Receiver<Command>,
    mut blocks: mpsc::Receiver<Vec<BlockServed>>,
    mut leading: Option<Leading>,
) {
    let counters = shared.parts.counters.clone();
    let mut events: Vec<Event> = Vec::new();
    let mut served = Served::default();
    let mut tick = tokio::time::interval(FORWARD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut handing_on: Option<JoinHandle<()>> = None;
    let (won_tx, mut won) = mpsc::channel::<Leading>(1);
    let campaigner = Task(tokio::spawn(campaign(Arc::downgrade(&shared), won_tx)));
    let follower = Task(tokio::spawn(follow(Arc::downgrade(&shared))));
    counters.leading.store(leading.is_some(), Ordering::Relaxed);
    loop {
        let lost = async {
            match leading.as_mut() {
                Some(l) => {
                    let _ = (&mut l.lost).await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            c = commands.recv() => match c {
                None => break,
                Some(Command::Shutdown { reply }) => {
                    drop(campaigner);
                    drop(follower);
                    // A lease won meanwhile is let go.
                    while let Ok(l) = won.try_recv() {
                        let _ = stop_leading(l, false).await;
                    }
                    let r = match leading.take() {
                        Some(l) => stop_leading(l, true).await,
                        None => {
                            flush_events(&shared, &mut events, &mut served).await;
                            let _ = sqlx::query("DELETE FROM fleet_nodes WHERE node = $1")
                                .bind(&shared.node)
                                .execute(&shared.db.pool)
                                .await;
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
                            // The tracker ended: follow, and hand this on.
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
                None => served.add(&batch, &counters.blocks_dropped),
            },
            Some(l) = won.recv() => {
                if leading.is_some() {
                    // Cannot happen (one lease per node); keep the one in force.
                    let _ = stop_leading(l, false).await;
                    continue;
                }
                // What this node held for the leader goes to itself now.
                for e in take_events(&mut events, &mut served) {
                    apply_event(e, &l.commands, &l.blocks).await;
                }
                leading = Some(l);
                counters.leading.store(true, Ordering::Relaxed);
            }
            () = lost => {
                if let Some(l) = leading.take() {
                    tracing::warn!(node = %shared.node, term = l.term, "fleet: the lease is lost; this node follows");
                    let _ = stop_leading(l, false).await;
                }
                counters.leading.store(false, Ordering::Relaxed);
            }
            _ = tick.tick() => {
                if leading.as_ref().is_some_and(|l| l.tracker.0.is_finished()) {
                    if let Some(l) = leading.take() {
                        tracing::warn!(node = %shared.node, "fleet: the tracker ended; this node follows");
                        let _ = stop_leading(l, false).await;
                    }
                    counters.leading.store(false, Ordering::Relaxed);
                }
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
            }
        }
    }
    // Every handle is gone.
    drop(campaigner);
    drop(follower);
    while let Ok(l) = won.try_recv() {
        let _ = stop_leading(l, false).await;
    }
    if let Some(l) = leading.take() {
        let _ = stop_leading(l, true).await;
    }
}

/// Try to take the lease every second while this node follows; hand a win to the router.
async fn campaign(shared: std::sync::Weak<Shared>, won: mpsc::Sender<Leading>) {
    loop {
        tokio::time::sleep(CAMPAIGN).await;
        let Some(s) = shared.upgrade() else { return };
        if s.parts.counters.leading.load(Ordering::Relaxed) {
            continue;
        }
        match s.lead().await {
            Ok(Some(l)) => {
                // (Until the router has it, a try finds the lease held: by this node.)
                if let Err(mpsc::error::SendError(l)) = won.send(l).await {
                    let _ = stop_leading(l, false).await;
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "fleet: taking the lease failed"),
        }
    }
}

/// Stop leading: with `flush`, the tracker writes what it holds first (a clean shutdown);
/// without, it is stopped at once (the lease is gone: its writes would fail anyway).
async fn stop_leading(l: Leading, flush: bool) -> Result<(), FleetError> {
    // The consumer finishes the batch it is in (its requests reach the tracker).
    l.stop_consumer.store(true, Ordering::Relaxed);
    let mut consumer = l.consumer;
    let _ = tokio::time::timeout(Duration::from_secs(2), &mut consumer.0).await;
    drop(consumer);
    let r = if flush && !l.tracker.0.is_finished() {
        let (tx, rx) = oneshot::channel();
        match l.commands.send(Command::Shutdown { reply: tx }).await {
            Ok(()) => rx.await.unwrap_or(Err(FleetError::Stopped)),
            Err(_) => Err(FleetError::Stopped),
        }
    } else {
        l.tracker.0.abort();
        Ok(())
    };
    let _ = l.release.send(());
    let _ = l.keeper.await;
    r
}

fn take_events(events: &mut Vec<Event>, served: &mut Served) -> Vec<Event> {
    let mut out = std::mem::take(events);
    if !served.is_empty() {
        let mut blocks = Vec::new();
        for ((peer, etag), a) in served.take() {
            blocks.push((peer, etag, a.min_end, a.size));
            if a.max_end != a.min_end {
                blocks.push((peer, etag, a.max_end, a.size));
            }
        }
        out.push(Event::Blocks(blocks));
    }
    out
}

async fn flush_events(shared: &Shared, events: &mut Vec<Event>, served: &mut Served) {
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
        Command::Heard(h) => Event::Heard(h),
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
        let _ = reply.send(Err(FleetError::Unavailable(format!(
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
    match e {
        Event::Heard(h) => {
            let _ = commands.send(Command::Heard(h)).await;
        }
        Event::Blocks(b) => {
            let batch = b
                .into_iter()
                .map(|(peer, etag, end, size)| BlockServed { peer, etag, end, size })
                .collect();
            let _ = blocks.send(batch).await;
        }
    }
}

/// The leader's side of the inbox: apply the followers' events, answer their requests.
async fn consume(
    shared: Arc<Shared>,
    db: Db,
    commands: mpsc::Sender<Command>,
    blocks: mpsc::Sender<Vec<BlockServed>>,
    stop: Arc<AtomicBool>,
) {
    let mut last_cleanup = tokio::time::Instant::now() - Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) {
        if last_cleanup.elapsed() >= Duration::from_secs(10) {
            last_cleanup = tokio::time::Instant::now();
            if let Err(e) = cleanup(&db).await {
                tracing::warn!(error = %e, "fleet: cleaning the inbox failed");
            }
        }
        match consume_once(&shared, &db, &commands, &blocks).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "fleet: reading the inbox failed");
                tokio::time::sleep(POLL).await;
            }
        }
        let _ = tokio::time::timeout(POLL, shared.inbox.notified()).await;
    }
}

/// Answers nobody came for, requests past their deadline, stale events, nodes long gone.
async fn cleanup(db: &Db) -> Result<(), FleetError> {
    sqlx::query(&format!(
        "DELETE FROM fleet_inbox WHERE expires_at < {NOW_MS} - CASE WHEN taken THEN $1 ELSE 0 END"
    ))
    .bind(i64::try_from(LONG_REQUEST_TIMEOUT.as_millis()).unwrap_or(i64::MAX))
    .execute(&db.pool)
    .await
    .map_err(db_err)?;
    sqlx::query(&format!("DELETE FROM fleet_nodes WHERE seen_at < {NOW_MS} - $1"))
        .bind(FORGET_NODES_MS)
        .execute(&db.pool)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Take one batch of the inbox (in a transaction fenced by the term: a former leader takes
/// nothing) and apply it; whether the batch was full.
async fn consume_once(
    shared: &Arc<Shared>,
    db: &Db,
    commands: &mpsc::Sender<Command>,
    blocks: &mpsc::Sender<Vec<BlockServed>>,
) -> Result<bool, FleetError> {
    let mut tx = db.begin_write().await?;
    let rows = sqlx::query(&format!(
        "SELECT id, kind, body FROM fleet_inbox WHERE NOT taken AND expires_at >= {NOW_MS} \
         ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
    ))
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    let full = rows.len() as i64 == BATCH;
    let mut taken = Vec::with_capacity(rows.len());
    for row in rows {
        let id: i64 = row.try_get("id").map_err(db_err)?;
        let kind: String = row.try_get("kind").map_err(db_err)?;
        let body: String = row.try_get("body").map_err(db_err)?;
        taken.push((id, kind, body));
    }
    let (event_ids, request_ids): (Vec<i64>, Vec<i64>) = {
        let (e, r): (Vec<_>, Vec<_>) = taken.iter().partition(|(_, k, _)| k == "events");
        (e.iter().map(|x| x.0).collect(), r.iter().map(|x| x.0).collect())
    };
    // (The ids are the database's own integers; the Any driver binds no arrays.)
    let list = |ids: &[i64]| ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    if !event_ids.is_empty() {
        sqlx::query(&format!("DELETE FROM fleet_inbox WHERE id IN ({})", list(&event_ids)))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
    }
    if !request_ids.is_empty() {
        sqlx::query(&format!(
            "UPDATE fleet_inbox SET taken = TRUE WHERE id IN ({})",
            list(&request_ids)
        ))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)?;
    // In the order they were written.
    for (id, kind, body) in taken {
        if kind == "events" {
            match serde_json::from_str::<Vec<Event>>(&body) {
                Ok(events) => {
                    for e in events {
                        apply_event(e, commands, blocks).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, row = id, "fleet: an inbox row does not read; dropped"),
            }
            continue;
        }
        match serde_json::from_str::<Request>(&body) {
            Ok(req) => answer(shared.clone(), id, req, commands).await,
            Err(e) => {
                let r = Reply::Error(FleetError::Invalid(format!("a request this leader cannot read: {e}")));
                shared.answer(id, &r).await;
            }
        }
    }
    Ok(full)
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
                Err(_) => Reply::Error(FleetError::Unavailable(
                    "the fleet's leader stopped before it answered: the outcome is unknown (look before trying again)"
                        .into(),
                )),
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

/// Every node: LISTEN for the inbox and the answers and the gates; a follower applies the
/// leader's gates on a notification and every second (with LISTEN refused or its
/// connection lost, by that poll alone, trying again every 10 s) and says so in
/// `fleet_nodes`.
async fn follow(shared: std::sync::Weak<Shared>) {
    let mut listener: Option<PgListener> = None;
    let mut gates_version: i64 = -1;
    let mut last_gates_read = tokio::time::Instant::now() - CAMPAIGN;
    let mut next_listen = tokio::time::Instant::now();
    loop {
        let Some(me) = shared.upgrade() else { return };
        if listener.is_none() && tokio::time::Instant::now() >= next_listen {
            let listen = async {
                let mut l = PgListener::connect(&me.url).await?;
                l.listen_all([INBOX, REPLIES, GATES]).await?;
                Ok::<_, sqlx::Error>(l)
            };
            match tokio::time::timeout(LEASE_CHECK, listen).await {
                Ok(Ok(l)) => listener = Some(l),
                Ok(Err(e)) => tracing::warn!(error = %e, "fleet: LISTEN failed; polling"),
                Err(_) => tracing::warn!("fleet: no listener connection within 3 s; polling"),
            }
            if listener.is_none() {
                // Polling meanwhile; a new try in 10 s.
                next_listen = tokio::time::Instant::now() + Duration::from_secs(10);
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
                // Without notifications: the waiters and the inbox poll by themselves.
                tokio::time::sleep(POLL).await;
            }
        }
        let leading = me.parts.counters.leading.load(Ordering::Relaxed);
        if leading {
            gates_version = -1;
        } else if gates_changed || last_gates_read.elapsed() >= CAMPAIGN {
            last_gates_read = tokio::time::Instant::now();
            gates_version = follow_gates(&me, gates_version).await;
        }
    }
}

/// Apply the leader's gates if they changed since `seen`, and say so; the version applied.
async fn follow_gates(me: &Shared, seen: i64) -> i64 {
    let mut version = seen;
    match read_gates(&me.db, seen).await {
        Ok(Some((v, g))) => {
            version = v;
            me.parts.gates.set(g);
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "fleet: reading the leader's gates failed"),
    }
    if let Err(e) = heartbeat(&me.db, &me.node, version).await {
        tracing::warn!(error = %e, "fleet: writing this node's heartbeat failed");
    }
    version
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
/// start), else apply the leader's gates before serving; then route.
pub(crate) async fn start(
    url: &str,
    db: Db,
    parts: Parts,
    commands: mpsc::Receiver<Command>,
    blocks: mpsc::Receiver<Vec<BlockServed>>,
) -> Result<(), FleetError> {
    migrate(&db).await?;
    let shared = Shared::new(url, db, parts);
    let leading = shared.lead().await?;
    if leading.is_none() {
        // Gates hold from the first request this node serves.
        if let Some((_, g)) = read_gates(&shared.db, -1).await? {
            shared.parts.gates.set(g);
        }
        tracing::info!(node = %shared.node, "fleet: another node runs the tracker; this one hands it what it hears");
    }
    // The router keeps this node's side alive while any `Fleet` handle does.
    tokio::spawn(route(shared, commands, blocks, leading));
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn what_followers_hand_on_reads_back() {
        let req = Request::Report {
            from: Reporter::Peer("[::1]:5683".parse().unwrap(), "fw/a".into()),
            report: Report {
                sequence_number: Some(3),
                ok: false,
                reason: Some("flash".into()),
                reference: None,
            },
        };
        let back: Request = serde_json::from_str(&json(&req).unwrap()).unwrap();
        assert!(matches!(back, Request::Report { report, .. } if report.reason.as_deref() == Some("flash")));
        let events = vec![
            Event::Blocks(vec![("127.0.0.1:1".parse().unwrap(), *b"12345678", 1024, 4096)]),
            Event::Heard(Heard::Secured {
                id: "d1".into(),
                peer: "[::1]:2".parse().unwrap(),
            }),
        ];
        let back: Vec<Event> = serde_json::from_str(&json(&events).unwrap()).unwrap();
        assert!(matches!(&back[0], Event::Blocks(b) if b[0].2 == 1024 && b[0].1 == *b"12345678"));
        let err = Reply::Error(FleetError::NoRollout(7));
        let back: Reply = serde_json::from_str(&json(&err).unwrap()).unwrap();
        assert!(matches!(back, Reply::Error(FleetError::NoRollout(7))));
        // Followers aggregate blocks as the tracker does: the smallest and largest end.
        let mut served = Served::default();
        let block = |end| BlockServed {
            peer: "[::1]:9".parse().unwrap(),
            etag: *b"abcdefgh",
            end,
            size: 8192,
        };
        served.add(&[block(4096), block(64)], &std::sync::atomic::AtomicU64::new(0));
        let out = take_events(&mut Vec::new(), &mut served);
        assert!(matches!(&out[..], [Event::Blocks(b)] if b.len() == 2));
        assert!(served.is_empty());
    }

    #[test]
    fn node_names_carry_a_random_part() {
        let a = node_name();
        std::thread::sleep(Duration::from_millis(2));
        assert_ne!(a, node_name());
    }
}
