//! The versioned firmware store behind every protocol of suitcase.
//!
//! A *publish-id* (`fw/app/board`) has immutable [`Version`]s numbered 1, 2, 3 … Each
//! version lists its files and, usually, a signed SUIT manifest; file contents are stored
//! once by SHA-256. A publish either becomes visible whole or not at all.
//!
//! [`Store`] is the interface; [`LocalStore`] is the embedded default (a directory on local
//! disk). The trait is synchronous: callers on an async runtime use `spawn_blocking` for
//! publishes; reads of the in-memory index are cheap.

mod blob;
pub mod gate;
mod id;
mod local;
pub mod paths;

use std::sync::Arc;

use bytes::Bytes;

pub use blob::Blob;
pub use gate::{Allowed, Gate, Requester};
pub use id::{validate_file_name, validate_publish_id, MAX_FILE_NAME_LEN, MAX_PUBLISH_ID_LEN, RESERVED_SEGMENTS};
pub use local::{content_cache, ByLength, ContentCache, LocalStore};

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// Digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        use sha2::Digest as _;
        Sha256(sha2::Sha256::digest(data).into())
    }
    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// Parse 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Sha256(out))
    }
}

impl std::fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.to_hex())
    }
}

/// One stored file of a version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// File name under the publish-id (one path segment).
    pub name: String,
    /// SHA-256 of the content.
    pub sha256: Sha256,
    /// Size in bytes.
    pub size: u64,
}

/// The manifest of a version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestEntry {
    /// The stored manifest file (its name is also served as a plain file).
    pub file: FileEntry,
    /// The SUIT sequence number, when known.
    pub sequence_number: Option<u64>,
    /// Whether the server built and signed it.
    pub server_built: bool,
}

/// One immutable version of a publish-id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    /// The publish-id.
    pub publish_id: String,
    /// Version number: 1 for the first publish, then +1 each time.
    pub seq: u64,
    /// Unix time (seconds) of the publish.
    pub created_at: u64,
    /// Optional semantic version given by the publisher.
    pub semver: Option<semver::Version>,
    /// The signed manifest, if any.
    pub manifest: Option<ManifestEntry>,
    /// Firmware files.
    pub files: Vec<FileEntry>,
    /// CoAP block size (bytes) for devices that do not ask for one, chosen at publish time
    /// for the devices of this publish-id; `None`: the server's default.
    pub block_size: Option<u16>,
}

impl Version {
    /// A file by name, including the manifest under its stored name.
    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files
            .iter()
            .find(|f| f.name == name)
            .or_else(|| self.manifest.as_ref().map(|m| &m.file).filter(|f| f.name == name))
    }
}

/// A file to publish.
#[derive(Clone, Debug)]
pub struct NewFile {
    /// Its name (validated by the store).
    pub name: String,
    /// Its content.
    pub data: Bytes,
}

/// A manifest to store with a version.
#[derive(Clone, Debug)]
pub struct NewManifest {
    /// The file name it is stored and served under.
    pub name: String,
    /// The encoded, signed envelope.
    pub data: Bytes,
    /// Its SUIT sequence number, when known; the store requires it to grow.
    pub sequence_number: Option<u64>,
    /// Built and signed by the server.
    pub server_built: bool,
}

/// What the manifest builder sees of a version about to be made.
#[derive(Debug)]
pub struct Draft<'a> {
    /// The publish-id.
    pub publish_id: &'a str,
    /// The version number this publish will get.
    pub seq: u64,
    /// The newest existing version, if any.
    pub previous: Option<&'a Version>,
    /// The highest manifest sequence number this publish-id ever had, removed versions
    /// included: a new manifest's number must be greater.
    pub max_sequence_number: Option<u64>,
    /// The files, with their digests.
    pub files: &'a [FileEntry],
    /// Unix time of the publish.
    pub now: u64,
}

/// A manifest builder run under the publish lock, so the version number it sees is the one
/// the version gets.
pub type BuildManifest<'f> = dyn FnOnce(&Draft<'_>) -> Result<Option<NewManifest>, String> + 'f;

/// What to publish.
#[derive(Clone, Debug, Default)]
pub struct PublishRequest {
    /// The publish-id.
    pub publish_id: String,
    /// Firmware files (at least one, names unique).
    pub files: Vec<NewFile>,
    /// Optional semantic version.
    pub semver: Option<semver::Version>,
    /// Refuse the publish ([`StoreError::Conflict`]) when a listed version of the publish-id
    /// has the same semver; checked under the publish lock, so concurrent publishes of one
    /// semver cannot both succeed.
    pub unique_semver: bool,
    /// CoAP block size for devices that do not ask for one (16..=1024, a power of two).
    pub block_size: Option<u16>,
}

/// The checked file entries of a publish request (publish-id, names, block size), for
/// every backend.
pub fn prepare_files(req: &PublishRequest) -> Result<Vec<FileEntry>, StoreError> {
    validate_publish_id(&req.publish_id)?;
    if req.files.is_empty() {
        return Err(StoreError::BadRequest("a publish needs at least one file".into()));
    }
    if let Some(b) = req.block_size.filter(|b| !valid_block_size(*b)) {
        return Err(StoreError::BadRequest(format!(
            "block size {b}: a power of two from 16 to 1024"
        )));
    }
    let mut entries = Vec::with_capacity(req.files.len());
    for f in &req.files {
        validate_file_name(&f.name)?;
        if entries.iter().any(|e: &FileEntry| e.name == f.name) {
            return Err(StoreError::BadRequest(format!("file {:?} given twice", f.name)));
        }
        entries.push(FileEntry {
            name: f.name.clone(),
            sha256: Sha256::of(&f.data),
            size: f.data.len() as u64,
        });
    }
    Ok(entries)
}

/// The checked entry of a version's manifest: a valid name that is not a file's, and a
/// sequence number above every one the publish-id had.
pub fn prepare_manifest(
    m: &NewManifest,
    files: &[FileEntry],
    max_sequence_number: Option<u64>,
) -> Result<ManifestEntry, StoreError> {
    validate_file_name(&m.name)?;
    if files.iter().any(|e| e.name == m.name) {
        return Err(StoreError::BadRequest(format!(
            "manifest name {:?} is also a file",
            m.name
        )));
    }
    if let (Some(new), Some(current)) = (m.sequence_number, max_sequence_number) {
        if new <= current {
            return Err(StoreError::SequenceNotIncreasing { new, current });
        }
    }
    Ok(ManifestEntry {
        file: FileEntry {
            name: m.name.clone(),
            sha256: Sha256::of(&m.data),
            size: m.data.len() as u64,
        },
        sequence_number: m.sequence_number,
        server_built: m.server_built,
    })
}

/// A version as JSON: the record the local store writes, which other backends store too.
pub fn version_to_json(v: &Version) -> String {
    local::record_json(v)
}

/// A version read back from [`version_to_json`]'s JSON, checked; `origin` names it in errors.
pub fn version_from_json(json: &str, origin: &str) -> Result<Version, StoreError> {
    local::record_from_json(json, origin)
}

/// Whether `url` names a PostgreSQL database (`postgres://…` or `postgresql://…`), as the
/// fleet, the shared store and the token table read `--database`.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// A URL with its password hidden (`scheme://user:***@host/…`), for messages and logs: the
/// database URLs of the fleet and of the shared store carry credentials.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Is `n` a CoAP block size (16, 32, … 1024)?
pub fn valid_block_size(n: u16) -> bool {
    n.is_power_of_two() && (16..=1024).contains(&n)
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The publish-id is not acceptable.
    #[error("invalid publish-id {0}")]
    InvalidPublishId(String),
    /// A file name is not acceptable.
    #[error("invalid file name {0}")]
    InvalidFileName(String),
    /// The request is inconsistent (no files, duplicate names …).
    #[error("{0}")]
    BadRequest(String),
    /// The manifest's sequence number does not grow.
    #[error("manifest sequence number {new} is not greater than the current {current}")]
    SequenceNotIncreasing {
        /// Offered.
        new: u64,
        /// Current highest.
        current: u64,
    },
    /// The publish conflicts with what is stored (a semver that must be unique exists).
    #[error("{0}")]
    Conflict(String),
    /// The manifest builder failed.
    #[error("building the manifest failed: {0}")]
    Manifest(String),
    /// A version or blob that should exist does not.
    #[error("not found: {0}")]
    NotFound(String),
    /// The disk is full.
    #[error("no space left on the store's disk")]
    NoSpace,
    /// The store's file system is read-only.
    #[error("the store is read-only")]
    ReadOnly,
    /// Any other I/O failure.
    #[error("store I/O at {path}: {source}")]
    Io {
        /// Path involved.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A service the store depends on (its database, its object store) does not answer;
    /// the request may succeed later.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// A stored record is corrupt.
    #[error("corrupt store record {path}: {what}")]
    Corrupt {
        /// Path of the record.
        path: String,
        /// What is wrong.
        what: String,
    },
}

/// The store interface; implementations are shared between the HTTP and CoAP servers.
pub trait Store: Send + Sync + 'static {
    /// Publish a new version atomically. `build` runs with the version number assigned and
    /// may produce the manifest.
    fn publish(&self, req: PublishRequest, build: Box<BuildManifest<'_>>) -> Result<Arc<Version>, StoreError>;
    /// Remove one version: it is no longer listed or served. Its record is kept aside (as
    /// `<seq>.json.removed`) so version and sequence numbers are never reused.
    fn remove(&self, publish_id: &str, seq: u64) -> Result<Arc<Version>, StoreError>;
    /// The newest version of `publish_id`.
    fn latest(&self, publish_id: &str) -> Option<Arc<Version>>;
    /// One version.
    fn version(&self, publish_id: &str, seq: u64) -> Option<Arc<Version>>;
    /// All versions, oldest first.
    fn versions(&self, publish_id: &str) -> Vec<Arc<Version>>;
    /// Every publish-id, sorted.
    fn publish_ids(&self) -> Vec<String>;
    /// The whole content of a stored file, checked against its digest.
    fn read(&self, digest: &Sha256) -> Result<Bytes, StoreError>;
    /// A stored file for serving: small files whole from a bounded in-memory cache, large
    /// ones as an open file read range by range (never loaded whole).
    fn blob(&self, entry: &FileEntry) -> Result<Blob, StoreError>;
    /// A counter that grows with every change (new version): cheap change detection.
    fn generation(&self) -> u64;
    /// The content cache's counters (for metrics); zeros for a store without one.
    fn cache_stats(&self) -> CacheStats {
        CacheStats::default()
    }
}

/// Counters of a store's content cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from memory.
    pub hits: u64,
    /// Lookups that went to disk.
    pub misses: u64,
    /// Bytes of content held now.
    pub bytes: u64,
}
