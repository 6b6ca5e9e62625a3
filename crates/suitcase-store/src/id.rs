//! Validation of publish-ids and file names: the only strings from users that become paths.

use crate::StoreError;

/// Longest publish-id accepted (RIOT's URL limit is 128 bytes for the whole URL).
pub const MAX_PUBLISH_ID_LEN: usize = 200;
/// Longest file name accepted.
pub const MAX_FILE_NAME_LEN: usize = 128;

/// Is `s` one path segment of the characters ids and names may use?
pub(crate) fn segment_ok(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
}

/// Segments a publish-id may not contain: they start the version and manifest paths under
/// an id (`<id>/v/<n>/<file>`, `<id>/manifest`), so an id holding one could shadow another
/// id's files.
pub const RESERVED_SEGMENTS: [&str; 2] = ["v", "manifest"];

/// Check a publish-id: segments of `[A-Za-z0-9._+-]` joined by `/` (RIOT uses
/// `fw/<app>/<board>`); no empty, `.` or `..` segment, no leading or trailing `/`, and no
/// segment `v` or `manifest` ([`RESERVED_SEGMENTS`]).
pub fn validate_publish_id(id: &str) -> Result<(), StoreError> {
    if id.is_empty() || id.len() > MAX_PUBLISH_ID_LEN {
        return Err(StoreError::InvalidPublishId(format!(
            "{id:?}: length must be 1..={MAX_PUBLISH_ID_LEN}"
        )));
    }
    if !id.split('/').all(segment_ok) {
        return Err(StoreError::InvalidPublishId(format!(
            "{id:?}: segments are [A-Za-z0-9._+-], separated by '/', never empty, '.' or '..'"
        )));
    }
    if let Some(r) = id.split('/').find(|s| RESERVED_SEGMENTS.contains(s)) {
        return Err(StoreError::InvalidPublishId(format!(
            "{id:?}: the segment {r:?} is reserved (it starts version and manifest paths)"
        )));
    }
    Ok(())
}

/// Check a file name: one segment of `[A-Za-z0-9._+-]`, not starting with `.`, not the
/// reserved names `manifest` and `v`.
pub fn validate_file_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.len() > MAX_FILE_NAME_LEN || name.starts_with('.') || !segment_ok(name) {
        return Err(StoreError::InvalidFileName(format!(
            "{name:?}: one segment of [A-Za-z0-9._+-], 1..={MAX_FILE_NAME_LEN} bytes, not starting with '.'"
        )));
    }
    if name == "manifest" || name == "v" {
        return Err(StoreError::InvalidFileName(format!("{name:?} is reserved")));
    }
    Ok(())
}

/// The directory name of a publish-id: `/` escaped as `%2F` (ids hold no `%`).
pub(crate) fn dir_name(id: &str) -> String {
    id.replace('/', "%2F")
}

/// Inverse of [`dir_name`].
pub(crate) fn from_dir_name(dir: &str) -> String {
    dir.replace("%2F", "/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_ids() {
        for ok in ["a", "fw/app/board", "samr21-xpro_tests_suit", "x.y+z"] {
            assert!(validate_publish_id(ok).is_ok(), "{ok}");
            assert_eq!(from_dir_name(&dir_name(ok)), ok);
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "../x",
            "a/../b",
            "a/./b",
            "a\0b",
            "a b",
            "a%2Fb",
            "é",
            &"x".repeat(201),
            "fw/app/v/1",
            "v",
            "fw/manifest",
        ] {
            assert!(validate_publish_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn file_names() {
        for ok in ["riot.suit.1700000000.bin", "slot0.3.bin", "fw_v1.2.3.bin"] {
            assert!(validate_file_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "..", "manifest", "v", "a\\b", "a\0"] {
            assert!(validate_file_name(bad).is_err(), "{bad:?}");
        }
    }
}
