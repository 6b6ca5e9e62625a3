//! A node's cache of contents on local disk, for the files too large for the memory cache
//! (`suitcase_store::content_cache`, the local store's own): a directory under a byte
//! budget, least recently used out first. Files are named by their SHA-256 and written whole (a temporary name, then a rename), so a file in
//! the directory is always complete; the directory is emptied at start, since its files
//! were not checked since.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use suitcase_store::Sha256;

struct Entry {
    size: u64,
    used: u64,
}

/// Contents on local disk.
pub(crate) struct DiskCache {
    dir: PathBuf,
    budget: u64,
    entries: Mutex<HashMap<Sha256, Entry>>,
    used: AtomicU64,
    clock: AtomicU64,
    tmp: AtomicU64,
}

impl DiskCache {
    /// The cache in `dir` (created, and emptied of what an earlier run left).
    pub(crate) fn open(dir: &Path, budget: u64) -> std::io::Result<DiskCache> {
        std::fs::create_dir_all(dir)?;
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if e.file_type()?.is_file() {
                std::fs::remove_file(e.path())?;
            }
        }
        Ok(DiskCache {
            dir: dir.to_path_buf(),
            budget,
            entries: Mutex::new(HashMap::new()),
            used: AtomicU64::new(0),
            clock: AtomicU64::new(0),
            tmp: AtomicU64::new(0),
        })
    }

    fn path(&self, d: &Sha256) -> PathBuf {
        self.dir.join(d.to_hex())
    }

    /// Bytes on disk now.
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn touch(&self, d: &Sha256) -> Option<u64> {
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut entries = self.entries.lock();
        let e = entries.get_mut(d)?;
        e.used = now;
        Some(e.size)
    }

    pub(crate) fn contains(&self, d: &Sha256) -> bool {
        self.entries.lock().contains_key(d)
    }

    /// The open file and its length, if cached.
    pub(crate) fn file(&self, d: &Sha256) -> Option<(Arc<File>, u64)> {
        let size = self.touch(d)?;
        match File::open(self.path(d)) {
            Ok(f) => Some((Arc::new(f), size)),
            Err(_) => {
                self.forget(d);
                None
            }
        }
    }

    /// Drop an entry whose file is gone or wrong, so the next insert writes it again.
    fn forget(&self, d: &Sha256) {
        let mut entries = self.entries.lock();
        if let Some(e) = entries.remove(d) {
            self.used.fetch_sub(e.size, Ordering::Relaxed);
            let _ = std::fs::remove_file(self.path(d));
        }
    }

    /// The whole content, if cached.
    pub(crate) fn read(&self, d: &Sha256) -> Option<Bytes> {
        self.touch(d)?;
        // Checked on the way out too: a disk may corrupt what it was given.
        match std::fs::read(self.path(d)) {
            Ok(data) if Sha256::of(&data) == *d => Some(Bytes::from(data)),
            _ => {
                self.forget(d);
                None
            }
        }
    }

    /// Keep `data` (whose digest is `d`), evicting the least recently used files over the
    /// budget. A file larger than the whole budget is not kept.
    pub(crate) fn insert(&self, d: &Sha256, data: &[u8]) -> std::io::Result<()> {
        let size = data.len() as u64;
        if size > self.budget || self.contains(d) {
            return Ok(());
        }
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            self.tmp.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(data)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        // The rename and the entry together, under the lock an eviction takes too.
        let mut entries = self.entries.lock();
        if let Err(e) = std::fs::rename(&tmp, self.path(d)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        if entries.insert(*d, Entry { size, used: now }).is_none() {
            self.used.fetch_add(size, Ordering::Relaxed);
        }
        while self.used.load(Ordering::Relaxed) > self.budget {
            let Some(victim) = entries
                .iter()
                .filter(|(k, _)| *k != d)
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            if let Some(e) = entries.remove(&victim) {
                self.used.fetch_sub(e.size, Ordering::Relaxed);
                // Open handles keep serving the unlinked file.
                let _ = std::fs::remove_file(self.path(&victim));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_disk_cache_keeps_its_budget_and_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("left-over"), b"x").unwrap();
        let c = DiskCache::open(dir.path(), 3000).unwrap();
        assert!(!dir.path().join("left-over").exists());
        let blobs: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 1000]).collect();
        let ds: Vec<Sha256> = blobs.iter().map(|b| Sha256::of(b)).collect();
        for (d, b) in ds.iter().zip(&blobs).take(3) {
            c.insert(d, b).unwrap();
        }
        assert_eq!(c.used(), 3000);
        // Use the first: the second is now the least recently used.
        assert_eq!(c.read(&ds[0]).unwrap(), Bytes::from(blobs[0].clone()));
        c.insert(&ds[3], &blobs[3]).unwrap();
        assert_eq!(c.used(), 3000);
        assert!(c.contains(&ds[0]) && !c.contains(&ds[1]) && c.contains(&ds[2]) && c.contains(&ds[3]));
        assert!(!c.path(&ds[1]).exists());
        let (f, len) = c.file(&ds[3]).unwrap();
        assert_eq!(len, 1000);
        drop(f);
        // Larger than the budget: not kept.
        let big = vec![9u8; 4000];
        c.insert(&Sha256::of(&big), &big).unwrap();
        assert!(!c.contains(&Sha256::of(&big)));
        // A corrupted file is a miss, not wrong bytes.
        std::fs::write(c.path(&ds[0]), vec![7u8; 1000]).unwrap();
        assert!(c.read(&ds[0]).is_none());
        assert!(!c.contains(&ds[0]), "a corrupt file stays registered");
        c.insert(&ds[0], &blobs[0]).unwrap();
        assert_eq!(c.read(&ds[0]).unwrap(), Bytes::from(blobs[0].clone()));
    }
}
