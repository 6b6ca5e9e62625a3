//! suitcase's tokens, kept in a file: publisher tokens (guarding every mutation) and device
//! tokens (guarding HTTP downloads once any exists), stored as SHA-256 hashes in
//! `tokens.json` (mode 0600), compared digest to digest in constant time. Used by the HTTP
//! server (`suitcase-http`'s guards) and by the CLI (`suitcase token`); nothing here is HTTP.
//!
//! Requests never touch the file: they read an in-memory snapshot that [`Tokens::watch`]
//! refreshes from a background thread every 500 ms (so a change made by another process,
//! e.g. `suitcase token create`, is seen within about half a second) and that this process's
//! own [`Tokens::create`] and [`Tokens::revoke`] update at once. A change is recognised by the
//! file's content (SHA-256), so a file replaced with one of the same length and mtime
//! (`cp -p`, `rsync -t`) is noticed too.
//!
//! A token file that cannot be read or parsed, or that vanished while serving, refuses every
//! guarded request, both roles, until it is fixed. There is no implicit trust in loopback
//! peers: when no publisher token exists at start, the server creates one named `local` and
//! writes it to `<data>/local-publisher.token` for the CLI.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Publish, notify, remove.
    Publisher,
    /// Download over HTTP.
    Device,
}

/// A stored token (its hash, never the token), or a device's DTLS credential.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEntry {
    /// Name given at creation (appears in the audit log; a device's id in the fleet).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Hex SHA-256 of the token (empty for a DTLS credential, which has no HTTP token).
    #[serde(default)]
    pub sha256: String,
    /// Unix time of creation.
    pub created: u64,
    /// DTLS pre-shared key: the identity the device sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psk_identity: Option<String>,
    /// DTLS pre-shared key, hex. The server needs the key itself for the handshake, so it
    /// cannot be hashed: the file is mode 0600 and the key is never logged nor shown again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psk: Option<String>,
    /// DTLS with a device key: hex SHA-256 of its SubjectPublicKeyInfo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_sha256: Option<String>,
}

impl std::fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEntry")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("created", &self.created)
            .field("psk_identity", &self.psk_identity)
            .field("psk", &self.psk.as_ref().map(|_| "<redacted>"))
            .field("public_key_sha256", &self.public_key_sha256)
            .finish_non_exhaustive()
    }
}

impl TokenEntry {
    fn new(name: &str, role: Role, sha256: String) -> Self {
        TokenEntry {
            name: name.to_string(),
            role,
            sha256,
            created: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            psk_identity: None,
            psk: None,
            public_key_sha256: None,
        }
    }

    /// What kind of credential this is: `token`, `psk` or `public-key`.
    pub fn kind(&self) -> &'static str {
        if self.psk.is_some() {
            "psk"
        } else if self.public_key_sha256.is_some() {
            "public-key"
        } else {
            "token"
        }
    }

    fn is_token(&self) -> bool {
        !self.sha256.is_empty()
    }

    /// A new HTTP token named `name`: its entry (the hash) and the token (shown once).
    pub fn new_token(name: &str, role: Role) -> Result<(TokenEntry, String), TokenError> {
        check_name(name)?;
        let mut raw = [0u8; 20];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut raw);
        let token = hex::encode(raw);
        Ok((TokenEntry::new(name, role, hex::encode(digest(&token))), token))
    }

    /// A DTLS pre-shared key for device `name`: `identity` (default: the name) and `key`
    /// (default: 16 random bytes; 1-64 bytes).
    pub fn new_psk(name: &str, identity: Option<&str>, key: Option<Vec<u8>>) -> Result<(TokenEntry, Psk), TokenError> {
        check_name(name)?;
        let identity = identity.unwrap_or(name).to_string();
        if identity.is_empty() || identity.len() > 128 || identity.bytes().any(|b| b.is_ascii_control()) {
            return Err(TokenError::BadCredential(
                "a PSK identity is 1-128 bytes without control characters".into(),
            ));
        }
        let key = match key {
            Some(k) if !k.is_empty() && k.len() <= 64 => k,
            Some(_) => return Err(TokenError::BadCredential("a PSK is 1-64 bytes".into())),
            None => {
                let mut k = vec![0u8; 16];
                rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut k);
                k
            }
        };
        let mut e = TokenEntry::new(name, Role::Device, String::new());
        e.psk_identity = Some(identity.clone());
        e.psk = Some(hex::encode(&key));
        Ok((e, Psk { identity, key }))
    }

    /// Device `name` admitted over DTLS by its public key (SubjectPublicKeyInfo SHA-256).
    pub fn new_public_key(name: &str, spki_sha256: [u8; 32]) -> Result<TokenEntry, TokenError> {
        check_name(name)?;
        let mut e = TokenEntry::new(name, Role::Device, String::new());
        e.public_key_sha256 = Some(hex::encode(spki_sha256));
        Ok(e)
    }

    /// Whether this entry may join `entries`: its name, PSK identity and device key are
    /// nobody's yet.
    pub fn fits(&self, entries: &[TokenEntry]) -> Result<(), TokenError> {
        if entries.iter().any(|e| e.name == self.name) {
            return Err(TokenError::Exists(self.name.clone()));
        }
        if let Some(i) = &self.psk_identity {
            if entries.iter().any(|e| e.psk_identity.as_ref() == Some(i)) {
                return Err(TokenError::BadCredential(format!("the PSK identity {i:?} is taken")));
            }
        }
        if let Some(k) = &self.public_key_sha256 {
            if let Some(e) = entries.iter().find(|e| e.public_key_sha256.as_ref() == Some(k)) {
                return Err(TokenError::BadCredential(format!(
                    "that key belongs to {:?} already",
                    e.name
                )));
            }
        }
        Ok(())
    }
}

fn check_name(name: &str) -> Result<(), TokenError> {
    if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b)) {
        return Err(TokenError::BadName);
    }
    Ok(())
}

/// A device's DTLS pre-shared key as created: shown once.
#[derive(Clone)]
pub struct Psk {
    /// The identity.
    pub identity: String,
    /// The key.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Psk")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
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
    /// A PSK identity or key that cannot be used.
    #[error("{0}")]
    BadCredential(String),
    /// Larger than any token file.
    #[error("{0}: larger than 1 MiB, not a token file")]
    TooLarge(String),
    /// A thread panicked while writing the file.
    #[error("token file lock poisoned")]
    Poisoned,
}

/// The file the server writes its `local` publisher token to, in its data directory.
pub const LOCAL_TOKEN_FILE: &str = "local-publisher.token";

/// A token file larger than this is refused as unreadable (it holds a few hashes).
const MAX_FILE_BYTES: u64 = 1 << 20;

/// What the server knows of the token file.
#[derive(Clone, Debug)]
pub enum Snapshot {
    /// The entries (empty when the file does not exist).
    Entries(Arc<Vec<TokenEntry>>),
    /// The file exists but cannot be read or parsed: refuse everyone.
    Unreadable,
}

impl Snapshot {
    /// Whether any token of `role` exists (`None`: unreadable).
    pub fn any(&self, role: Role) -> Option<bool> {
        match self {
            Snapshot::Entries(e) => Some(e.iter().any(|e| e.role == role && e.is_token())),
            Snapshot::Unreadable => None,
        }
    }

    /// The name of the token `presented` if it holds one of `roles`.
    pub fn check(&self, presented: &str, roles: &[Role]) -> Option<String> {
        let Snapshot::Entries(entries) = self else { return None };
        let d = digest(presented);
        let mut found = None;
        // Compare with every entry (no early exit), digest to digest.
        for e in entries.iter() {
            let mut stored = [0u8; 32];
            let ok = hex::decode_to_slice(&e.sha256, &mut stored).is_ok();
            if ok && ct_eq(&stored, &d) && roles.contains(&e.role) {
                found = Some(e.name.clone());
            }
        }
        found
    }

    /// The device and key of a DTLS PSK identity.
    pub fn psk(&self, identity: &[u8]) -> Option<(String, Vec<u8>)> {
        let Snapshot::Entries(entries) = self else { return None };
        entries.iter().find_map(|e| {
            let key = e.psk.as_deref()?;
            (e.psk_identity.as_deref()?.as_bytes() == identity)
                .then(|| hex::decode(key).ok().map(|k| (e.name.clone(), k)))
                .flatten()
        })
    }

    /// The device whose DTLS public key has this SubjectPublicKeyInfo SHA-256.
    pub fn public_key(&self, spki_sha256: &[u8; 32]) -> Option<String> {
        let Snapshot::Entries(entries) = self else { return None };
        let want = hex::encode(spki_sha256);
        entries
            .iter()
            .find(|e| e.public_key_sha256.as_deref() == Some(want.as_str()))
            .map(|e| e.name.clone())
    }
}

/// The token file of a server.
pub struct Tokens {
    path: PathBuf,
    /// (SHA-256 of the file's content, `None` when absent or unreadable; what it says).
    snapshot: RwLock<(Option<[u8; 32]>, Snapshot)>,
    /// Serialises this process's read-modify-write of the file, and refreshes with it (a
    /// refresh must never put back what a revoke just replaced).
    writing: Mutex<()>,
    /// The file existed once: its disappearance later is damage, not "no tokens".
    existed: std::sync::atomic::AtomicBool,
    /// Entries of a table several servers share (PostgreSQL), in force beside the file's.
    shared: RwLock<Arc<Vec<TokenEntry>>>,
    /// What requests read: the file's entries and the shared ones (unreadable when the
    /// file is).
    merged: RwLock<Snapshot>,
    /// Serialises rebuilding `merged` (the file watcher and the table follower both do).
    merging: Mutex<()>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

impl Tokens {
    /// Tokens kept at `path` (the file may not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let t = Tokens {
            path: path.into(),
            snapshot: RwLock::new((None, Snapshot::Entries(Arc::default()))),
            writing: Mutex::new(()),
            existed: std::sync::atomic::AtomicBool::new(false),
            shared: RwLock::new(Arc::default()),
            merged: RwLock::new(Snapshot::Entries(Arc::default())),
            merging: Mutex::new(()),
        };
        t.refresh();
        t
    }

    /// The entries of the shared table, as last read (they hold beside the file's).
    pub fn set_shared(&self, entries: Vec<TokenEntry>) {
        if let Ok(mut s) = self.shared.write() {
            if **s == entries {
                return;
            }
            *s = Arc::new(entries);
        }
        self.remerge();
    }

    /// Rebuild what requests read from the file's snapshot and the shared entries (each
    /// writer changes its input first, then rebuilds under one lock: the last rebuild
    /// always sees both latest inputs). A shared entry whose name, PSK identity or key a
    /// file entry has is left out (the file wins; logged once per change).
    fn remerge(&self) {
        let _one = self.merging.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let file = match self.snapshot.read() {
            Ok(s) => s.1.clone(),
            Err(_) => Snapshot::Unreadable,
        };
        let shared = self.shared.read().map(|s| s.clone()).unwrap_or_default();
        let merged = match file {
            Snapshot::Entries(e) if !shared.is_empty() => {
                let mut all = Vec::with_capacity(e.len() + shared.len());
                all.extend(e.iter().cloned());
                for s in shared.iter() {
                    match s.fits(&e) {
                        Ok(()) => all.push(s.clone()),
                        Err(why) => tracing::warn!(
                            token = %s.name,
                            reason = %why,
                            "a token of the shared table collides with the token file; the file's holds"
                        ),
                    }
                }
                Snapshot::Entries(Arc::new(all))
            }
            other => other,
        };
        if let Ok(mut m) = self.merged.write() {
            *m = merged;
        }
    }

    /// Keep the snapshot current from a background thread, every `every`; the thread ends
    /// when the last `Arc` of these tokens is dropped.
    pub fn watch(self: &Arc<Self>, every: Duration) -> std::io::Result<std::thread::JoinHandle<()>> {
        let weak: Weak<Self> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("suitcase-tokens".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                match weak.upgrade() {
                    Some(t) => t.refresh(),
                    None => return,
                }
            })
    }

    /// What requests are checked against: the file's entries and the shared table's.
    pub fn snapshot(&self) -> Snapshot {
        match self.merged.read() {
            Ok(s) => s.clone(),
            Err(_) => Snapshot::Unreadable,
        }
    }

    /// Re-read the file; replace the snapshot if its content changed.
    pub fn refresh(&self) {
        let _writing = self.writing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (hash, snap) = match self.read_raw() {
            Ok(None) if self.existed.load(std::sync::atomic::Ordering::Relaxed) => {
                // A server's token file (it writes one at start) that vanished: fail closed
                // rather than open downloads and publishing to everyone.
                self.set_unreadable(&TokenError::Io(
                    self.path.display().to_string(),
                    std::io::Error::new(std::io::ErrorKind::NotFound, "the token file was removed"),
                ));
                return;
            }
            Ok(None) => (None, Snapshot::Entries(Arc::default())),
            Ok(Some(bytes)) => {
                self.existed.store(true, std::sync::atomic::Ordering::Relaxed);
                let hash: [u8; 32] = Sha256::digest(&bytes).into();
                if self.snapshot.read().is_ok_and(|s| s.0 == Some(hash)) {
                    return;
                }
                match serde_json::from_slice::<Vec<TokenEntry>>(&bytes) {
                    Ok(e) => (Some(hash), Snapshot::Entries(Arc::new(e))),
                    Err(e) => {
                        self.set_unreadable(&TokenError::Format(self.path.display().to_string(), e));
                        return;
                    }
                }
            }
            Err(e) => {
                self.set_unreadable(&e);
                return;
            }
        };
        if let Ok(mut s) = self.snapshot.write() {
            if matches!(s.1, Snapshot::Unreadable) {
                tracing::info!(tokens = %self.path.display(), "token file readable again");
            }
            *s = (hash, snap);
        }
        self.remerge();
    }

    fn set_unreadable(&self, e: &TokenError) {
        if let Ok(mut s) = self.snapshot.write() {
            if !matches!(s.1, Snapshot::Unreadable) {
                tracing::error!(error = %e, "token file unreadable; refusing every guarded request until it is fixed");
            }
            *s = (None, Snapshot::Unreadable);
        }
        self.remerge();
    }

    /// The file's bytes (`None`: no file), at most [`MAX_FILE_BYTES`].
    fn read_raw(&self) -> Result<Option<Vec<u8>>, TokenError> {
        let p = || self.path.display().to_string();
        let f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(TokenError::Io(p(), e)),
        };
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_FILE_BYTES + 1), &mut bytes)
            .map_err(|e| TokenError::Io(p(), e))?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(TokenError::TooLarge(p()));
        }
        Ok(Some(bytes))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All entries, fresh from disk.
    pub fn list(&self) -> Result<Vec<TokenEntry>, TokenError> {
        match self.read_raw()? {
            Some(b) => serde_json::from_slice(&b).map_err(|e| TokenError::Format(self.path.display().to_string(), e)),
            None => Ok(Vec::new()),
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
        write().map_err(|e| TokenError::Io(p, e))?;
        self.existed.store(true, std::sync::atomic::Ordering::Relaxed);
        // This process's own change is in force at once, not at the next refresh.
        if let Ok(mut s) = self.snapshot.write() {
            *s = (
                Some(Sha256::digest(&json).into()),
                Snapshot::Entries(Arc::new(entries.to_vec())),
            );
        }
        self.remerge();
        Ok(())
    }

    /// Create a token; returns it (shown once, only its hash is kept).
    pub fn create(&self, name: &str, role: Role) -> Result<String, TokenError> {
        let (entry, token) = TokenEntry::new_token(name, role)?;
        self.add(entry)?;
        Ok(token)
    }

    /// Add an entry, refusing a taken name, PSK identity or key.
    pub fn add(&self, entry: TokenEntry) -> Result<(), TokenError> {
        let _writing = self.writing.lock().map_err(|_| TokenError::Poisoned)?;
        let mut entries = self.list()?;
        entry.fits(&entries)?;
        entries.push(entry);
        self.save(&entries)
    }

    /// A DTLS pre-shared key for device `name` (see [`TokenEntry::new_psk`]). Returned once.
    pub fn create_psk(&self, name: &str, identity: Option<&str>, key: Option<Vec<u8>>) -> Result<Psk, TokenError> {
        let (entry, psk) = TokenEntry::new_psk(name, identity, key)?;
        self.add(entry)?;
        Ok(psk)
    }

    /// Admit device `name` over DTLS by its public key (SubjectPublicKeyInfo SHA-256).
    pub fn create_public_key(&self, name: &str, spki_sha256: [u8; 32]) -> Result<(), TokenError> {
        self.add(TokenEntry::new_public_key(name, spki_sha256)?)
    }

    /// Revoke by name; whether it existed.
    pub fn revoke(&self, name: &str) -> Result<bool, TokenError> {
        let _writing = self.writing.lock().map_err(|_| TokenError::Poisoned)?;
        let mut entries = self.list()?;
        let before = entries.len();
        entries.retain(|e| e.name != name);
        if entries.len() == before {
            return Ok(false);
        }
        self.save(&entries)?;
        Ok(true)
    }

    /// Whether any token of `role` exists (false when the file is unreadable).
    pub fn any(&self, role: Role) -> bool {
        self.snapshot().any(role).unwrap_or(false)
    }

    /// The name of the token `presented` if it holds one of `roles`.
    pub fn check(&self, presented: &str, roles: &[Role]) -> Option<String> {
        self.snapshot().check(presented, roles)
    }

    /// When no publisher token exists, create one named `local` (or `local-2` … if a device
    /// token has that name) and write it to `token_file` (mode 0600); returns the name.
    /// Never logs the token.
    pub fn create_local_publisher(&self, token_file: &Path) -> Result<Option<String>, TokenError> {
        let entries = self.list()?;
        if entries.iter().any(|e| e.role == Role::Publisher && e.is_token()) {
            return Ok(None);
        }
        let name = (1..100)
            .map(|i| {
                if i == 1 {
                    "local".to_string()
                } else {
                    format!("local-{i}")
                }
            })
            .find(|n| !entries.iter().any(|e| &e.name == n))
            .ok_or_else(|| TokenError::Exists("local".into()))?;
        let token = self.create(&name, Role::Publisher)?;
        let p = token_file.display().to_string();
        let tmp = token_file.with_extension("token.tmp");
        let write = || -> std::io::Result<()> {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp)?;
            std::io::Write::write_all(&mut f, format!("{token}\n").as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, token_file)
        };
        write().map_err(|e| TokenError::Io(p, e))?;
        Ok(Some(name))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn shared_entries_hold_beside_the_file_and_an_unreadable_file_still_refuses_all() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tokens::new(dir.path().join("tokens.json"));
        let local = t.create("local", Role::Publisher).unwrap();
        let (entry, shared) = TokenEntry::new_token("ci", Role::Publisher).unwrap();
        assert!(entry.fits(&t.list().unwrap()).is_ok());
        assert!(matches!(
            TokenEntry::new_token("local", Role::Device)
                .unwrap()
                .0
                .fits(&t.list().unwrap()),
            Err(TokenError::Exists(_))
        ));
        assert_eq!(t.check(&shared, &[Role::Publisher]), None);
        t.set_shared(vec![entry]);
        assert_eq!(t.check(&shared, &[Role::Publisher]).as_deref(), Some("ci"));
        assert_eq!(t.check(&local, &[Role::Publisher]).as_deref(), Some("local"));
        // A file change keeps the shared entries; a revoke in the table drops them.
        let other = t.create("other", Role::Device).unwrap();
        assert_eq!(t.check(&shared, &[Role::Publisher]).as_deref(), Some("ci"));
        assert_eq!(t.check(&other, &[Role::Device]).as_deref(), Some("other"));
        std::fs::write(t.path(), b"not json").unwrap();
        t.refresh();
        assert!(
            matches!(t.snapshot(), Snapshot::Unreadable),
            "a damaged file refuses everyone"
        );
        std::fs::write(t.path(), b"[]").unwrap();
        t.refresh();
        assert_eq!(t.check(&shared, &[Role::Publisher]).as_deref(), Some("ci"));
        t.set_shared(Vec::new());
        assert_eq!(t.check(&shared, &[Role::Publisher]), None);
        // A shared entry that takes a file entry's name is left out.
        t.create("again", Role::Device).unwrap();
        let (clash, clash_token) = TokenEntry::new_token("again", Role::Publisher).unwrap();
        t.set_shared(vec![clash]);
        assert_eq!(t.check(&clash_token, &[Role::Publisher]), None);
    }

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
        assert_eq!(t.check(&tok, &[Role::Publisher]), None, "a revoke is in force at once");
    }

    #[test]
    fn dtls_credentials_are_found_by_identity_and_key_and_turn_on_no_http_guard() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tokens::new(dir.path().join("tokens.json"));
        let p = t.create_psk("sensor-1", None, None).unwrap();
        assert_eq!(p.identity, "sensor-1");
        assert_eq!(p.key.len(), 16);
        let q = t
            .create_psk("sensor-2", Some("id-2"), Some(b"secret".to_vec()))
            .unwrap();
        assert!(matches!(
            t.create_psk("sensor-3", Some("id-2"), None),
            Err(TokenError::BadCredential(_))
        ));
        assert!(matches!(
            t.create_psk("sensor-3", None, Some(vec![])),
            Err(TokenError::BadCredential(_))
        ));
        assert!(matches!(
            t.create_psk("sensor-1", Some("x"), None),
            Err(TokenError::Exists(_))
        ));
        t.create_public_key("board-7", [7; 32]).unwrap();
        assert!(matches!(
            t.create_public_key("board-8", [7; 32]),
            Err(TokenError::BadCredential(_))
        ));
        let s = t.snapshot();
        assert_eq!(s.psk(b"sensor-1"), Some(("sensor-1".to_string(), p.key.clone())));
        assert_eq!(s.psk(b"id-2"), Some(("sensor-2".to_string(), q.key)));
        assert_eq!(s.psk(b"sensor-2"), None);
        assert_eq!(s.public_key(&[7; 32]).as_deref(), Some("board-7"));
        assert_eq!(s.public_key(&[8; 32]), None);
        // DTLS credentials are no HTTP tokens: they neither guard downloads nor pass a check.
        assert_eq!(s.any(Role::Device), Some(false));
        assert_eq!(s.check("", &[Role::Device]), None);
        assert!(
            !format!("{:?}", t.list().unwrap()).contains(&hex::encode(&p.key)),
            "Debug never shows a key"
        );
        assert!(!format!("{p:?}").contains(&hex::encode(&p.key)));
        assert!(t.revoke("sensor-1").unwrap());
        assert_eq!(t.snapshot().psk(b"sensor-1"), None);
    }

    #[test]
    fn an_unreadable_file_refuses_both_roles() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tokens::new(dir.path().join("tokens.json"));
        let tok = t.create("ci", Role::Publisher).unwrap();
        let raw = std::fs::read(t.path()).unwrap();
        std::fs::write(t.path(), &raw[..raw.len() / 2]).unwrap();
        t.refresh();
        let snap = t.snapshot();
        assert!(matches!(snap, Snapshot::Unreadable));
        assert_eq!(snap.any(Role::Device), None, "not \"no device token\": unknown");
        assert_eq!(snap.check(&tok, &[Role::Publisher]), None);
        std::fs::write(t.path(), &raw).unwrap();
        t.refresh();
        assert_eq!(t.check(&tok, &[Role::Publisher]).as_deref(), Some("ci"));
    }

    #[test]
    fn a_replacement_with_the_same_length_and_mtime_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tokens::new(dir.path().join("tokens.json"));
        let other = Tokens::new(dir.path().join("other.json"));
        let old = t.create("aaaa", Role::Publisher).unwrap();
        let new = other.create("bbbb", Role::Publisher).unwrap();
        let (a, b) = (std::fs::read(t.path()).unwrap(), std::fs::read(other.path()).unwrap());
        // Same length (same name length, created in the same second or not: pad the times).
        let b = String::from_utf8(b).unwrap();
        let a_created = serde_json::from_slice::<Vec<TokenEntry>>(&a).unwrap()[0].created;
        let b = serde_json::from_str::<Vec<TokenEntry>>(&b).unwrap();
        let b = serde_json::to_vec_pretty(&[TokenEntry {
            created: a_created,
            ..b[0].clone()
        }])
        .unwrap();
        assert_eq!(a.len(), b.len());
        let mtime = std::fs::metadata(t.path()).unwrap().modified().unwrap();
        // `cp -p`: same inode, same length, mtime set back to the old one.
        let f = std::fs::OpenOptions::new().write(true).open(t.path()).unwrap();
        std::io::Write::write_all(&mut &f, &b).unwrap();
        f.set_modified(mtime).unwrap();
        drop(f);
        assert_eq!(std::fs::metadata(t.path()).unwrap().modified().unwrap(), mtime);
        t.refresh();
        assert_eq!(t.check(&old, &[Role::Publisher]), None);
        assert_eq!(t.check(&new, &[Role::Publisher]).as_deref(), Some("bbbb"));
    }

    #[test]
    fn the_watcher_picks_up_another_process_s_change() {
        let dir = tempfile::tempdir().unwrap();
        let t = Arc::new(Tokens::new(dir.path().join("tokens.json")));
        t.watch(Duration::from_millis(20)).unwrap();
        // "Another process": a second handle on the same file.
        let tok = Tokens::new(t.path()).create("ci", Role::Publisher).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while t.check(&tok, &[Role::Publisher]).is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the watcher never saw the new token"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn local_publisher_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tokens::new(dir.path().join("tokens.json"));
        t.create("local", Role::Device).unwrap();
        let file = dir.path().join(LOCAL_TOKEN_FILE);
        assert_eq!(t.create_local_publisher(&file).unwrap().as_deref(), Some("local-2"));
        let tok = std::fs::read_to_string(&file).unwrap();
        assert_eq!(t.check(tok.trim(), &[Role::Publisher]).as_deref(), Some("local-2"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(t.create_local_publisher(&file).unwrap(), None, "only when none exists");
    }

    #[test]
    fn a_token_file_removed_while_serving_refuses_everyone() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tokens::new(dir.path().join("tokens.json"));
        let tok = t.create("ci", Role::Publisher).unwrap();
        t.refresh();
        assert_eq!(t.check(&tok, &[Role::Publisher]).as_deref(), Some("ci"));
        std::fs::remove_file(t.path()).unwrap();
        t.refresh();
        // Before: "no file" meant "no tokens", which opened device downloads to everyone.
        assert!(matches!(t.snapshot(), Snapshot::Unreadable));
        assert_eq!(t.check(&tok, &[Role::Publisher]), None);
    }
}
