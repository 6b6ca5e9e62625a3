//! Tokens: publisher tokens (`Authorization: Bearer …`) guard every mutation; device tokens
//! (`Authorization: token …`, the devtank contract) guard HTTP downloads once any exists.
//!
//! Tokens are stored as SHA-256 hashes in `tokens.json` (mode 0600), re-read when the file
//! changes, and compared digest to digest in constant time. With no publisher token the
//! server accepts mutations from loopback peers only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{ApiError, AppState};

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Publish, notify, remove.
    Publisher,
    /// Download over HTTP.
    Device,
}

/// A stored token (its hash, never the token).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenEntry {
    /// Name given at creation (appears in the audit log).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Hex SHA-256 of the token.
    pub sha256: String,
    /// Unix time of creation.
    pub created: u64,
}

/// Errors of the token file.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// File I/O.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// Not a token file.
    #[error("{0}: {1}")]
    Format(String, serde_json::Error),
    /// A token of that name exists.
    #[error("a token named {0:?} exists already")]
    Exists(String),
    /// Bad name.
    #[error("token names are 1-64 characters of [A-Za-z0-9._@-]")]
    BadName,
}

/// What identifies one state of the token file: (mtime, length).
type FileStamp = Option<(SystemTime, u64)>;

/// The token file of a server.
pub struct Tokens {
    path: PathBuf,
    cache: RwLock<(FileStamp, Vec<TokenEntry>)>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Tokens {
    /// Tokens kept at `path` (the file may not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Tokens {
            path: path.into(),
            cache: RwLock::new((None, Vec::new())),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All entries, fresh from disk.
    pub fn list(&self) -> Result<Vec<TokenEntry>, TokenError> {
        let p = self.path.display().to_string();
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| TokenError::Format(p, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(TokenError::Io(p, e)),
        }
    }

    fn save(&self, entries: &[TokenEntry]) -> Result<(), TokenError> {
        let p = self.path.display().to_string();
        let json = serde_json::to_vec_pretty(entries).map_err(|e| TokenError::Format(p.clone(), e))?;
        let tmp = self.path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp)?;
            std::io::Write::write_all(&mut f, &json)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| TokenError::Io(p, e))
    }

    /// Create a token; returns it (shown once, only its hash is kept).
    pub fn create(&self, name: &str, role: Role) -> Result<String, TokenError> {
        if name.is_empty()
            || name.len() > 64
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
        {
            return Err(TokenError::BadName);
        }
        let mut entries = self.list()?;
        if entries.iter().any(|e| e.name == name) {
            return Err(TokenError::Exists(name.to_string()));
        }
        let mut raw = [0u8; 20];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut raw);
        let token = hex::encode(raw);
        let created = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        entries.push(TokenEntry {
            name: name.to_string(),
            role,
            sha256: hex::encode(digest(&token)),
            created,
        });
        self.save(&entries)?;
        Ok(token)
    }

    /// Revoke by name; whether it existed.
    pub fn revoke(&self, name: &str) -> Result<bool, TokenError> {
        let mut entries = self.list()?;
        let before = entries.len();
        entries.retain(|e| e.name != name);
        if entries.len() == before {
            return Ok(false);
        }
        self.save(&entries)?;
        Ok(true)
    }

    /// The current entries, re-read when the file's mtime changed.
    fn current(&self) -> Vec<TokenEntry> {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| Ok((m.modified()?, m.len())))
            .ok();
        if let Ok(c) = self.cache.read() {
            if c.0 == mtime {
                return c.1.clone();
            }
        }
        let entries = match self.list() {
            Ok(e) => e,
            Err(e) => {
                // Fail closed: an unreadable token file accepts nobody.
                tracing::error!(error = %e, "token file unreadable; refusing every token");
                return vec![TokenEntry {
                    name: String::new(),
                    role: Role::Publisher,
                    sha256: String::new(),
                    created: 0,
                }];
            }
        };
        if let Ok(mut c) = self.cache.write() {
            *c = (mtime, entries.clone());
        }
        entries
    }

    /// Whether any token of `role` exists.
    pub fn any(&self, role: Role) -> bool {
        self.current().iter().any(|e| e.role == role)
    }

    /// The name of the token `presented` if it holds one of `roles`.
    pub fn check(&self, presented: &str, roles: &[Role]) -> Option<String> {
        let d = digest(presented);
        let mut found = None;
        // Compare with every entry (no early exit), digest to digest.
        for e in self.current() {
            let mut stored = [0u8; 32];
            let ok = hex::decode_to_slice(&e.sha256, &mut stored).is_ok();
            if ok && ct_eq(&stored, &d) && roles.contains(&e.role) {
                found = Some(e.name.clone());
            }
        }
        found
    }
}

fn credential<'a>(req: &'a Request, schemes: &[&str]) -> Option<&'a str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    schemes
        .iter()
        .any(|s| s.eq_ignore_ascii_case(scheme))
        .then_some(rest.trim())
}

fn peer(req: &Request) -> Option<SocketAddr> {
    let ext = req.extensions();
    ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0).or_else(|| {
        ext.get::<axum::extract::connect_info::MockConnectInfo<SocketAddr>>()
            .map(|c| c.0)
    })
}

/// Who made a mutation, for the audit log: a token's name, or the loopback peer.
#[derive(Clone, Debug)]
pub struct Who(pub String);

/// Guard for mutations.
pub(crate) async fn publisher(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if st.tokens.any(Role::Publisher) {
        match credential(&req, &["Bearer"]).and_then(|t| st.tokens.check(t, &[Role::Publisher])) {
            Some(name) => {
                let who = match peer(&req) {
                    Some(p) => format!("token:{name}@{p}"),
                    None => format!("token:{name}"),
                };
                req.extensions_mut().insert(Who(who));
                next.run(req).await
            }
            None => {
                tracing::warn!(target: "suitcase::audit", peer = ?peer(&req), %path, "rejected: no valid publisher token");
                let mut r = ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "a valid publisher token is required (Authorization: Bearer <token>)",
                )
                .into_response();
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
                r
            }
        }
    } else if let Some(p) = peer(&req).filter(|p| p.ip().is_loopback() || p.ip().to_canonical().is_loopback()) {
        req.extensions_mut().insert(Who(format!("local@{p}")));
        next.run(req).await
    } else {
        tracing::warn!(target: "suitcase::audit", peer = ?peer(&req), %path, "rejected: no publisher token exists, mutations are open to localhost only");
        ApiError::new(
            StatusCode::FORBIDDEN,
            "no publisher token is configured, so publishing is open to localhost only (suitcase token create NAME)",
        )
        .into_response()
    }
}

/// Guard for HTTP downloads (only once a device token exists).
pub(crate) async fn device(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if !st.tokens.any(Role::Device) {
        return next.run(req).await;
    }
    match credential(&req, &["token", "Bearer"]).and_then(|t| st.tokens.check(t, &[Role::Device, Role::Publisher])) {
        Some(_) => next.run(req).await,
        None => {
            tracing::warn!(target: "suitcase::audit", peer = ?peer(&req), path = %req.uri().path(), "download rejected: no valid device token");
            ApiError::new(
                StatusCode::FORBIDDEN,
                "a valid device token is required (Authorization: token <token>)",
            )
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn create_check_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tokens::new(dir.path().join("tokens.json"));
        assert!(!t.any(Role::Publisher));
        let tok = t.create("ci", Role::Publisher).unwrap();
        assert_eq!(tok.len(), 40);
        assert!(matches!(t.create("ci", Role::Device), Err(TokenError::Exists(_))));
        assert!(matches!(t.create("a b", Role::Device), Err(TokenError::BadName)));
        assert_eq!(t.check(&tok, &[Role::Publisher]).as_deref(), Some("ci"));
        assert_eq!(t.check(&tok, &[Role::Device]), None);
        assert_eq!(t.check("0000", &[Role::Publisher]), None);
        let raw = std::fs::read_to_string(t.path()).unwrap();
        assert!(!raw.contains(&tok), "only the hash is stored");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(t.path()).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(t.revoke("ci").unwrap());
        std::thread::sleep(std::time::Duration::from_millis(10));
        // mtime granularity: force a re-read by touching the file through another create.
        t.create("other", Role::Device).unwrap();
        assert_eq!(t.check(&tok, &[Role::Publisher]), None);
    }
}
