//! The shared store of a suitcase cluster: any number of nodes serve the same publish-ids.
//!
//! * **Metadata** (publish-ids, versions, removals) lives in PostgreSQL. A publish locks its
//!   publish-id's row (`store_ids … FOR UPDATE`), so version numbers and manifest sequence
//!   numbers grow across nodes; `(publish_id, seq)` is the primary key, so no two nodes can
//!   ever store the same version. A version becomes visible in the one transaction that
//!   inserts it, after its contents are in the object store.
//! * **Contents** live in an S3-compatible object store (`object_store`), content-addressed
//!   by SHA-256 under `<prefix>/blobs/<hex>`. A blob is written only when absent (a `HEAD`
//!   first); the same name always holds the same bytes, so a concurrent second write of it
//!   is harmless.
//! * **Changes are numbered in commit order:** every publish and removal takes one advisory
//!   lock before it draws its number from the `store_changes` sequence and keeps it until it
//!   commits, so a node reading "changes after n" never misses one that commits late.
//! * **Each node** keeps the whole index in memory (like the local store) and a bounded cache
//!   of contents: small files in memory, others in a directory on local disk with an LRU
//!   byte budget. It learns of other nodes' publishes and removals from PostgreSQL
//!   `LISTEN/NOTIFY` (channel `suitcase_store`), reading every change numbered after the
//!   last it saw (`store_versions.changed`), and polls the same query every few seconds in
//!   case a notification was lost. The newest version of each publish-id a change brings
//!   (at start: of every publish-id) is fetched into the cache at once, four at a time, so
//!   the first device rarely waits for the object store; older ones are fetched when asked
//!   for.
//!
//! The [`Store`] trait is synchronous; the database and object store calls run on the tokio
//! runtime the store was opened on (from a blocking thread, or `block_in_place` from a
//! runtime worker).

mod cache;
mod gc;
pub mod tokens;

pub use gc::GcReport;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _};
use parking_lot::RwLock;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::Row as _;
use suitcase_store::{
    Blob, BuildManifest, CacheStats, Draft, FileEntry, PublishRequest, Sha256, Store, StoreError, Version,
};
use tokio::runtime::Handle;

use crate::cache::DiskCache;

/// The channel nodes announce changes on.
pub const CHANNEL: &str = "suitcase_store";

/// How often a node reads changes even without a notification.
const POLL: Duration = Duration::from_secs(5);

/// Longest wait for one object store or database call a device's request depends on.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait of the CoAP thread for a file missing from the cache.
const COAP_WAIT: Duration = Duration::from_secs(2);

/// Changes read per query.
const CHANGES_PER_READ: i64 = 10_000;

/// The advisory lock every change takes before it draws its `changed` number and holds
/// until it commits: changes then commit in the order of their numbers, so a node that read
/// up to number n can never later see a smaller one appear.
const CHANGE_LOCK: i64 = 0x7375_6974_6361_7365; // "suitcase"

/// A pool of at most `max` connections to `url`, its tables created or migrated (the
/// fleet's migrations share sqlx's table: each migrator ignores the other's).
pub(crate) async fn connect(url: &str, max: u32) -> Result<PgPool, SharedError> {
    let pool = PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .map_err(|e| SharedError::Database(format!("connecting to {}: {e}", redact(url))))?;
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator
        .run(&pool)
        .await
        .map_err(|e| SharedError::Database(format!("migrating: {e}")))?;
    Ok(pool)
}

/// `NOTIFY channel, payload` (sent when the transaction commits).
pub(crate) async fn notify(conn: &mut sqlx::PgConnection, channel: &str, payload: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(conn)
        .await
        .map(|_| ())
}

/// Take [`CHANGE_LOCK`] for the rest of the transaction.
/// Bound what one transaction may wait for (a stalled node holding a lock must not hang
/// every publish of the cluster).
async fn bounded(tx: &mut sqlx::PgConnection) -> Result<(), StoreError> {
    for set in ["SET LOCAL lock_timeout = '10s'", "SET LOCAL statement_timeout = '30s'"] {
        sqlx::query(set).execute(&mut *tx).await.map_err(db)?;
    }
    Ok(())
}

async fn change_lock(tx: &mut sqlx::PgConnection) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(CHANGE_LOCK)
        .execute(tx)
        .await
        .map(|_| ())
        .map_err(db)
}

/// How the shared store is reached and how much it caches.
#[derive(Clone)]
pub struct SharedConfig {
    /// `postgres://user:password@host/db`.
    pub database: String,
    /// `s3://bucket[/prefix]`.
    pub blobs: String,
    /// The S3 endpoint (`http://127.0.0.1:9000` for a local server); `None`: AWS, or
    /// `AWS_ENDPOINT_URL`.
    pub endpoint: Option<String>,
    /// Directory of the local content cache (emptied at start).
    pub cache_dir: PathBuf,
    /// Bytes of contents held in memory at most.
    pub memory_bytes: u64,
    /// Bytes of contents kept on local disk at most.
    pub disk_bytes: u64,
    /// S3 access key id and secret, and region, given in code; `None`: from the `AWS_*`
    /// environment variables (as the server does).
    pub credentials: Option<S3Credentials>,
}

/// S3 credentials given in code.
#[derive(Clone)]
pub struct S3Credentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// `AWS_REGION`.
    pub region: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SharedConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedConfig")
            .field("database", &redact(&self.database))
            .field("blobs", &self.blobs)
            .field("endpoint", &self.endpoint)
            .field("cache_dir", &self.cache_dir)
            .field("memory_bytes", &self.memory_bytes)
            .field("disk_bytes", &self.disk_bytes)
            .field("credentials", &self.credentials)
            .finish()
    }
}

/// Errors opening the shared store.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// The configuration is not usable.
    #[error("{0}")]
    Config(String),
    /// The database failed.
    #[error("database: {0}")]
    Database(String),
    /// The object store failed.
    #[error("object store: {0}")]
    Objects(String),
    /// The local cache directory failed.
    #[error("cache directory {path}: {source}")]
    Cache {
        /// The directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

pub use suitcase_store::redact_url as redact;

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

fn db(e: sqlx::Error) -> StoreError {
    unavailable("database", e)
}

fn to_i64(n: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::BadRequest(format!("{what} {n} is too large")))
}

fn to_u64(n: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError::Corrupt {
        path: "database".into(),
        what: format!("{what} {n}"),
    })
}

/// The versions of each publish-id a node serves.
type Index = BTreeMap<String, BTreeMap<u64, Arc<Version>>>;

/// Take a removed version out of the index (and its publish-id with its last version).
fn forget(idx: &mut Index, publish_id: &str, seq: u64) {
    if let Some(versions) = idx.get_mut(publish_id) {
        versions.remove(&seq);
        if versions.is_empty() {
            idx.remove(publish_id);
        }
    }
}

/// A store shared by many nodes (see the crate documentation).
#[derive(Clone)]
pub struct SharedStore {
    inner: Arc<Inner>,
}

struct Inner {
    rt: Handle,
    pool: PgPool,
    objects: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    index: RwLock<Index>,
    last_change: AtomicI64,
    generation: AtomicU64,
    memory: suitcase_store::ContentCache,
    /// Files up to this size are held in memory; larger ones on disk.
    memory_item: u64,
    disk: DiskCache,
    hits: AtomicU64,
    misses: AtomicU64,
    refresh: tokio::sync::Mutex<()>,
    prefetching: tokio::sync::Semaphore,
    /// Files being fetched for the CoAP thread.
    inflight: parking_lot::Mutex<std::collections::HashSet<Sha256>>,
}

impl SharedStore {
    /// Connect, create the tables if needed, read the index and start following changes.
    /// Must be called on the tokio runtime the store will use.
    pub async fn open(config: &SharedConfig) -> Result<SharedStore, SharedError> {
        let (objects, prefix) = object_store_of(config)?;
        let pool = connect(&config.database, 8).await?;
        let disk = DiskCache::open(&config.cache_dir, config.disk_bytes).map_err(|source| SharedError::Cache {
            path: config.cache_dir.display().to_string(),
            source,
        })?;
        let (memory, memory_item) = suitcase_store::content_cache(config.memory_bytes.max(1 << 20));
        let inner = Arc::new(Inner {
            rt: Handle::current(),
            pool,
            objects,
            prefix,
            index: RwLock::new(BTreeMap::new()),
            last_change: AtomicI64::new(0),
            generation: AtomicU64::new(1),
            memory,
            memory_item,
            disk,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            refresh: tokio::sync::Mutex::new(()),
            prefetching: tokio::sync::Semaphore::new(4),
            inflight: parking_lot::Mutex::new(std::collections::HashSet::new()),
        });
        inner
            .refresh()
            .await
            .map_err(|e| SharedError::Database(e.to_string()))?;
        tokio::spawn(follow(Arc::downgrade(&inner)));
        let ids = inner.index.read().len();
        tracing::info!(database = %redact(&config.database), blobs = %config.blobs, publish_ids = ids, "shared store open");
        Ok(SharedStore { inner })
    }

    /// Read the changes made since the last read (other nodes' publishes and removals).
    pub async fn refresh(&self) -> Result<(), StoreError> {
        self.inner.refresh().await
    }

    /// Whether the database and the object store answer (readiness). The object store is
    /// asked for a key that does not exist: "not found" is an answer.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.inner.pool)
            .await
            .map(|_| ())
            .map_err(db)?;
        let probe = self.inner.prefix.clone().join("readyz-probe");
        match self.inner.objects.head(&probe).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(unavailable("object store", e)),
        }
    }
}

/// The object store and key prefix of `config.blobs`.
fn object_store_of(config: &SharedConfig) -> Result<(Arc<dyn ObjectStore>, ObjectPath), SharedError> {
    let rest = config
        .blobs
        .strip_prefix("s3://")
        .ok_or_else(|| SharedError::Config(format!("--blobs {:?}: s3://bucket[/prefix]", config.blobs)))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(SharedError::Config(format!("--blobs {:?}: no bucket", config.blobs)));
    }
    let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(c) = &config.credentials {
        builder = builder
            .with_access_key_id(&c.access_key_id)
            .with_secret_access_key(&c.secret_access_key)
            .with_region(&c.region);
    }
    if let Some(endpoint) = &config.endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"))
            .with_virtual_hosted_style_request(false);
    }
    let store = builder.build().map_err(|e| SharedError::Objects(e.to_string()))?;
    let prefix = ObjectPath::parse(prefix.trim_matches('/'))
        .map_err(|e| SharedError::Config(format!("--blobs prefix {prefix:?}: {e}")))?;
    Ok((Arc::new(store), prefix))
}

/// Waits for a `NOTIFY` on one channel, or a poll interval as a backstop (no listener: a
/// pooler that refuses `LISTEN`, a lost connection, reconnected at the next wait).
pub(crate) struct Wake {
    pool: PgPool,
    channel: &'static str,
    poll: Duration,
    listener: Option<PgListener>,
}

impl Wake {
    pub(crate) fn new(pool: PgPool, channel: &'static str, poll: Duration) -> Wake {
        Wake {
            pool,
            channel,
            poll,
            listener: None,
        }
    }

    /// Until the next notification (`true`) or the poll interval (`false`).
    pub(crate) async fn next(&mut self) -> bool {
        if self.listener.is_none() {
            match PgListener::connect_with(&self.pool).await {
                Ok(mut l) => match l.listen(self.channel).await {
                    Ok(()) => self.listener = Some(l),
                    Err(e) => tracing::warn!(channel = self.channel, error = %e, "LISTEN failed; polling"),
                },
                Err(e) => tracing::warn!(channel = self.channel, error = %e, "no listener connection; polling"),
            }
        }
        match self.listener.as_mut() {
            Some(l) => match tokio::time::timeout(self.poll, l.recv()).await {
                Ok(Ok(_)) => true,
                Ok(Err(e)) => {
                    tracing::warn!(channel = self.channel, error = %e, "the listener failed; reconnecting");
                    self.listener = None;
                    false
                }
                Err(_) => false,
            },
            None => {
                tokio::time::sleep(self.poll).await;
                false
            }
        }
    }
}

/// Follow other nodes' changes until the store is dropped: LISTEN, and a poll as a backstop.
async fn follow(inner: Weak<Inner>) {
    let Some(pool) = inner.upgrade().map(|me| me.pool.clone()) else {
        return;
    };
    let mut wake = Wake::new(pool, CHANNEL, POLL);
    loop {
        let heard = wake.next().await;
        let Some(me) = inner.upgrade() else { return };
        if let Err(e) = me.refresh().await {
            tracing::warn!(error = %e, notified = heard, "shared store: reading changes failed");
        }
    }
}

impl Inner {
    /// Run `f` to completion on the store's runtime from a synchronous caller: a plain or
    /// blocking thread, or a worker of a multi-threaded runtime (`block_in_place`). A
    /// current-thread runtime cannot wait here (its one thread would stop): refused.
    fn block<T, F: Future<Output = Result<T, StoreError>>>(&self, f: F) -> Result<T, StoreError> {
        use tokio::runtime::RuntimeFlavor;
        match Handle::try_current().map(|h| h.runtime_flavor()) {
            Err(_) => self.rt.block_on(f),
            Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(|| self.rt.block_on(f)),
            Ok(_) => Err(StoreError::Unavailable(
                "the shared store was called from a current-thread runtime".into(),
            )),
        }
    }

    /// [`Inner::fetch_into_cache`] for a synchronous caller on any thread (the CoAP thread
    /// runs its own current-thread runtime: the fetch then runs on the store's runtime).
    fn fetch_blocking(self: &Arc<Self>, d: &Sha256) -> Result<Bytes, StoreError> {
        use tokio::runtime::RuntimeFlavor;
        match Handle::try_current().map(|h| h.runtime_flavor()) {
            Err(_) | Ok(RuntimeFlavor::MultiThread) => self.block(self.fetch_into_cache(d)),
            Ok(_) => {
                // The CoAP thread serves every device of the node: it waits for the object
                // store at most COAP_WAIT, while one fetch per file goes on in the
                // background and fills the cache for the device's retransmission.
                if self.inflight.lock().insert(*d) {
                    let (me, d) = (self.clone(), *d);
                    self.rt.spawn(async move {
                        if let Err(e) = me.fetch_into_cache(&d).await {
                            tracing::warn!(error = %e, "shared store: fetching a file failed");
                        }
                        me.inflight.lock().remove(&d);
                    });
                }
                let start = std::time::Instant::now();
                loop {
                    if let Some(b) = self.memory.get(d).or_else(|| self.disk.read(d)) {
                        return Ok(b);
                    }
                    if !self.inflight.lock().contains(d) || start.elapsed() >= COAP_WAIT {
                        return Err(unavailable("object store", "the file is being fetched into the cache"));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    fn key(&self, d: &Sha256) -> ObjectPath {
        self.prefix.clone().join("blobs").join(d.to_hex())
    }

    async fn refresh(self: &Arc<Self>) -> Result<(), StoreError> {
        let _one = self.refresh.lock().await;
        loop {
            let last = self.last_change.load(Ordering::Acquire);
            let rows = sqlx::query(
                "SELECT publish_id, seq, record, removed, changed FROM store_versions \
                 WHERE changed > $1 ORDER BY changed LIMIT $2",
            )
            .bind(last)
            .bind(CHANGES_PER_READ)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            let n = rows.len();
            let mut fresh = Vec::new();
            let mut newest = last;
            {
                let mut idx = self.index.write();
                for row in rows {
                    let id: String = row.try_get("publish_id").map_err(db)?;
                    let seq = to_u64(row.try_get("seq").map_err(db)?, "version")?;
                    let removed: bool = row.try_get("removed").map_err(db)?;
                    newest = newest.max(row.try_get("changed").map_err(db)?);
                    if removed {
                        forget(&mut idx, &id, seq);
                        continue;
                    }
                    let record: String = row.try_get("record").map_err(db)?;
                    match suitcase_store::version_from_json(&record, &format!("database: {id} version {seq}")) {
                        Ok(v) => {
                            let v = Arc::new(v);
                            let known = idx.get(&id).is_some_and(|m| m.contains_key(&seq));
                            if !known {
                                fresh.push(v.clone());
                            }
                            idx.entry(id).or_default().insert(seq, v);
                        }
                        Err(e) => tracing::error!(error = %e, "shared store: a version record is unreadable; skipped"),
                    }
                }
            }
            self.last_change.store(newest, Ordering::Release);
            if newest != last {
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
            // The newest version of each publish-id the change brought: what devices ask
            // for next (at start that is one version per publish-id, not the whole history).
            let mut newest_of: BTreeMap<String, Arc<Version>> = BTreeMap::new();
            for v in fresh {
                match newest_of.get(&v.publish_id) {
                    Some(n) if n.seq >= v.seq => {}
                    _ => {
                        newest_of.insert(v.publish_id.clone(), v);
                    }
                }
            }
            for v in newest_of.into_values() {
                let me = self.clone();
                tokio::spawn(async move {
                    // A few at a time: a node starting on a large store does not flood it.
                    let Ok(_slot) = me.prefetching.acquire().await else {
                        return;
                    };
                    me.prefetch(&v).await;
                });
            }
            if (n as i64) < CHANGES_PER_READ {
                return Ok(());
            }
        }
    }

    /// Bring a version's contents into the cache (errors are logged: a device's request
    /// fetches again).
    async fn prefetch(&self, v: &Version) {
        let start = std::time::Instant::now();
        let mut bytes = 0;
        for f in v.files.iter().chain(v.manifest.as_ref().map(|m| &m.file)) {
            if self.cached(f) {
                continue;
            }
            match self.fetch_into_cache(&f.sha256).await {
                Ok(data) => bytes += data.len(),
                Err(e) => {
                    tracing::warn!(error = %e, publish_id = %v.publish_id, file = %f.name, "shared store: prefetch failed")
                }
            }
        }
        if bytes > 0 {
            let elapsed_ms = start.elapsed().as_millis() as u64;
            tracing::info!(publish_id = %v.publish_id, version = v.seq, bytes, elapsed_ms, "shared store: contents fetched into the cache");
        }
    }

    fn cached(&self, f: &FileEntry) -> bool {
        if f.size <= self.memory_item {
            self.memory.get(&f.sha256).is_some()
        } else {
            self.disk.contains(&f.sha256)
        }
    }

    /// Put contents the node has into its cache.
    fn keep(&self, d: &Sha256, data: &Bytes) {
        if data.len() as u64 <= self.memory_item {
            self.memory.insert(*d, data.clone());
        } else if let Err(e) = self.disk.insert(d, data) {
            tracing::warn!(error = %e, "shared store: the cache directory cannot take a file");
        }
    }

    /// A blob from the object store, checked against its digest, and kept in the cache.
    async fn fetch_into_cache(&self, d: &Sha256) -> Result<Bytes, StoreError> {
        let data = self.fetch(d).await?;
        self.keep(d, &data);
        Ok(data)
    }

    /// A blob from the object store, checked against its digest.
    async fn fetch(&self, d: &Sha256) -> Result<Bytes, StoreError> {
        self.misses.fetch_add(1, Ordering::Relaxed);
        let key = self.key(d);
        let get = async {
            let r = self.objects.get(&key).await?;
            r.bytes().await
        };
        let data = match tokio::time::timeout(CALL_TIMEOUT, get).await {
            Ok(Ok(b)) => b,
            Ok(Err(object_store::Error::NotFound { .. })) => {
                return Err(StoreError::Corrupt {
                    path: key.to_string(),
                    what: "a stored version's content is missing from the object store".into(),
                })
            }
            Ok(Err(e)) => return Err(unavailable("object store", e)),
            Err(_) => return Err(unavailable("object store", "no answer within 30 s")),
        };
        if Sha256::of(&data) != *d {
            return Err(StoreError::Corrupt {
                path: key.to_string(),
                what: "content does not match its digest".into(),
            });
        }
        Ok(data)
    }

    /// Store a blob unless the object store has it.
    async fn put(&self, d: &Sha256, data: Bytes) -> Result<(), StoreError> {
        let key = self.key(d);
        let put = async {
            match self.objects.head(&key).await {
                Ok(_) => return Ok(()),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            self.objects.put(&key, data.into()).await.map(|_| ())
        };
        match tokio::time::timeout(CALL_TIMEOUT, put).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(unavailable("object store", e)),
            Err(_) => Err(unavailable("object store", "no answer within 30 s")),
        }
    }

    async fn publish(
        self: &Arc<Self>,
        req: PublishRequest,
        build: Box<BuildManifest<'_>>,
    ) -> Result<Arc<Version>, StoreError> {
        let entries = suitcase_store::prepare_files(&req)?;
        // Claimed before they are looked for: a collection never deletes them under us.
        let claims: Vec<String> = entries.iter().map(|e| e.sha256.to_hex()).collect();
        self.claim(&claims).await?;
        // Contents first, outside any transaction: idempotent.
        for (f, e) in req.files.iter().zip(&entries) {
            self.put(&e.sha256, f.data.clone()).await?;
        }
        let id = req.publish_id.clone();
        let mut tx = self.pool.begin().await.map_err(db)?;
        bounded(&mut tx).await?;
        sqlx::query("INSERT INTO store_ids (publish_id, max_seq) VALUES ($1, 0) ON CONFLICT DO NOTHING")
            .bind(&id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        // Every node's publish of this id waits here for the one before it.
        let row = sqlx::query("SELECT max_seq, max_sequence_number FROM store_ids WHERE publish_id = $1 FOR UPDATE")
            .bind(&id)
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
        let max_seq = to_u64(row.try_get("max_seq").map_err(db)?, "version")?;
        let max_sequence_number = row
            .try_get::<Option<i64>, _>("max_sequence_number")
            .map_err(db)?
            .map(|n| to_u64(n, "sequence number"))
            .transpose()?;
        if req.unique_semver {
            if let Some(sv) = &req.semver {
                let taken = sqlx::query(
                    "SELECT 1 FROM store_versions WHERE publish_id = $1 AND semver = $2 AND NOT removed LIMIT 1",
                )
                .bind(&id)
                .bind(sv.to_string())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
                if taken.is_some() {
                    return Err(StoreError::Conflict(format!(
                        "{id} {sv} exists already (versions are immutable)"
                    )));
                }
            }
        }
        let previous = sqlx::query(
            "SELECT record FROM store_versions WHERE publish_id = $1 AND NOT removed ORDER BY seq DESC LIMIT 1",
        )
        .bind(&id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?
        .map(|r| r.try_get::<String, _>("record").map_err(db))
        .transpose()?
        .map(|json| suitcase_store::version_from_json(&json, &format!("database: {id} newest version")))
        .transpose()?;
        let seq = max_seq
            .checked_add(1)
            .ok_or_else(|| StoreError::BadRequest(format!("{id}: version numbers are exhausted")))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let draft = Draft {
            publish_id: &id,
            seq,
            previous: previous.as_ref(),
            max_sequence_number,
            files: &entries,
            now,
        };
        let mut manifest_data = None;
        let manifest = match build(&draft).map_err(StoreError::Manifest)? {
            None => None,
            Some(m) => {
                manifest_data = Some(m.data.clone());
                let entry = suitcase_store::prepare_manifest(&m, &entries, max_sequence_number)?;
                self.claim(&[entry.file.sha256.to_hex()]).await?;
                self.put(&entry.file.sha256, m.data.clone()).await?;
                self.keep(&entry.file.sha256, &m.data);
                Some(entry)
            }
        };
        let version = Version {
            publish_id: id.clone(),
            seq,
            created_at: now,
            semver: req.semver.clone(),
            manifest,
            files: entries,
            block_size: req.block_size,
        };
        let sequence_number = version
            .manifest
            .as_ref()
            .and_then(|m| m.sequence_number)
            .map(|n| to_i64(n, "sequence number"))
            .transpose()?;
        change_lock(&mut tx).await?;
        // No sweep runs from here to the commit; one that ran since the claims may have
        // deleted a blob that was marked before them: written back.
        for (f, e) in req.files.iter().zip(&version.files) {
            self.put(&e.sha256, f.data.clone()).await?;
        }
        if let (Some(m), Some(data)) = (&version.manifest, manifest_data) {
            self.put(&m.file.sha256, data).await?;
        }
        sqlx::query(
            "INSERT INTO store_versions (publish_id, seq, record, semver, changed) \
             VALUES ($1, $2, $3, $4, nextval('store_changes'))",
        )
        .bind(&id)
        .bind(to_i64(seq, "version")?)
        .bind(suitcase_store::version_to_json(&version))
        .bind(version.semver.as_ref().map(ToString::to_string))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        sqlx::query(
            "UPDATE store_ids SET max_seq = $2, \
             max_sequence_number = GREATEST(max_sequence_number, $3) WHERE publish_id = $1",
        )
        .bind(&id)
        .bind(to_i64(seq, "version")?)
        .bind(sequence_number)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        notify(&mut tx, CHANNEL, &id).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        for (f, e) in req.files.iter().zip(&version.files) {
            self.keep(&e.sha256, &f.data);
        }
        // The index takes the version from the change stream, in commit order: a removal
        // of it by another node, committed just after, is never undone here.
        if let Err(e) = self.refresh().await {
            tracing::warn!(error = %e, "shared store: the new version shows here with the next change read");
        }
        tracing::info!(publish_id = %id, seq, files = version.files.len(), "version published");
        Ok(Arc::new(version))
    }

    async fn remove(&self, publish_id: &str, seq: u64) -> Result<Arc<Version>, StoreError> {
        suitcase_store::validate_publish_id(publish_id)?;
        let mut tx = self.pool.begin().await.map_err(db)?;
        bounded(&mut tx).await?;
        // The publish-id's row first, as a publish takes it: a publish never reads a
        // previous version that is being removed.
        sqlx::query("SELECT 1 FROM store_ids WHERE publish_id = $1 FOR UPDATE")
            .bind(publish_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        change_lock(&mut tx).await?;
        let row = sqlx::query(
            "UPDATE store_versions SET removed = TRUE, changed = nextval('store_changes') \
             WHERE publish_id = $1 AND seq = $2 AND NOT removed RETURNING record",
        )
        .bind(publish_id)
        .bind(to_i64(seq, "version")?)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?
        .ok_or_else(|| StoreError::NotFound(format!("version {seq} of {publish_id:?}")))?;
        let record: String = row.try_get("record").map_err(db)?;
        let version = suitcase_store::version_from_json(&record, &format!("database: {publish_id} version {seq}"))?;
        notify(&mut tx, CHANNEL, publish_id).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        forget(&mut self.index.write(), publish_id, seq);
        self.generation.fetch_add(1, Ordering::AcqRel);
        tracing::info!(publish_id, seq, "version removed");
        Ok(Arc::new(version))
    }
}

impl Store for SharedStore {
    fn publish(&self, req: PublishRequest, build: Box<BuildManifest<'_>>) -> Result<Arc<Version>, StoreError> {
        self.inner.block(self.inner.publish(req, build))
    }

    fn remove(&self, publish_id: &str, seq: u64) -> Result<Arc<Version>, StoreError> {
        self.inner.block(self.inner.remove(publish_id, seq))
    }

    fn latest(&self, publish_id: &str) -> Option<Arc<Version>> {
        self.inner
            .index
            .read()
            .get(publish_id)
            .and_then(|m| m.values().next_back().cloned())
    }

    fn version(&self, publish_id: &str, seq: u64) -> Option<Arc<Version>> {
        self.inner
            .index
            .read()
            .get(publish_id)
            .and_then(|m| m.get(&seq).cloned())
    }

    fn versions(&self, publish_id: &str) -> Vec<Arc<Version>> {
        self.inner
            .index
            .read()
            .get(publish_id)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    fn publish_ids(&self) -> Vec<String> {
        self.inner.index.read().keys().cloned().collect()
    }

    fn read(&self, digest: &Sha256) -> Result<Bytes, StoreError> {
        let inner = &self.inner;
        if let Some(b) = inner.memory.get(digest) {
            inner.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(b);
        }
        if let Some(b) = inner.disk.read(digest) {
            inner.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(b);
        }
        inner.fetch_blocking(digest)
    }

    fn blob(&self, entry: &FileEntry) -> Result<Blob, StoreError> {
        let inner = &self.inner;
        if entry.size <= inner.memory_item {
            return self.read(&entry.sha256).map(Blob::Memory);
        }
        if let Some((file, len)) = inner.disk.file(&entry.sha256) {
            inner.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Blob::File { file, len });
        }
        let data = inner.fetch_blocking(&entry.sha256)?;
        match inner.disk.file(&entry.sha256) {
            Some((file, len)) => Ok(Blob::File { file, len }),
            // The disk cache could not take it: serve this once from memory.
            None => Ok(Blob::Memory(data)),
        }
    }

    fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    fn cache_stats(&self) -> CacheStats {
        let inner = &self.inner;
        CacheStats {
            hits: inner.hits.load(Ordering::Relaxed),
            misses: inner.misses.load(Ordering::Relaxed),
            bytes: inner.memory.weight() + inner.disk.used(),
        }
    }
}
