//! The version record on disk (`ids/<id>/<seq>.json`, format 1): what a [`Version`] is
//! written as and read back from, checked on the way in.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{FileEntry, ManifestEntry, Sha256, StoreError, Version};

#[derive(Serialize, Deserialize)]
struct FileRecord {
    name: String,
    sha256: String,
    size: u64,
}

#[derive(Serialize, Deserialize)]
struct ManifestRecord {
    name: String,
    sha256: String,
    size: u64,
    sequence_number: Option<u64>,
    server_built: bool,
}

#[derive(Serialize, Deserialize)]
pub(super) struct VersionRecord {
    format: u32,
    publish_id: String,
    seq: u64,
    created_at: u64,
    semver: Option<String>,
    manifest: Option<ManifestRecord>,
    files: Vec<FileRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    block_size: Option<u16>,
}

impl VersionRecord {
    pub(super) fn from_version(v: &Version) -> Self {
        let file = |f: &FileEntry| FileRecord {
            name: f.name.clone(),
            sha256: f.sha256.to_hex(),
            size: f.size,
        };
        VersionRecord {
            format: 1,
            publish_id: v.publish_id.clone(),
            seq: v.seq,
            created_at: v.created_at,
            semver: v.semver.as_ref().map(|s| s.to_string()),
            manifest: v.manifest.as_ref().map(|m| ManifestRecord {
                name: m.file.name.clone(),
                sha256: m.file.sha256.to_hex(),
                size: m.file.size,
                sequence_number: m.sequence_number,
                server_built: m.server_built,
            }),
            files: v.files.iter().map(file).collect(),
            block_size: v.block_size,
        }
    }

    pub(super) fn into_version(self, path: &Path) -> Result<Version, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt {
            path: path.display().to_string(),
            what,
        };
        let digest = |s: &str| Sha256::from_hex(s).ok_or_else(|| corrupt(format!("bad digest {s:?}")));
        if self.format != 1 {
            return Err(corrupt(format!("unknown record format {}", self.format)));
        }
        let mut files = Vec::new();
        for f in self.files {
            files.push(FileEntry {
                sha256: digest(&f.sha256)?,
                name: f.name,
                size: f.size,
            });
        }
        let manifest = match self.manifest {
            None => None,
            Some(m) => Some(ManifestEntry {
                file: FileEntry {
                    sha256: digest(&m.sha256)?,
                    name: m.name,
                    size: m.size,
                },
                sequence_number: m.sequence_number,
                server_built: m.server_built,
            }),
        };
        let semver = match self.semver {
            None => None,
            Some(s) => Some(semver::Version::parse(&s).map_err(|e| corrupt(format!("semver {s:?}: {e}")))?),
        };
        if let Some(b) = self.block_size.filter(|b| !crate::valid_block_size(*b)) {
            return Err(corrupt(format!("block size {b}")));
        }
        Ok(Version {
            publish_id: self.publish_id,
            seq: self.seq,
            created_at: self.created_at,
            semver,
            manifest,
            files,
            block_size: self.block_size,
        })
    }
}
