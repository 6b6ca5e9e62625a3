//! Collecting blobs no version references: those of removed versions, and those of
//! publishes that failed after their contents were stored.
//!
//! Deleting a blob must never race a publish that found it present (and so did not write
//! it again). Collection therefore takes two runs, one node at a time (an advisory lock):
//! 1. **Mark**: every object under `<prefix>/blobs/` older than the grace period that no
//!    version (not removed) references gets a row in `store_blob_doomed`.
//! 2. **Sweep** (a later run, the grace period after marking): each mark is deleted and,
//!    if its blob is still unreferenced, the blob too, in small transactions that hold the
//!    change lock (no version commits meanwhile) and the mark's row lock.
//!
//! A publish *claims* every blob it is about to use by deleting its mark before looking
//! for it: a claim that comes first removes the mark (the sweep passes the blob by); one
//! that comes during a sweep waits for the row lock, then finds the blob gone and writes it
//! again. And once a publish holds the change lock (which a sweep holds while it deletes,
//! and which the publish keeps until its version commits) it looks for each of its blobs
//! again and writes back any a sweep deleted meanwhile: however long a publish takes, the
//! version it commits has its blobs. Times are the database's clock.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt as _;
use object_store::{ObjectStore as _, ObjectStoreExt as _};
use sqlx::Row as _;
use suitcase_store::StoreError;

use crate::{bounded, change_lock, db, unavailable, Inner, SharedStore};

/// Only one node collects at a time.
const GC_LOCK: i64 = 0x7375_6974_6763_6763;
/// Marks swept per transaction (the change lock is held meanwhile).
const SWEEP_BATCH: i64 = 32;
/// Longest wait for one object store call of a sweep (the change lock is held).
const SWEEP_CALL: Duration = Duration::from_secs(10);

/// What a collection did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Another node was collecting: nothing done.
    pub skipped: bool,
    /// Blobs marked in this run.
    pub marked: usize,
    /// Blobs deleted in this run.
    pub deleted: u64,
    /// Bytes deleted.
    pub deleted_bytes: u64,
    /// Marks dropped because the blob was referenced again.
    pub spared: usize,
}

/// The database's clock, Unix seconds (marks are compared across nodes).
async fn db_now(conn: &mut sqlx::PgConnection) -> Result<i64, StoreError> {
    sqlx::query_scalar("SELECT EXTRACT(EPOCH FROM clock_timestamp())::BIGINT")
        .fetch_one(conn)
        .await
        .map_err(db)
}

impl SharedStore {
    /// Sweep what an earlier run marked at least `grace` ago, then mark the blobs older than
    /// `grace` that no version references. Run by the server every hour with a grace of an
    /// hour.
    pub async fn collect_garbage(&self, grace: Duration) -> Result<GcReport, StoreError> {
        self.inner.collect_garbage(grace).await
    }
}

impl Inner {
    /// The hex SHA-256 of every blob a version that is not removed references.
    async fn referenced(&self, conn: &mut sqlx::PgConnection) -> Result<HashSet<String>, StoreError> {
        let mut rows = sqlx::query("SELECT record FROM store_versions WHERE NOT removed").fetch(&mut *conn);
        let mut out = HashSet::new();
        while let Some(row) = rows.next().await {
            let record: String = row.map_err(db)?.try_get("record").map_err(db)?;
            let v = suitcase_store::version_from_json(&record, "database: a version record")?;
            out.extend(v.files.iter().map(|f| f.sha256.to_hex()));
            if let Some(m) = &v.manifest {
                out.insert(m.file.sha256.to_hex());
            }
        }
        Ok(out)
    }

    /// A publish is about to use these blobs: unmark them (see the module documentation).
    pub(crate) async fn claim(&self, blobs: &[String]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        bounded(&mut tx).await?;
        sqlx::query("DELETE FROM store_blob_doomed WHERE sha256 = ANY($1)")
            .bind(blobs)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn collect_garbage(&self, grace: Duration) -> Result<GcReport, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let mine: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(GC_LOCK)
            .fetch_one(&mut *conn)
            .await
            .map_err(db)?;
        if !mine {
            return Ok(GcReport {
                skipped: true,
                ..GcReport::default()
            });
        }
        let r = self.collect_locked(grace).await;
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(GC_LOCK)
            .execute(&mut *conn)
            .await;
        r
    }

    async fn collect_locked(&self, grace: Duration) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let grace_secs = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
        let now = db_now(&mut *self.pool.acquire().await.map_err(db)?).await?;
        let due = now.saturating_sub(grace_secs);
        // Sweep.
        loop {
            let mut tx = self.pool.begin().await.map_err(db)?;
            bounded(&mut tx).await?;
            change_lock(&mut tx).await?;
            let doomed: Vec<String> = sqlx::query_scalar(
                "DELETE FROM store_blob_doomed WHERE sha256 IN \
                 (SELECT sha256 FROM store_blob_doomed WHERE marked_at <= $1 ORDER BY sha256 LIMIT $2 \
                  FOR UPDATE SKIP LOCKED) RETURNING sha256",
            )
            .bind(due)
            .bind(SWEEP_BATCH)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
            if doomed.is_empty() {
                break;
            }
            let referenced = self.referenced(&mut tx).await?;
            for hex in doomed {
                if referenced.contains(&hex) {
                    report.spared += 1;
                    continue;
                }
                let Some(sha) = suitcase_store::Sha256::from_hex(&hex) else {
                    continue;
                };
                let key = self.key(&sha);
                let timeout = |what| unavailable("object store", format!("{what}: no answer within 10 s"));
                let size = match tokio::time::timeout(SWEEP_CALL, self.objects.head(&key)).await {
                    Err(_) => return Err(timeout("HEAD")),
                    Ok(Ok(meta)) => meta.size,
                    Ok(Err(object_store::Error::NotFound { .. })) => continue,
                    Ok(Err(e)) => return Err(unavailable("object store", e)),
                };
                match tokio::time::timeout(SWEEP_CALL, self.objects.delete(&key)).await {
                    Err(_) => return Err(timeout("DELETE")),
                    Ok(Ok(()) | Err(object_store::Error::NotFound { .. })) => {
                        report.deleted += 1;
                        report.deleted_bytes += size;
                    }
                    Ok(Err(e)) => return Err(unavailable("object store", e)),
                }
            }
            tx.commit().await.map_err(db)?;
        }
        // Mark.
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let referenced = self.referenced(&mut conn).await?;
        let marked: HashSet<String> = sqlx::query_scalar("SELECT sha256 FROM store_blob_doomed")
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?
            .into_iter()
            .collect();
        let blobs = self.prefix.clone().join("blobs");
        let mut listing = self.objects.list(Some(&blobs));
        let mut fresh = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| unavailable("object store", e))?;
            let Some(name) = meta.location.filename() else { continue };
            if suitcase_store::Sha256::from_hex(name).is_none() || meta.last_modified.timestamp() > due {
                continue;
            }
            if !referenced.contains(name) && !marked.contains(name) {
                fresh.push(name.to_string());
            }
        }
        drop(listing);
        if !fresh.is_empty() {
            for chunk in fresh.chunks(1000) {
                sqlx::query(
                    "INSERT INTO store_blob_doomed (sha256, marked_at) SELECT s, $2 FROM UNNEST($1::text[]) AS s \
                     ON CONFLICT DO NOTHING",
                )
                .bind(chunk)
                .bind(now)
                .execute(&mut *conn)
                .await
                .map_err(db)?;
            }
            report.marked = fresh.len();
        }
        Ok(report)
    }
}
