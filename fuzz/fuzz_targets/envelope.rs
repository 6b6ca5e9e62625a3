//! SUIT envelope decode + verify + re-encode + diagnostic rendering on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use suitcase_suit::{diag, Algorithm, Envelope, Manifest, Profile, SigningKey, VerifyingKey};

fn keys() -> &'static [VerifyingKey] {
    static KEYS: OnceLock<Vec<VerifyingKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let ietf = include_str!("../../tests/vectors/ietf/example-key.pub.pem");
        vec![
            VerifyingKey::from_public_key_pem(ietf).expect("example key"),
            SigningKey::generate(Algorithm::Ed25519).verifying_key(),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::decode(data) {
        let _ = env.verify_any(keys());
        let again = env.encode();
        // A decoded envelope re-encodes to something that decodes to the same envelope.
        let back = Envelope::decode(&again).expect("re-encoded envelope decodes");
        assert_eq!(back.manifest(), env.manifest());
        let _ = diag::diag(env.manifest_bytes());
    }
    for p in [Profile::Draft37, Profile::Riot09] {
        if let Ok(m) = Manifest::decode(p, data) {
            let bytes = m.encode(p);
            assert_eq!(Manifest::decode(p, &bytes).expect("re-encoded manifest decodes"), m);
        }
    }
});
