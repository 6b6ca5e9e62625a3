//! Everything that turns user strings into names, paths and addresses: publish-ids, file
//! names, image names and versions, device addresses. None may panic, and what validation
//! accepts must be safe as a path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use suitcase_coap::trigger::Target;
use suitcase_http::esp::parse_version;
use suitcase_store::{validate_file_name, validate_publish_id};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if validate_publish_id(s).is_ok() {
        assert!(!s.starts_with('/') && !s.ends_with('/'));
        assert!(s.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != ".."));
        assert!(!s.contains('\0') && !s.contains('\\') && !s.contains('%'));
    }
    if validate_file_name(s).is_ok() {
        assert!(!s.contains('/') && !s.starts_with('.') && !s.contains('\0'));
    }
    let _ = parse_version(s);
    if let Ok(t) = Target::parse(s) {
        assert!(!t.host.is_empty() && !t.path.is_empty());
    }
});
