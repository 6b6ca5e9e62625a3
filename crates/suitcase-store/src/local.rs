//! [`LocalStore`]: the embedded store on a local directory.
//!
//! Layout (format 1):
//! ```text
//! <root>/FORMAT                          "suitcase-store 1"
//! <root>/blobs/sha256/<2 hex>/<64 hex>   file contents, written once
//! <root>/ids/<id, '/' as %2F>/<seq>.json one record per version, never rewritten
//! <root>/tmp/                            staging; emptied at start
//! ```
//! A publish writes and fsyncs every blob first, then the record through a temporary file
//! that is hard-linked into place (no-clobber, so two writers can never share a version
//! number), then fsyncs the directory. A crash at any point leaves either the old set of
//! versions or the new one; orphan blobs are harmless.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
// parking_lot's locks do not poison: a panic while one is held (a manifest builder, say)
// cannot leave the index refusing reads or durable publishes missing from it.
use parking_lot::{Mutex, RwLock};

use crate::id::{dir_name, from_dir_name, validate_publish_id};
use crate::{Blob, BuildManifest, Draft, FileEntry, PublishRequest, Sha256, Store, StoreError, Version};
use record::VersionRecord;

const FORMAT: &str = "suitcase-store 1\n";
/// Bytes of file content kept in memory for serving.
pub const DEFAULT_CACHE_BYTES: u64 = 256 * 1024 * 1024;
/// Files up to this size are served from memory (loaded whole and checked against their
/// digest once); larger ones are read range by range from an open file.
const MAX_INLINE_BYTES: u64 = 4 * 1024 * 1024;
/// Open file handles kept for serving large files.
const OPEN_FILES: usize = 64;

/// Weighs cached contents by their length.
#[derive(Clone, Debug)]
pub struct ByLength;

impl quick_cache::Weighter<Sha256, Bytes> for ByLength {
    fn weight(&self, _: &Sha256, v: &Bytes) -> u64 {
        // Never zero: zero-weight entries would never be evicted.
        (v.len() as u64).max(1)
    }
}

/// File contents held in memory, weighed in bytes: every backend's memory cache.
pub type ContentCache = quick_cache::sync::Cache<Sha256, Bytes, ByLength>;

/// The embedded, local-disk store.
pub struct LocalStore {
    root: PathBuf,
    index: RwLock<HashMap<String, IdState>>,
    publish_lock: Mutex<()>,
    generation: AtomicU64,
    /// Contents of small files, weighted by bytes: the one memory budget of file contents.
    cache: RwLock<ContentCache>,
    /// Largest file held in `cache`.
    inline_max: AtomicU64,
    /// Open handles of large files.
    open_files: quick_cache::sync::Cache<Sha256, Arc<File>>,
    tmp_counter: AtomicU64,
    /// Records that could not be loaded at start (path and reason).
    damaged: Vec<(PathBuf, String)>,
}

/// What the store knows of one publish-id.
#[derive(Default)]
struct IdState {
    versions: BTreeMap<u64, Arc<Version>>,
    /// Highest version number ever given, removed ones included.
    max_seq: u64,
    /// Highest manifest sequence number ever stored, removed versions included.
    max_sequence_number: Option<u64>,
}

impl IdState {
    fn saw(&mut self, v: &Version) {
        self.max_seq = self.max_seq.max(v.seq);
        if let Some(n) = v.manifest.as_ref().and_then(|m| m.sequence_number) {
            self.max_sequence_number = Some(self.max_sequence_number.map_or(n, |m| m.max(n)));
        }
    }
}

/// A content cache of `budget` bytes and the largest file it admits (at most 4 MiB, and
/// half a shard: an item heavier than a shard's share is never admitted).
pub fn content_cache(budget: u64) -> (ContentCache, u64) {
    let items = (budget / (64 * 1024)).clamp(16, 1 << 20) as usize;
    let cache = ContentCache::with_weighter(items, budget.max(1), ByLength);
    // An item heavier than a shard's share is never admitted: stay well below it.
    let inline = MAX_INLINE_BYTES.min(cache.shard_capacity() / 2);
    (cache, inline)
}

/// The version number a record's file name stands for (`<seq>.json`, `<seq>.json.removed`,
/// or anything starting with the 20 digits the store writes), readable or not.
fn record_number(name: &str) -> Option<u64> {
    let digits: &str = &name[..name.bytes().take_while(u8::is_ascii_digit).count()];
    if digits.is_empty() || !name[digits.len()..].starts_with(".json") {
        return None;
    }
    digits.parse().ok()
}

fn io(path: &Path, source: std::io::Error) -> StoreError {
    if source.kind() == ErrorKind::StorageFull || source.raw_os_error() == Some(28) {
        return StoreError::NoSpace;
    }
    if source.kind() == ErrorKind::ReadOnlyFilesystem || source.raw_os_error() == Some(30) {
        return StoreError::ReadOnly;
    }
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io(dir, e))
}

impl LocalStore {
    /// Open (or create) a store at `root`, loading its index and emptying its staging area.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        for d in ["blobs/sha256", "ids", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(|e| io(&p, e))?;
        }
        let tmp = root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(|e| io(&tmp, e))?.flatten() {
            let _ = fs::remove_file(entry.path());
        }
        let (cache, inline_max) = content_cache(DEFAULT_CACHE_BYTES);
        let mut store = LocalStore {
            root,
            index: RwLock::new(HashMap::new()),
            publish_lock: Mutex::new(()),
            generation: AtomicU64::new(0),
            cache: RwLock::new(cache),
            inline_max: AtomicU64::new(inline_max),
            open_files: quick_cache::sync::Cache::new(OPEN_FILES),
            tmp_counter: AtomicU64::new(0),
            damaged: Vec::new(),
        };
        store.check_format()?;
        store.load_index()?;
        Ok(store)
    }

    /// The FORMAT file: written atomically (temporary file, fsync, rename, directory
    /// fsync). An empty one can only be a first start that died before its write (the old,
    /// non-atomic writer on a full disk): it is written again.
    fn check_format(&self) -> Result<(), StoreError> {
        let format_path = self.root.join("FORMAT");
        match fs::read_to_string(&format_path) {
            Ok(s) if s == FORMAT => return Ok(()),
            Ok(s) if !s.trim().is_empty() => {
                return Err(StoreError::Corrupt {
                    path: format_path.display().to_string(),
                    what: format!("unknown store format {:?}", s.trim()),
                })
            }
            Ok(_) => {
                tracing::warn!(path = %format_path.display(), "empty FORMAT file (an interrupted first start), writing it again")
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io(&format_path, e)),
        }
        let tmp = self.write_tmp(FORMAT.as_bytes())?;
        if let Err(e) = fs::rename(&tmp, &format_path) {
            let _ = fs::remove_file(&tmp);
            return Err(io(&format_path, e));
        }
        sync_dir(&self.root)
    }

    /// Set how many bytes of file content are kept in memory (default 256 MiB). Files
    /// larger than a small fraction of it are served from disk range by range.
    pub fn set_cache_budget(&self, bytes: u64) {
        let (cache, inline_max) = content_cache(bytes);
        *self.cache.write() = cache;
        self.inline_max.store(inline_max, Ordering::Relaxed);
    }

    /// Bytes of file content held in memory now.
    pub fn cache_bytes(&self) -> u64 {
        self.cache.read().weight()
    }

    /// Version records that could not be loaded at start: (path, reason). Their numbers are
    /// never given again; the versions are not served until the records are repaired.
    pub fn damaged(&self) -> &[(PathBuf, String)] {
        &self.damaged
    }

    /// The directory the store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn load_index(&mut self) -> Result<(), StoreError> {
        let ids = self.root.join("ids");
        let mut index: HashMap<String, IdState> = HashMap::new();
        let mut damaged = Vec::new();
        for dir in fs::read_dir(&ids).map_err(|e| io(&ids, e))?.flatten() {
            let Some(name) = dir.file_name().to_str().map(from_dir_name) else {
                continue;
            };
            if validate_publish_id(&name).is_err() {
                tracing::warn!(dir = %dir.path().display(), "ignoring a directory that is no publish-id");
                continue;
            }
            let entries = fs::read_dir(dir.path()).map_err(|e| io(&dir.path(), e))?;
            for rec in entries.flatten() {
                let path = rec.path();
                let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                // The number a record's name holds is spent whether or not the record
                // reads: a damaged newest record must not make its number look free.
                let Some(number) = record_number(file_name) else {
                    continue;
                };
                let state = index.entry(name.clone()).or_default();
                state.max_seq = state.max_seq.max(number);
                let removed = match path.extension().and_then(|e| e.to_str()) {
                    Some("json") => false,
                    Some("removed") => true,
                    _ => {
                        damaged.push((path.clone(), "not a version record name".to_string()));
                        continue;
                    }
                };
                let loaded = if removed {
                    self.load_record_unchecked(&path)
                } else {
                    self.load_record(&path)
                };
                match loaded {
                    Ok(v) if v.publish_id == name && v.seq == number => {
                        state.saw(&v);
                        if !removed {
                            state.versions.insert(v.seq, Arc::new(v));
                        }
                    }
                    Ok(v) => damaged.push((
                        path.clone(),
                        format!("record of {:?} version {} under this name", v.publish_id, v.seq),
                    )),
                    Err(e) => damaged.push((path.clone(), e.to_string())),
                }
            }
        }
        for (path, why) in &damaged {
            tracing::error!(path = %path.display(), error = %why, "damaged version record: not served, its number is not reused");
        }
        let n: usize = index.values().map(|v| v.versions.len()).sum();
        if damaged.is_empty() {
            tracing::info!(root = %self.root.display(), publish_ids = index.len(), versions = n, "store opened");
        } else {
            tracing::error!(
                root = %self.root.display(),
                publish_ids = index.len(),
                versions = n,
                damaged = damaged.len(),
                "store opened with damaged version records (listed above); repair or remove them"
            );
        }
        *self.index.write() = index;
        self.damaged = damaged;
        Ok(())
    }

    fn load_record_unchecked(&self, path: &Path) -> Result<Version, StoreError> {
        let bytes = fs::read(path).map_err(|e| io(path, e))?;
        let rec: VersionRecord = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path: path.display().to_string(),
            what: e.to_string(),
        })?;
        rec.into_version(path)
    }

    fn load_record(&self, path: &Path) -> Result<Version, StoreError> {
        let v = self.load_record_unchecked(path)?;
        for f in v.files.iter().chain(v.manifest.as_ref().map(|m| &m.file)) {
            let blob = self.blob_path(&f.sha256);
            if !blob.exists() {
                return Err(StoreError::Corrupt {
                    path: path.display().to_string(),
                    what: format!("blob {:?} of {} is missing", f.sha256, f.name),
                });
            }
        }
        Ok(v)
    }

    fn blob_path(&self, d: &Sha256) -> PathBuf {
        let h = d.to_hex();
        self.root.join("blobs/sha256").join(&h[..2]).join(h)
    }

    fn tmp_path(&self) -> PathBuf {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        self.root.join("tmp").join(format!("{}-{n}", std::process::id()))
    }

    /// Write `data` to a fresh temporary file and fsync it.
    fn write_tmp(&self, data: &[u8]) -> Result<PathBuf, StoreError> {
        let tmp = self.tmp_path();
        let res = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(io(&tmp, e));
        }
        Ok(tmp)
    }

    fn put_blob(&self, digest: &Sha256, data: &[u8]) -> Result<(), StoreError> {
        let dest = self.blob_path(digest);
        if dest.exists() {
            return Ok(());
        }
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let tmp = self.write_tmp(data)?;
        if let Err(e) = fs::rename(&tmp, &dest) {
            let _ = fs::remove_file(&tmp);
            return Err(io(&dest, e));
        }
        sync_dir(&dir)
    }

    fn commit_record(&self, v: &Version) -> Result<(), StoreError> {
        let dir = self.root.join("ids").join(dir_name(&v.publish_id));
        let created = !dir.exists();
        fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        if created {
            sync_dir(&self.root.join("ids"))?;
        }
        let json = serde_json::to_vec_pretty(&VersionRecord::from_version(v)).map_err(|e| StoreError::Corrupt {
            path: dir.display().to_string(),
            what: e.to_string(),
        })?;
        let tmp = self.write_tmp(&json)?;
        let dest = dir.join(format!("{:020}.json", v.seq));
        let linked = fs::hard_link(&tmp, &dest);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => sync_dir(&dir),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(StoreError::BadRequest(format!(
                "version {} of {} was published concurrently by another process",
                v.seq, v.publish_id
            ))),
            Err(e) => Err(io(&dest, e)),
        }
    }

    /// Read a whole blob from disk and check it against its digest.
    fn load(&self, digest: &Sha256) -> Result<Bytes, StoreError> {
        let path = self.blob_path(digest);
        let data = match fs::read(&path) {
            Ok(d) => Bytes::from(d),
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(StoreError::NotFound(format!("blob {digest:?}"))),
            Err(e) => return Err(io(&path, e)),
        };
        if Sha256::of(&data) != *digest {
            return Err(StoreError::Corrupt {
                path: path.display().to_string(),
                what: "content does not match its digest".into(),
            });
        }
        Ok(data)
    }

    /// An open handle of a large blob, whose length must be `size`.
    fn open_file(&self, digest: &Sha256, size: u64) -> Result<Arc<File>, StoreError> {
        if let Some(f) = self.open_files.get(digest) {
            return Ok(f);
        }
        let path = self.blob_path(digest);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(StoreError::NotFound(format!("blob {digest:?}"))),
            Err(e) => return Err(io(&path, e)),
        };
        let len = file.metadata().map_err(|e| io(&path, e))?.len();
        if len != size {
            return Err(StoreError::Corrupt {
                path: path.display().to_string(),
                what: format!("{len} bytes where the record says {size}"),
            });
        }
        let file = Arc::new(file);
        self.open_files.insert(*digest, file.clone());
        Ok(file)
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Store for LocalStore {
    fn publish(&self, req: PublishRequest, build: Box<BuildManifest<'_>>) -> Result<Arc<Version>, StoreError> {
        let entries = crate::prepare_files(&req)?;
        // Blobs first: outside the lock, idempotent.
        for (f, e) in req.files.iter().zip(&entries) {
            self.put_blob(&e.sha256, &f.data)?;
        }
        let _guard = self.publish_lock.lock();
        if req.unique_semver {
            if let Some(sv) = &req.semver {
                if self
                    .versions(&req.publish_id)
                    .iter()
                    .any(|v| v.semver.as_ref() == Some(sv))
                {
                    return Err(StoreError::Conflict(format!(
                        "{} {sv} exists already (versions are immutable)",
                        req.publish_id
                    )));
                }
            }
        }
        let previous = self.latest(&req.publish_id);
        let (max_seq, max_sequence_number) = self.high_water(&req.publish_id);
        let seq = max_seq
            .checked_add(1)
            .ok_or_else(|| StoreError::BadRequest(format!("{}: version numbers are exhausted", req.publish_id)))?;
        let now = now_unix();
        let draft = Draft {
            publish_id: &req.publish_id,
            seq,
            previous: previous.as_deref(),
            max_sequence_number,
            files: &entries,
            now,
        };
        let manifest = build(&draft).map_err(StoreError::Manifest)?;
        let manifest = match manifest {
            None => None,
            Some(m) => {
                let entry = crate::prepare_manifest(&m, &entries, max_sequence_number)?;
                self.put_blob(&entry.file.sha256, &m.data)?;
                Some(entry)
            }
        };
        let version = Version {
            publish_id: req.publish_id.clone(),
            seq,
            created_at: now,
            semver: req.semver,
            manifest,
            files: entries,
            block_size: req.block_size,
        };
        self.commit_record(&version)?;
        let version = Arc::new(version);
        {
            let mut idx = self.index.write();
            let state = idx.entry(req.publish_id.clone()).or_default();
            state.saw(&version);
            state.versions.insert(seq, version.clone());
        }
        self.generation.fetch_add(1, Ordering::Release);
        tracing::info!(publish_id = %version.publish_id, seq, files = version.files.len(), "version published");
        Ok(version)
    }

    fn remove(&self, publish_id: &str, seq: u64) -> Result<Arc<Version>, StoreError> {
        validate_publish_id(publish_id)?;
        let _guard = self.publish_lock.lock();
        let version = self
            .version(publish_id, seq)
            .ok_or_else(|| StoreError::NotFound(format!("version {seq} of {publish_id:?}")))?;
        let dir = self.root.join("ids").join(dir_name(publish_id));
        let from = dir.join(format!("{seq:020}.json"));
        let to = dir.join(format!("{seq:020}.json.removed"));
        fs::rename(&from, &to).map_err(|e| io(&from, e))?;
        sync_dir(&dir)?;
        if let Some(state) = self.index.write().get_mut(publish_id) {
            state.versions.remove(&seq);
        }
        self.generation.fetch_add(1, Ordering::Release);
        tracing::info!(publish_id, seq, "version removed");
        Ok(version)
    }

    fn latest(&self, publish_id: &str) -> Option<Arc<Version>> {
        let idx = self.index.read();
        idx.get(publish_id)?.versions.values().next_back().cloned()
    }

    fn version(&self, publish_id: &str, seq: u64) -> Option<Arc<Version>> {
        let idx = self.index.read();
        idx.get(publish_id)?.versions.get(&seq).cloned()
    }

    fn versions(&self, publish_id: &str) -> Vec<Arc<Version>> {
        let idx = self.index.read();
        idx.get(publish_id)
            .map(|m| m.versions.values().cloned().collect())
            .unwrap_or_default()
    }

    fn publish_ids(&self) -> Vec<String> {
        let idx = self.index.read();
        let mut ids: Vec<String> = idx
            .iter()
            .filter(|(_, s)| !s.versions.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        ids.sort();
        ids
    }

    fn read(&self, digest: &Sha256) -> Result<Bytes, StoreError> {
        if let Some(b) = self.cache.read().get(digest) {
            return Ok(b);
        }
        let data = self.load(digest)?;
        if data.len() as u64 <= self.inline_max.load(Ordering::Relaxed) {
            self.cache.read().insert(*digest, data.clone());
        }
        Ok(data)
    }

    fn blob(&self, entry: &FileEntry) -> Result<Blob, StoreError> {
        if entry.size > self.inline_max.load(Ordering::Relaxed) {
            return Ok(Blob::File {
                file: self.open_file(&entry.sha256, entry.size)?,
                len: entry.size,
            });
        }
        self.read(&entry.sha256).map(Blob::Memory)
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn cache_stats(&self) -> crate::CacheStats {
        let c = self.cache.read();
        crate::CacheStats {
            hits: c.hits(),
            misses: c.misses(),
            bytes: c.weight(),
        }
    }
}

impl LocalStore {
    /// (highest version number, highest manifest sequence number) ever stored for the id.
    fn high_water(&self, publish_id: &str) -> (u64, Option<u64>) {
        let idx = self.index.read();
        idx.get(publish_id)
            .map_or((0, None), |s| (s.max_seq, s.max_sequence_number))
    }
}

mod record;
#[cfg(test)]
mod tests;

/// [`crate::version_to_json`].
pub(crate) fn record_json(v: &Version) -> String {
    // A record of strings and numbers always serializes.
    serde_json::to_string(&VersionRecord::from_version(v)).unwrap_or_default()
}

/// [`crate::version_from_json`].
pub(crate) fn record_from_json(json: &str, origin: &str) -> Result<Version, StoreError> {
    let rec: VersionRecord = serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        path: origin.to_string(),
        what: e.to_string(),
    })?;
    rec.into_version(Path::new(origin))
}
