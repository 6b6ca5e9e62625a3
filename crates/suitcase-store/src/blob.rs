//! [`Blob`]: a stored file's content as the servers read it, range by range.

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;

use crate::StoreError;

/// The content of a stored file, for serving.
///
/// Small files are held whole in memory (a shared buffer from the store's weighted cache);
/// large ones are an open file that is read range by range, so serving a file never needs
/// memory in proportion to its size.
#[derive(Clone, Debug)]
pub enum Blob {
    /// The whole content, shared.
    Memory(Bytes),
    /// An open file of `len` bytes.
    File {
        /// The file, opened read-only.
        file: Arc<File>,
        /// Its length.
        len: u64,
    },
}

impl Blob {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Blob::Memory(b) => b.len() as u64,
            Blob::File { len, .. } => *len,
        }
    }

    /// Whether the content is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes `start..end` (clamped to the length): a zero-copy slice of a memory blob, one
    /// positional read of a file blob.
    pub fn range(&self, start: u64, end: u64) -> Result<Bytes, StoreError> {
        let end = end.min(self.len());
        let start = start.min(end);
        match self {
            Blob::Memory(b) => Ok(b.slice(start as usize..end as usize)),
            Blob::File { file, .. } => read_at(file, start, (end - start) as usize),
        }
    }
}

#[cfg(unix)]
fn read_at(file: &File, offset: u64, len: usize) -> Result<Bytes, StoreError> {
    use std::os::unix::fs::FileExt as _;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset).map_err(|e| StoreError::Io {
        path: "blob".into(),
        source: e,
    })?;
    Ok(Bytes::from(buf))
}

#[cfg(not(unix))]
fn read_at(file: &File, offset: u64, len: usize) -> Result<Bytes, StoreError> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    // Without positional reads the handle is shared: clone it for an independent cursor.
    let io = |e| StoreError::Io {
        path: "blob".into(),
        source: e,
    };
    let mut f = file.try_clone().map_err(io)?;
    f.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).map_err(io)?;
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ranges_of_memory_and_file_blobs_agree() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b");
        std::fs::write(&p, &data).unwrap();
        let blobs = [
            Blob::Memory(Bytes::from(data.clone())),
            Blob::File {
                file: Arc::new(File::open(&p).unwrap()),
                len: data.len() as u64,
            },
        ];
        for b in &blobs {
            assert_eq!(b.len(), 5000);
            for (s, e) in [(0, 0), (0, 64), (4990, 5000), (4990, 6000), (7000, 8000), (1024, 2048)] {
                let want = &data[(s as usize).min(5000)..(e as usize).min(5000).max((s as usize).min(5000))];
                assert_eq!(&b.range(s, e).unwrap()[..], want, "{s}..{e}");
            }
        }
    }
}
