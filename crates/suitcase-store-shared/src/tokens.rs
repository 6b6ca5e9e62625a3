//! Tokens and DTLS credentials in PostgreSQL, honoured by every node that shares the
//! database: `suitcase token … --database postgres://…` writes them, each server follows
//! the table (`LISTEN suitcase_tokens`, and a read every second as a backstop) and holds
//! them beside its own token file ([`Tokens::set_shared`]). Entries are stored as the
//! token file stores them: hashes for HTTP tokens, the key itself for a PSK.

use std::sync::Weak;
use std::time::Duration;

use sqlx::postgres::PgPool;
use sqlx::Row as _;
use suitcase_auth::{TokenEntry, TokenError, Tokens};

use crate::{SharedError, Wake};

const CHANNEL: &str = "suitcase_tokens";
/// Serialises additions (names, PSK identities and keys are unique across entries).
const LOCK: i64 = 0x7375_6974_746f_6b6e;
/// The backstop when a notification is lost.
const POLL: Duration = Duration::from_secs(1);

/// Rows read at most (a token table is small; more is damage).
const MAX_ENTRIES: i64 = 100_000;

fn db(e: sqlx::Error) -> SharedError {
    SharedError::Database(e.to_string())
}

/// Why an entry was not added.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// Taken name, identity or key; a bad name.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The database.
    #[error(transparent)]
    Shared(#[from] SharedError),
}

/// The shared token table.
#[derive(Clone)]
pub struct SharedTokens {
    pool: PgPool,
}

impl SharedTokens {
    /// Connect and create the table if needed.
    pub async fn connect(url: &str) -> Result<SharedTokens, SharedError> {
        let pool = crate::connect(url, 2).await?;
        Ok(SharedTokens { pool })
    }

    /// Every entry, by name. An entry that does not read is skipped with a warning (it
    /// grants nothing).
    pub async fn list(&self) -> Result<Vec<TokenEntry>, SharedError> {
        let rows = sqlx::query("SELECT name, entry FROM tokens ORDER BY name LIMIT $1")
            .bind(MAX_ENTRIES)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let name: String = r.try_get("name").map_err(db)?;
            let entry: String = r.try_get("entry").map_err(db)?;
            match serde_json::from_str::<TokenEntry>(&entry) {
                Ok(e) if e.name == name => out.push(e),
                Ok(_) => tracing::warn!(name = %name, "shared tokens: an entry under another name; ignored"),
                Err(e) => tracing::warn!(name = %name, error = %e, "shared tokens: an entry does not read; ignored"),
            }
        }
        Ok(out)
    }

    /// Add an entry (refused when its name, PSK identity or key is taken).
    pub async fn add(&self, entry: &TokenEntry) -> Result<(), AddError> {
        let json = serde_json::to_string(entry).map_err(|e| SharedError::Config(e.to_string()))?;
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(LOCK)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let rows: Vec<String> = sqlx::query_scalar("SELECT entry FROM tokens LIMIT $1")
            .bind(MAX_ENTRIES)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        let entries: Vec<TokenEntry> = rows.iter().filter_map(|r| serde_json::from_str(r).ok()).collect();
        entry.fits(&entries)?;
        let inserted = sqlx::query("INSERT INTO tokens (name, entry) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(&entry.name)
            .bind(json)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        if inserted == 0 {
            return Err(TokenError::Exists(entry.name.clone()).into());
        }
        crate::notify(&mut tx, CHANNEL, "").await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    /// Revoke by name; whether it existed.
    pub async fn revoke(&self, name: &str) -> Result<bool, SharedError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let n = sqlx::query("DELETE FROM tokens WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        crate::notify(&mut tx, CHANNEL, "").await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(n > 0)
    }

    /// Keep `tokens`' shared entries current until it is dropped. A read that fails keeps
    /// the entries last read (a database outage does not lock everyone out).
    pub async fn follow(self, tokens: Weak<Tokens>) {
        let mut wake = Wake::new(self.pool.clone(), CHANNEL, POLL);
        loop {
            let Some(t) = tokens.upgrade() else { return };
            match self.list().await {
                Ok(entries) => t.set_shared(entries),
                Err(e) => tracing::warn!(error = %e, "shared tokens: reading the table failed; keeping the last read"),
            }
            drop(t);
            wake.next().await;
        }
    }
}
