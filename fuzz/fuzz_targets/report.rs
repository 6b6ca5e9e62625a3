//! Device reports (JSON, CBOR, SUIT reports, COSE-wrapped) as any peer may send them, under
//! every Content-Format: never a panic, and what is accepted is bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use suitcase_fleet::report::{parse, MAX_REASON};

fuzz_target!(|data: &[u8]| {
    let Some((cf, payload)) = data.split_first() else { return };
    let content_format = match cf % 4 {
        0 => None,
        1 => Some(50),
        2 => Some(60),
        _ => Some(u16::from(*cf)),
    };
    if let Ok(r) = parse(content_format, payload) {
        assert!(r.reason.as_ref().is_none_or(|s| s.chars().count() <= MAX_REASON));
        assert!(r.reason.as_ref().is_none_or(|s| !s.chars().any(char::is_control)));
        assert!(r.reference.as_ref().is_none_or(|s| s.chars().count() <= 300));
    }
});
