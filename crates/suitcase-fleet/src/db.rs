//! The database: one schema and one set of queries for SQLite and PostgreSQL through sqlx's
//! `Any` driver (placeholders `$1`, types both read alike).

use std::str::FromStr as _;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row as _};

use crate::model::{groups_column, groups_from_column, Device, Filter, State};
use crate::rollout::{Member, MemberStatus, Rollout, RolloutState, Target};
use crate::FleetError;

/// Which database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite (a file in the data directory).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// The pool and its kind.
#[derive(Clone)]
pub(crate) struct Db {
    pub(crate) pool: AnyPool,
    pub(crate) backend: Backend,
    /// A shared fleet's tracker writes only while the term is still the one it took the
    /// lease in: checked in every write transaction.
    pub(crate) fence: Option<i64>,
}

const COLUMNS: &str = "id, registered, coap, http_id, class, publish_id, groups, running_seq, running_semver, \
    target_version, target_seq, target_semver, state, reason, bytes_done, bytes_total, peer, slot_before, \
    first_seen, last_seen, state_at, report_at, report, created_at, trigger";

/// Every fleet session on PostgreSQL (the pool's and the lease's): a node that dies, or
/// vanishes inside a transaction, must not hold its locks (the lease; the term, FOR SHARE)
/// for the hours TCP would take to notice. Its session ends after 10 s idle in a
/// transaction, or 10 s of unanswered data or keepalives. (The TCP settings are refused on
/// a Unix socket, where they are moot: errors are ignored.)
pub(crate) const PG_SESSION: [&str; 5] = [
    "SET idle_in_transaction_session_timeout = '10s'",
    "SET tcp_keepalives_idle = 4",
    "SET tcp_keepalives_interval = 2",
    "SET tcp_keepalives_count = 3",
    "SET tcp_user_timeout = 10000",
];

fn db_err(e: sqlx::Error) -> FleetError {
    FleetError::Database(e.to_string())
}

impl Db {
    /// A write transaction; for a shared fleet's tracker, refused once its lease is gone (a
    /// node that lost it must not overwrite what the next leader writes).
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'_, sqlx::Any>, FleetError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        if let Some(term) = self.fence {
            crate::cluster::check_term(&mut tx, term).await?;
        }
        Ok(tx)
    }

    /// Connect (creating a SQLite file if needed) and migrate.
    pub(crate) async fn open(url: &str) -> Result<Db, FleetError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if suitcase_store::is_postgres_url(url) {
            Backend::Postgres
        } else {
            return Err(FleetError::Invalid(format!(
                "database URL {:?}: sqlite:PATH or postgres://...",
                redact(url)
            )));
        };
        let options = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 8 })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL: readers never wait for the writer; FULL: a commit is on disk
                        // when it returns (nothing acknowledged is lost on power failure).
                        sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA synchronous = FULL").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA busy_timeout = 10000").execute(&mut *conn).await?;
                    } else {
                        for set in PG_SESSION {
                            let _ = sqlx::query(set).execute(&mut *conn).await;
                        }
                    }
                    Ok(())
                })
            });
        let pool = options
            .connect(url)
            .await
            .map_err(|e| FleetError::Database(format!("connecting to {}: {e}", redact(url))))?;
        // The shared store's migrations (suitcase-store-shared, from 1001) may share the
        // table in the same PostgreSQL database.
        let mut migrator = sqlx::migrate!("./migrations");
        migrator.set_ignore_missing(true);
        migrator
            .run(&pool)
            .await
            .map_err(|e| FleetError::Database(format!("migrating: {e}")))?;
        Ok(Db {
            pool,
            backend,
            fence: None,
        })
    }

    pub(crate) async fn load_all(&self) -> Result<Vec<Device>, FleetError> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM devices"))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(device_of).collect()
    }

    pub(crate) async fn get(&self, id: &str) -> Result<Option<Device>, FleetError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM devices WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.as_ref().map(device_of).transpose()
    }

    pub(crate) async fn id_of_coap(&self, coap: &str) -> Result<Option<String>, FleetError> {
        let row = sqlx::query("SELECT id FROM devices WHERE coap = $1 ORDER BY id LIMIT 1")
            .bind(coap)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.map(|r| r.try_get::<String, _>(0).map_err(db_err)).transpose()
    }

    pub(crate) async fn list(&self, f: &Filter, limit: usize) -> Result<Vec<Device>, FleetError> {
        let mut sql = format!("SELECT {COLUMNS} FROM devices WHERE 1 = 1");
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if f.group.is_some() {
            sql += &format!(" AND groups LIKE {} ESCAPE '!'", next());
        }
        if f.state.is_some() {
            sql += &format!(" AND state = {}", next());
        }
        if f.publish_id.is_some() {
            sql += &format!(" AND publish_id = {}", next());
        }
        sql += &format!(" ORDER BY id LIMIT {}", next());
        let mut q = sqlx::query(&sql);
        if let Some(g) = &f.group {
            // A checked group name (`Fleet::list`) holds no ',', '%' or '!', but may hold '_',
            // a LIKE wildcard: escaped, so the pattern matches the one group and LIMIT counts
            // only its members.
            q = q.bind(format!("%,{},%", g.replace('_', "!_")));
        }
        if let Some(s) = f.state {
            q = q.bind(s.as_str());
        }
        if let Some(p) = &f.publish_id {
            q = q.bind(p.clone());
        }
        q = q.bind(i64::try_from(limit).unwrap_or(i64::MAX));
        let rows = q.fetch_all(&self.pool).await.map_err(db_err)?;
        rows.iter().map(device_of).collect()
    }

    pub(crate) async fn counts(&self) -> Result<Vec<(String, i64)>, FleetError> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM devices GROUP BY state ORDER BY state")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>("state").map_err(db_err)?,
                    r.try_get::<i64, _>("n").map_err(db_err)?,
                ))
            })
            .collect()
    }
}

pub use suitcase_store::redact_url as redact;

fn opt_u64(r: &AnyRow, col: &str) -> Result<Option<u64>, FleetError> {
    Ok(r.try_get::<Option<i64>, _>(col)
        .map_err(db_err)?
        .and_then(|v| u64::try_from(v).ok()))
}

fn device_of(r: &AnyRow) -> Result<Device, FleetError> {
    let s = |c: &str| r.try_get::<Option<String>, _>(c).map_err(db_err);
    let i = |c: &str| r.try_get::<Option<i64>, _>(c).map_err(db_err);
    let state: String = r.try_get("state").map_err(db_err)?;
    Ok(Device {
        id: r.try_get("id").map_err(db_err)?,
        registered: r.try_get::<i64, _>("registered").map_err(db_err)? != 0,
        coap: s("coap")?,
        http_id: s("http_id")?,
        class: s("class")?,
        publish_id: s("publish_id")?,
        groups: groups_from_column(&r.try_get::<String, _>("groups").map_err(db_err)?),
        running_seq: opt_u64(r, "running_seq")?,
        running_semver: s("running_semver")?,
        target_version: opt_u64(r, "target_version")?,
        target_seq: opt_u64(r, "target_seq")?,
        target_semver: s("target_semver")?,
        state: State::from_str(&state).unwrap_or(State::Idle),
        reason: s("reason")?,
        bytes_done: opt_u64(r, "bytes_done")?.unwrap_or(0),
        bytes_total: opt_u64(r, "bytes_total")?.unwrap_or(0),
        peer: s("peer")?,
        slot_before: s("slot_before")?,
        first_seen: i("first_seen")?,
        last_seen: i("last_seen")?,
        state_at: i("state_at")?,
        report_at: i("report_at")?,
        report: s("report")?,
        created_at: r.try_get("created_at").map_err(db_err)?,
        trigger: s("trigger")?.and_then(|t| t.parse().ok()),
    })
}

/// `($1, $2, …), ($n+1, …), …`: `rows` tuples of `types.len()` placeholders, each written
/// `CAST($k AS type)` where its type is not empty (VALUES lists whose types PostgreSQL
/// cannot infer).
fn values_sql(rows: usize, types: &[&str]) -> String {
    let mut sql = String::new();
    let mut k = 0;
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for (c, ty) in types.iter().enumerate() {
            k += 1;
            if c > 0 {
                sql.push_str(", ");
            }
            if ty.is_empty() {
                sql.push_str(&format!("${k}"));
            } else {
                sql.push_str(&format!("CAST(${k} AS {ty})"));
            }
        }
        sql.push(')');
    }
    sql
}

fn i64_of(v: Option<u64>) -> Option<i64> {
    v.and_then(|v| i64::try_from(v).ok())
}

/// Rows per INSERT statement: one statement's overhead (parse, round trip) is shared by
/// this many rows (25 parameters each: 2,500, under SQLite's 32,766 and PostgreSQL's 65,535).
const ROWS_PER_STATEMENT: usize = 100;

/// Write whole device rows (insert or replace every column) in one transaction, in
/// multi-row statements.
pub(crate) async fn upsert_all(db: &Db, devices: &[&Device]) -> Result<(), FleetError> {
    if devices.is_empty() {
        return Ok(());
    }
    let mut tx = db.begin_write().await?;
    for chunk in devices.chunks(ROWS_PER_STATEMENT) {
        let mut sql = format!("INSERT INTO devices ({COLUMNS}) VALUES ");
        sql.push_str(&values_sql(chunk.len(), &[""; 25]));
        sql.push_str(
            " ON CONFLICT (id) DO UPDATE SET registered = excluded.registered, coap = excluded.coap, \
             http_id = excluded.http_id, class = excluded.class, publish_id = excluded.publish_id, \
             groups = excluded.groups, running_seq = excluded.running_seq, running_semver = excluded.running_semver, \
             target_version = excluded.target_version, target_seq = excluded.target_seq, \
             target_semver = excluded.target_semver, state = excluded.state, reason = excluded.reason, \
             bytes_done = excluded.bytes_done, bytes_total = excluded.bytes_total, peer = excluded.peer, \
             slot_before = excluded.slot_before, first_seen = excluded.first_seen, last_seen = excluded.last_seen, \
             state_at = excluded.state_at, report_at = excluded.report_at, report = excluded.report, \
             trigger = excluded.trigger",
        );
        let mut q = sqlx::query(&sql);
        for d in chunk {
            // In COLUMNS order.
            q = q
                .bind(d.id.clone())
                .bind(i64::from(d.registered))
                .bind(d.coap.clone())
                .bind(d.http_id.clone())
                .bind(d.class.clone())
                .bind(d.publish_id.clone())
                .bind(groups_column(&d.groups))
                .bind(i64_of(d.running_seq))
                .bind(d.running_semver.clone())
                .bind(i64_of(d.target_version))
                .bind(i64_of(d.target_seq))
                .bind(d.target_semver.clone())
                .bind(d.state.as_str())
                .bind(d.reason.clone())
                .bind(i64_of(Some(d.bytes_done)).unwrap_or(0))
                .bind(i64_of(Some(d.bytes_total)).unwrap_or(0))
                .bind(d.peer.clone())
                .bind(d.slot_before.clone())
                .bind(d.first_seen)
                .bind(d.last_seen)
                .bind(d.state_at)
                .bind(d.report_at)
                .bind(d.report.clone())
                .bind(d.created_at)
                .bind(d.trigger.map(|t| t.as_str()));
        }
        q.execute(&mut *tx).await.map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)
}

/// Rows per progress UPDATE (4 parameters each).
const PROGRESS_ROWS_PER_STATEMENT: usize = 500;

/// Write only the progress columns (bytes, size, last seen) of devices, in one transaction:
/// `UPDATE … FROM (VALUES …)`, which SQLite (3.33+) and PostgreSQL both read, the columns of
/// VALUES being `column1…` in both.
pub(crate) async fn update_progress(db: &Db, devices: &[&Device]) -> Result<(), FleetError> {
    if devices.is_empty() {
        return Ok(());
    }
    let mut tx = db.begin_write().await?;
    for chunk in devices.chunks(PROGRESS_ROWS_PER_STATEMENT) {
        let mut sql = String::from(
            "UPDATE devices SET bytes_done = v.column2, bytes_total = v.column3, last_seen = v.column4 FROM (VALUES ",
        );
        sql.push_str(&values_sql(chunk.len(), &["TEXT", "BIGINT", "BIGINT", "BIGINT"]));
        sql.push_str(") AS v WHERE devices.id = v.column1");
        let mut q = sqlx::query(&sql);
        for d in chunk {
            q = q
                .bind(d.id.clone())
                .bind(i64_of(Some(d.bytes_done)).unwrap_or(0))
                .bind(i64_of(Some(d.bytes_total)).unwrap_or(0))
                .bind(d.last_seen);
        }
        q.execute(&mut *tx).await.map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)
}

/// Delete a device; whether it existed.
pub(crate) async fn delete(db: &Db, id: &str) -> Result<bool, FleetError> {
    let mut tx = db.begin_write().await?;
    let r = sqlx::query("DELETE FROM devices WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok(r.rows_affected() > 0)
}

// ---- rollouts ----

const ROLLOUT_COLUMNS: &str = "id, name, publish_id, version, seq, semver, baseline, plan, coap_base, http_base, \
    state, reason, wave, wave_ends, wave_started, wave_finished, created_at, start_at, ended_at";

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T, FleetError> {
    serde_json::from_str(s).map_err(|e| FleetError::Database(format!("stored {what}: {e}")))
}

/// A rollout's row, without its members.
fn rollout_of(r: &AnyRow) -> Result<Rollout, FleetError> {
    let s = |c: &str| r.try_get::<Option<String>, _>(c).map_err(db_err);
    let text = |c: &str| r.try_get::<String, _>(c).map_err(db_err);
    let state = text("state")?;
    let id: i64 = r.try_get("id").map_err(db_err)?;
    let wave = usize::try_from(opt_u64(r, "wave")?.unwrap_or(0)).unwrap_or(usize::MAX);
    let wave_ends: Vec<usize> = from_json(&text("wave_ends")?, "waves")?;
    let wave_started: Vec<Option<i64>> = from_json(&text("wave_started")?, "waves")?;
    let wave_finished: Vec<Option<i64>> = from_json(&text("wave_finished")?, "waves")?;
    // Indexed by the tracker: a row that does not hold together is refused, not a panic.
    if wave >= wave_ends.len().max(1) || wave_started.len() != wave_ends.len() || wave_finished.len() != wave_ends.len()
    {
        return Err(FleetError::Database(format!(
            "rollout {id}: wave {wave} of {} (started {}, finished {})",
            wave_ends.len(),
            wave_started.len(),
            wave_finished.len()
        )));
    }
    Ok(Rollout {
        id: u64::try_from(id).unwrap_or(0),
        name: s("name")?,
        target: Target {
            publish_id: text("publish_id")?,
            version: opt_u64(r, "version")?.unwrap_or(0),
            seq: opt_u64(r, "seq")?,
            semver: s("semver")?,
            baseline: opt_u64(r, "baseline")?,
        },
        plan: from_json(&text("plan")?, "rollout plan")?,
        coap_base: s("coap_base")?,
        http_base: s("http_base")?,
        state: RolloutState::from_str(&state).map_err(|_| FleetError::Database(format!("rollout state {state:?}")))?,
        reason: s("reason")?,
        wave,
        wave_ends,
        wave_started,
        wave_finished,
        created_at: r.try_get("created_at").map_err(db_err)?,
        start_at: r.try_get("start_at").map_err(db_err)?,
        ended_at: r.try_get("ended_at").map_err(db_err)?,
        members: Vec::new(),
        index: std::collections::HashMap::new(),
    })
}

/// Rows per member INSERT (8 parameters each).
const MEMBER_ROWS_PER_STATEMENT: usize = 500;

/// Write a rollout's row and the members `changed` (indices; all with `None`) in one
/// transaction.
pub(crate) async fn save_rollout(db: &Db, r: &Rollout, changed: Option<&[usize]>) -> Result<u64, FleetError> {
    let mut tx = db.begin_write().await?;
    let mut sql = format!("INSERT INTO rollouts ({ROLLOUT_COLUMNS}) VALUES ");
    sql.push_str(&values_sql(1, &[""; 19]));
    sql.push_str(
        " ON CONFLICT (id) DO UPDATE SET state = excluded.state, reason = excluded.reason, wave = excluded.wave, \
         wave_started = excluded.wave_started, wave_finished = excluded.wave_finished, ended_at = excluded.ended_at",
    );
    sqlx::query(&sql)
        .bind(i64_of(Some(r.id)))
        .bind(r.name.clone())
        .bind(r.target.publish_id.clone())
        .bind(i64_of(Some(r.target.version)))
        .bind(i64_of(r.target.seq))
        .bind(r.target.semver.clone())
        .bind(i64_of(r.target.baseline))
        .bind(json(&r.plan))
        .bind(r.coap_base.clone())
        .bind(r.http_base.clone())
        .bind(r.state.as_str())
        .bind(r.reason.clone())
        .bind(i64_of(Some(r.wave as u64)))
        .bind(json(&r.wave_ends))
        .bind(json(&r.wave_started))
        .bind(json(&r.wave_finished))
        .bind(r.created_at)
        .bind(r.start_at)
        .bind(r.ended_at)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    let all: Vec<usize>;
    let changed = match changed {
        Some(c) => c,
        None => {
            all = (0..r.members.len()).collect();
            &all
        }
    };
    for chunk in changed.chunks(MEMBER_ROWS_PER_STATEMENT) {
        let mut sql = String::from(
            "INSERT INTO rollout_devices (rollout, device, position, wave, status, triggered_at, done_at, detail) VALUES ",
        );
        sql.push_str(&values_sql(chunk.len(), &[""; 8]));
        sql.push_str(
            " ON CONFLICT (rollout, device) DO UPDATE SET status = excluded.status, \
             triggered_at = excluded.triggered_at, done_at = excluded.done_at, detail = excluded.detail",
        );
        let mut q = sqlx::query(&sql);
        for &i in chunk {
            let Some(m) = r.members.get(i) else { continue };
            q = q
                .bind(i64_of(Some(r.id)))
                .bind(m.device.clone())
                .bind(i64_of(Some(i as u64)))
                .bind(i64_of(Some(m.wave as u64)))
                .bind(m.status.as_str())
                .bind(m.triggered_at)
                .bind(m.done_at)
                .bind(m.detail.clone());
        }
        q.execute(&mut *tx).await.map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)?;
    Ok(changed.len() as u64 + 1)
}

impl Db {
    /// The highest rollout number used.
    pub(crate) async fn max_rollout_id(&self) -> Result<u64, FleetError> {
        let row = sqlx::query("SELECT MAX(id) AS m FROM rollouts")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(opt_u64(&row, "m")?.unwrap_or(0))
    }

    /// The rollouts the tracker keeps: every one not finished or aborted, and the newest of
    /// each publish-id (its gate may still hold); with their members.
    pub(crate) async fn load_rollouts(&self) -> Result<Vec<Rollout>, FleetError> {
        let rows = sqlx::query(&format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE state NOT IN ('finished', 'aborted') \
             OR id IN (SELECT MAX(id) FROM rollouts GROUP BY publish_id) ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut r = rollout_of(row)?;
            let members = sqlx::query(
                "SELECT device, wave, status, triggered_at, done_at, detail FROM rollout_devices \
                 WHERE rollout = $1 ORDER BY position",
            )
            .bind(i64_of(Some(r.id)))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
            r.members = members.iter().map(member_of).collect::<Result<_, _>>()?;
            r.reindex();
            out.push(r);
        }
        Ok(out)
    }

    /// Rollouts, newest first, at most `limit`, without members.
    pub(crate) async fn list_rollouts(&self, limit: usize) -> Result<Vec<Rollout>, FleetError> {
        let rows = sqlx::query(&format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts ORDER BY id DESC LIMIT $1"
        ))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(rollout_of).collect()
    }

    /// One rollout, without members.
    pub(crate) async fn get_rollout(&self, id: u64) -> Result<Option<Rollout>, FleetError> {
        let row = sqlx::query(&format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = $1"))
            .bind(i64_of(Some(id)))
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.as_ref().map(rollout_of).transpose()
    }

    /// A rollout's members counted by wave and status.
    pub(crate) async fn member_counts(&self, id: u64) -> Result<Vec<(usize, MemberStatus, u64)>, FleetError> {
        let rows = sqlx::query(
            "SELECT wave, status, COUNT(*) AS n FROM rollout_devices WHERE rollout = $1 GROUP BY wave, status",
        )
        .bind(i64_of(Some(id)))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let status: String = r.try_get("status").map_err(db_err)?;
                Ok((
                    opt_u64(r, "wave")?.unwrap_or(0) as usize,
                    MemberStatus::parse(&status).unwrap_or(MemberStatus::Pending),
                    opt_u64(r, "n")?.unwrap_or(0),
                ))
            })
            .collect()
    }

    /// A rollout's members (for `status --devices`), at most `limit`.
    pub(crate) async fn members(&self, id: u64, limit: usize) -> Result<Vec<Member>, FleetError> {
        let rows = sqlx::query(
            "SELECT device, wave, status, triggered_at, done_at, detail FROM rollout_devices \
             WHERE rollout = $1 ORDER BY position LIMIT $2",
        )
        .bind(i64_of(Some(id)))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(member_of).collect()
    }
}

fn member_of(m: &AnyRow) -> Result<Member, FleetError> {
    let status: String = m.try_get("status").map_err(db_err)?;
    Ok(Member {
        device: m.try_get("device").map_err(db_err)?,
        wave: opt_u64(m, "wave")?.unwrap_or(0) as usize,
        status: MemberStatus::parse(&status).unwrap_or(MemberStatus::Pending),
        triggered_at: m.try_get("triggered_at").map_err(db_err)?,
        done_at: m.try_get("done_at").map_err(db_err)?,
        detail: m.try_get("detail").map_err(db_err)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
        assert_eq!(redact("sqlite:/x/fleet.db"), "sqlite:/x/fleet.db");
    }
}

#[cfg(test)]
mod sql_tests {
    #[test]
    fn values_lists() {
        assert_eq!(super::values_sql(2, &["", ""]), "($1, $2), ($3, $4)");
        assert_eq!(super::values_sql(1, &["TEXT", ""]), "(CAST($1 AS TEXT), $2)");
    }
}
