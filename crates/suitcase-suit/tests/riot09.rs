//! RIOT's draft-09 profile: a manifest built by our builder must have the structure RIOT's
//! parser (`sys/suit`) expects. The golden files in `tests/vectors/riot09/` hold the decoded
//! form and the exact signed bytes (Ed25519 signatures are deterministic); regenerate with
//! `UPDATE_EXPECT=1 cargo test -p suitcase-suit --test riot09` after a deliberate change.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use sha2::{Digest as _, Sha256};
use suitcase_suit::{builder, diag, Envelope, Image, ManifestBuilder, Profile, SigningKey, VerifyingKey};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors")
}

fn golden(name: &str, actual: &[u8]) {
    let path = dir().join("riot09").join(name);
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        expected == actual,
        "{name} differs from the golden file:\n{}",
        String::from_utf8_lossy(actual)
    );
}

fn build() -> (suitcase_suit::Manifest, SigningKey) {
    let key = SigningKey::from_pkcs8_pem(&std::fs::read_to_string(dir().join("keys/ed25519.pem")).unwrap()).unwrap();
    let vendor = builder::vendor_id("riot-os.org");
    let class = builder::class_id(&vendor, "samr21-xpro");
    let root = "coap://[2001:db8::1]/fw/suit_update/samr21-xpro";
    let mut b = ManifestBuilder::new(Profile::Riot09, 1_700_000_000, vendor, class);
    for (slot, offset) in [(0, 0x1000u64), (1, 0x20800)] {
        let name = format!("slot{slot}.1700000000.bin");
        let data = std::fs::read(dir().join("riot09").join(&name)).unwrap();
        b = b.image(Image::from_bytes(format!("{root}/{name}"), &data, Some(offset)));
    }
    (b.build().unwrap(), key)
}

#[test]
fn golden_structure_and_bytes() {
    let (manifest, key) = build();
    let env = Envelope::sign(Profile::Riot09, &manifest, &key).unwrap();
    let bytes = env.encode();
    golden(
        "manifest.diag",
        format!("{}\n", diag::diag(env.manifest_bytes()).unwrap()).as_bytes(),
    );
    golden("riot.suit.1700000000.bin", &bytes);
    // RIOT keeps manifests within SUIT_MANIFEST_BUFSIZE = 640 bytes.
    assert!(bytes.len() <= 640, "{} bytes", bytes.len());
}

#[test]
fn the_golden_manifest_has_riots_wire_shape() {
    let bytes = std::fs::read(dir().join("riot09/riot.suit.1700000000.bin")).unwrap();
    // No tag; envelope map with exactly keys 2 and 3 (RIOT rejects anything else).
    assert_eq!(bytes[0], 0xa2);
    assert_eq!(bytes[1], 0x02);
    let env = Envelope::decode(&bytes).unwrap();
    assert_eq!(env.profile(), Profile::Riot09);
    let pubkey =
        VerifyingKey::from_public_key_pem(&std::fs::read_to_string(dir().join("keys/ed25519.pub.pem")).unwrap())
            .unwrap();
    env.verify(&pubkey).unwrap();

    // One COSE_Sign1: tag 18, protected {1: -8}, empty unprotected, attached payload
    // 82 02 58 20 || SHA-256(manifest bstr with its header), 64-byte signature.
    let cose = &env.authentication_blocks()[0];
    let mut item = vec![];
    let m = env.manifest_bytes();
    item.extend_from_slice(&suitcase_suit::cbor::bstr_item(m));
    let mut payload = vec![0x82, 0x02, 0x58, 0x20];
    payload.extend_from_slice(&Sha256::digest(&item));
    let mut expected_head = vec![0xd2, 0x84, 0x43, 0xa1, 0x01, 0x27, 0xa0, 0x58, 0x24];
    expected_head.extend_from_slice(&payload);
    expected_head.extend_from_slice(&[0x58, 0x40]);
    assert_eq!(&cose[..expected_head.len()], &expected_head[..]);
    assert_eq!(cose.len(), expected_head.len() + 64);

    // Manifest keys 1, 2, 3, 9 (install), 10 (validate), nothing else; version 1;
    // sequence number = the app version; component [h'00'].
    let text = diag::diag(m).unwrap();
    assert!(text.starts_with("{1: 1, 2: 1700000000, 3: << {2: [[h'00']], 4: << [20, {1: h'547d0d746d3a5a9296624881afd9407b', 2: h'8818989ea2575994ac9a554b77898083'"), "{text}");
    assert!(text.contains("9: << [15, [<< [19, {5: 4096}, 5, 5, 19, {21: \"coap://[2001:db8::1]/fw/suit_update/samr21-xpro/slot0.1700000000.bin\"}] >>"), "{text}");
    assert!(text.contains("21, 2, 3, 15] >>, 10: << [3, 15] >>}"), "{text}");
    // Image digests use draft-09's algorithm id 2 (SHA-256).
    assert!(text.contains("{3: << [2, h'"), "{text}");
}

/// RIOT's envelope handler table holds only the wrapper (2) and the manifest (3) and refuses
/// any other key, so the riot09 profile refuses envelope extensions that draft37 keeps.
#[test]
fn riot09_refuses_envelope_members_riot_has_no_handler_for() {
    let bytes = std::fs::read(dir().join("riot09/riot.suit.1700000000.bin")).unwrap();
    assert_eq!(bytes[0], 0xa2, "an untagged map of two");
    let mut extended = bytes.clone();
    extended[0] = 0xa3;
    extended.extend_from_slice(&[0x0e, 0x41, 0x00]); // 14: h'00'
    let err = Envelope::decode_with(Profile::Riot09, &extended).unwrap_err();
    assert!(err.to_string().contains("unknown key 14 in envelope"), "{err}");
    assert!(Envelope::decode(&extended).is_err());
    Envelope::decode_with(Profile::Riot09, &bytes).unwrap();
}
