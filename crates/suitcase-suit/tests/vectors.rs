//! The IETF draft's Appendix B examples and tampered copies, plus build/sign/verify round trips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use suitcase_suit::manifest::{CommandArg, ParamValue, Severable};
use suitcase_suit::{builder, Algorithm, Envelope, Error, Image, ManifestBuilder, Profile, SigningKey, VerifyingKey};

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(vectors().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn example_key() -> VerifyingKey {
    let pem = std::fs::read_to_string(vectors().join("ietf/example-key.pub.pem")).unwrap();
    VerifyingKey::from_public_key_pem(&pem).unwrap()
}

const SIGNED: &[(&str, u64)] = &[
    ("ietf/example0.signed.cbor", 0),
    ("ietf/example1.signed.cbor", 1),
    ("ietf/example2.signed.cbor", 2),
    ("ietf/example2.signed-severed.cbor", 2),
    ("ietf/example3.signed.cbor", 3),
    ("ietf/example4.signed.cbor", 4),
    ("ietf/example5.signed.cbor", 5),
];

#[test]
fn ietf_examples_decode_verify_and_reencode_identically() {
    let key = example_key();
    for (name, seq) in SIGNED {
        let bytes = read(name);
        let env = Envelope::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(env.profile(), Profile::Draft37, "{name}");
        assert_eq!(env.manifest().sequence_number, *seq, "{name}");
        let verified = env.verify(&key).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(verified.manifest().sequence_number, *seq);
        // Typed manifest re-encodes to the exact signed bytes, and so does the envelope.
        assert_eq!(
            env.manifest().encode(Profile::Draft37),
            env.manifest_bytes(),
            "{name}: manifest"
        );
        assert_eq!(env.encode(), bytes, "{name}: envelope");
    }
}

#[test]
fn example0_digest_is_the_drafts() {
    let env = Envelope::decode(&read("ietf/example0.signed.cbor")).unwrap();
    assert_eq!(
        hex::encode(&env.manifest_digest().bytes),
        "6658ea560262696dd1f13b782239a064da7c6c5cbaf52fded428a6fc83c7e5af"
    );
    assert_eq!(env.claimed_digest(), Some(&env.manifest_digest()));
    let params = env.manifest().component_parameters();
    assert_eq!(params.len(), 1);
    assert_eq!(params[0].1.get(14), Some(&ParamValue::Uint(34768)));
}

#[test]
fn unsigned_examples_decode_but_do_not_verify() {
    for i in 0..6 {
        let bytes = read(&format!("ietf/example{i}.unsigned.cbor"));
        let env = Envelope::decode(&bytes).unwrap();
        assert_eq!(env.encode(), bytes);
        assert!(matches!(env.verify(&example_key()), Err(Error::Unsigned)), "example{i}");
    }
}

#[test]
fn example2_severed_members_are_checked() {
    let env = Envelope::decode(&read("ietf/example2.signed.cbor")).unwrap();
    assert_eq!(env.severed_members().len(), 2);
    assert!(matches!(env.manifest().install, Some(Severable::Severed(_))));
    assert_eq!(env.manifest().reference_uri.as_deref(), Some("https://git.io/JJYoj"));
}

/// Flip one byte at `at` and expect verification to fail (decode may fail first, also fine,
/// but never a panic). The one way a flipped envelope may still verify: the flip turned a
/// severed member into an envelope extension no digest covers (its key changed), which the
/// signature says nothing about; the authenticated manifest is then the original's.
fn assert_tamper_fails(bytes: &[u8], at: usize, key: &VerifyingKey) {
    let mut t = bytes.to_vec();
    t[at] ^= 0x01;
    if let Ok(env) = Envelope::decode(&t) {
        if let Ok(v) = env.verify(key) {
            let original = Envelope::decode(bytes).unwrap();
            assert!(
                !env.unauthenticated_extensions().is_empty()
                    && v.envelope().manifest_bytes() == original.manifest_bytes(),
                "tampered byte {at} still verifies"
            );
        }
    }
}

#[test]
fn tampered_examples_fail() {
    let key = example_key();
    for (name, _) in SIGNED {
        let bytes = read(name);
        let env = Envelope::decode(&bytes).unwrap();
        // Last byte of the manifest (inside the signed digest's coverage).
        let manifest_end = bytes
            .windows(env.manifest_bytes().len())
            .position(|w| w == env.manifest_bytes())
            .unwrap()
            + env.manifest_bytes().len()
            - 1;
        let mut t = bytes.clone();
        t[manifest_end] ^= 0x01;
        if let Ok(e) = Envelope::decode(&t) {
            assert!(matches!(e.verify(&key), Err(Error::ManifestDigestMismatch)), "{name}");
        }
        // Every single byte flipped: never verifies, never panics.
        for at in 0..bytes.len() {
            assert_tamper_fails(&bytes, at, &key);
        }
    }
    // The tampered-file vectors kept on disk fail with a clear error.
    for i in 0..6 {
        let t = read(&format!("ietf/tampered/example{i}.signed.cbor"));
        let err = Envelope::decode(&t).unwrap().verify(&key).unwrap_err();
        assert!(
            matches!(err, Error::ManifestDigestMismatch | Error::BadSignature(_)),
            "example{i}: {err}"
        );
    }
}

#[test]
fn a_wrong_key_is_refused() {
    let other = SigningKey::generate(Algorithm::Es256).verifying_key();
    let env = Envelope::decode(&read("ietf/example1.signed.cbor")).unwrap();
    assert!(matches!(env.verify(&other), Err(Error::BadSignature(_))));
    let ed = SigningKey::generate(Algorithm::Ed25519).verifying_key();
    assert!(matches!(env.verify(&ed), Err(Error::BadSignature(_))));
}

#[test]
fn built_manifests_sign_and_verify_in_both_profiles_and_algorithms() {
    for alg in [Algorithm::Ed25519, Algorithm::Es256] {
        let key = SigningKey::generate(alg);
        let vendor = builder::vendor_id("riot-os.org");
        let class = builder::class_id(&vendor, "samr21-xpro");
        for profile in [Profile::Draft37, Profile::Riot09] {
            let m = ManifestBuilder::new(profile, 1_700_000_000, vendor, class)
                .image(Image::from_bytes(
                    "coap://[::1]/fw/slot0.bin",
                    b"slot zero",
                    Some(0x1000),
                ))
                .image(Image::from_bytes(
                    "coap://[::1]/fw/slot1.bin",
                    b"slot one!",
                    Some(0x20000),
                ))
                .build()
                .unwrap();
            let env = Envelope::sign(profile, &m, &key).unwrap();
            let bytes = env.encode();
            let back = Envelope::decode(&bytes).unwrap();
            assert_eq!(back.profile(), profile);
            assert_eq!(back.manifest(), &m);
            back.verify(&key.verifying_key()).unwrap();
            assert_eq!(back.encode(), bytes);
        }
    }
}

#[test]
fn keys_round_trip_through_pem() {
    for alg in [Algorithm::Ed25519, Algorithm::Es256] {
        let key = SigningKey::generate(alg);
        let pem = key.to_pkcs8_pem().unwrap();
        let back = SigningKey::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(back.verifying_key(), key.verifying_key());
        if alg == Algorithm::Ed25519 {
            // PKCS#8 v1 (RFC 5208: version 0, no public key inside), 48 bytes of DER: the form
            // OpenSSL 3.0, pyca/cryptography and RIOT's suit-tool read. v2 starts `MFECAQEw`.
            let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
            assert!(body.starts_with("MC4CAQAwBQYDK2VwBCIEI") && body.len() == 64, "{pem}");
        }
        let pubpem = key.verifying_key().to_public_key_pem().unwrap();
        assert_eq!(VerifyingKey::from_public_key_pem(&pubpem).unwrap(), key.verifying_key());
        assert_eq!(VerifyingKey::from_any_pem(&pem).unwrap(), key.verifying_key());
    }
    // v2 (RFC 5958, with the public key) is still read: what earlier suitcase versions wrote.
    let v2 = "-----BEGIN PRIVATE KEY-----\nMFECAQEwBQYDK2VwBCIEIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f\ngSEAA6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=\n-----END PRIVATE KEY-----\n";
    let key = SigningKey::from_pkcs8_pem(v2).unwrap();
    assert_eq!(key.algorithm(), Algorithm::Ed25519);
    assert!(key.to_pkcs8_pem().unwrap().contains("MC4CAQAw"));
}

#[test]
fn riot09_manifest_has_riots_shape() {
    let vendor = builder::vendor_id("riot-os.org");
    assert_eq!(uuid_str(&vendor), "547d0d74-6d3a-5a92-9662-4881afd9407b");
    let class = builder::class_id(&vendor, "samr21-xpro");
    assert_eq!(uuid_str(&class), "8818989e-a257-5994-ac9a-554b77898083");
    let m = ManifestBuilder::new(Profile::Riot09, 1, vendor, class)
        .image(Image::from_bytes("coap://h/slot0.1.bin", b"a", Some(0x1000)))
        .build()
        .unwrap();
    let install = match m.install {
        Some(Severable::Present(s)) => s,
        other => panic!("{other:?}"),
    };
    // override uri, fetch, image-match
    assert!(matches!(install.0[0].arg, CommandArg::Params(_)));
    assert_eq!(install.0.iter().map(|c| c.code).collect::<Vec<_>>(), vec![20, 21, 3]);
}

fn uuid_str(b: &[u8; 16]) -> String {
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[test]
fn libcsuit_esp256_signatures_verify() {
    let key = example_key();
    for (name, seq) in [
        ("exp0", 0),
        ("exp1", 1),
        ("exp2A", 2),
        ("exp2B", 2),
        ("exp3", 3),
        ("exp4", 4),
        ("exp5", 5),
    ] {
        let bytes = read(&format!("libcsuit/suit_manifest_{name}.suit"));
        let env = Envelope::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(env.manifest().sequence_number, seq);
        env.verify(&key).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(env.encode(), bytes, "{name}");
        // The protected header says -9 (ESP256): h'a10128'.
        assert!(
            env.authentication_blocks()[0]
                .windows(3)
                .any(|w| w == [0xa1, 0x01, 0x28]),
            "{name} is ESP256"
        );
    }
    // Same manifests as the draft's examples.
    let draft = Envelope::decode(&read("ietf/example0.signed.cbor")).unwrap();
    let lib = Envelope::decode(&read("libcsuit/suit_manifest_exp0.suit")).unwrap();
    assert_eq!(draft.manifest_bytes(), lib.manifest_bytes());
}

#[test]
fn libcsuit_mac0_examples_verify_with_their_hmac_key() {
    // libcsuit's examples/inc/trust_anchor_hmac256_cose_key_secret.h: 32 × 'a'.
    let key = suitcase_suit::MacKey::new(&[b'a'; 32]);
    for name in ["expAW", "expAF"] {
        let bytes = read(&format!("libcsuit/suit_manifest_{name}.suit"));
        let env = Envelope::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        env.verify_mac(&key).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(env.encode(), bytes);
        assert!(matches!(
            env.verify_mac(&suitcase_suit::MacKey::new(&[b'b'; 32])),
            Err(Error::BadSignature(_))
        ));
        assert!(
            matches!(env.verify(&example_key()), Err(Error::MacNotSignature)),
            "a MAC is not a signature"
        );
        for at in 0..bytes.len() {
            let mut t = bytes.clone();
            t[at] ^= 0x01;
            if let Ok(e) = Envelope::decode(&t) {
                assert!(e.verify_mac(&key).is_err(), "{name}: flipped byte {at} still verifies");
            }
        }
    }
}

/// libcsuit's update-management Example U2: an envelope-level extension (key 14,
/// suit-coswid, severed: the manifest holds its digest) next to the wrapper and manifest,
/// signed ES256 with the draft's key (libcsuit's `testfiles/key/trust_anchor_secp256r1_pub.pem`).
#[test]
fn libcsuit_expu2_with_a_severed_coswid_verifies() {
    let key = example_key();
    let bytes = read("libcsuit/suit_manifest_expU2.suit");
    let env = Envelope::decode(&bytes).unwrap_or_else(|e| panic!("expU2: {e}"));
    assert_eq!(env.manifest().sequence_number, 0);
    env.verify(&key).unwrap_or_else(|e| panic!("expU2: {e}"));
    assert_eq!(env.encode(), bytes, "re-encoded byte for byte");
    assert_eq!(
        env.extensions().iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        [14],
        "suit-coswid is kept"
    );
    // The manifest's image digest is the one of libcsuit's raw_image.bin.
    let image = read("libcsuit/raw_image.bin");
    let params = env.manifest().component_parameters();
    match params[0].1.get(3) {
        Some(ParamValue::Digest(d)) => assert_eq!(
            d.bytes,
            suitcase_suit::SuitDigest::sha256(Profile::Draft37, &image).bytes
        ),
        other => panic!("{other:?}"),
    }
    // A changed coswid no longer matches the digest the manifest signs.
    let (k, v) = env.extensions()[0].clone();
    let pos = bytes.windows(v.len()).position(|w| w == &v[..]).unwrap();
    let mut t = bytes.clone();
    t[pos + v.len() - 1] ^= 1;
    let err = Envelope::decode(&t).unwrap().verify(&key).unwrap_err();
    assert!(matches!(err, Error::SeveredDigestMismatch(14)), "{k}: {err}");
    // Every single byte flipped: never verifies, never panics.
    for at in 0..bytes.len() {
        assert_tamper_fails(&bytes, at, &key);
    }
}

#[test]
fn envelope_extensions_are_kept_verbatim_in_canonical_order() {
    // {2: auth, 3: manifest, 1: h'01', 99: [1, 2], -1: "x", "#p": h'00'} of a built manifest,
    // written in canonical order: 1, 2, 3, 99, -1, "#p".
    let key = SigningKey::generate(Algorithm::Ed25519);
    let m = ManifestBuilder::new(Profile::Draft37, 9, [1; 16], [2; 16])
        .image(Image::from_bytes("coap://h/f", b"x", None))
        .build()
        .unwrap();
    let signed = Envelope::sign(Profile::Draft37, &m, &key).unwrap().encode();
    // Re-assemble the map with extra members (signed is d8 6b a2 ...).
    assert_eq!(&signed[..3], &[0xd8, 0x6b, 0xa2]);
    let mut bytes = vec![0xd8, 0x6b, 0xa6, 0x01, 0x41, 0x01];
    bytes.extend_from_slice(&signed[3..]);
    bytes.extend_from_slice(&[
        0x18, 0x63, 0x82, 0x01, 0x02, 0x20, 0x61, b'x', 0x62, b'#', b'p', 0x41, 0x00,
    ]);
    let env = Envelope::decode(&bytes).unwrap();
    env.verify(&key.verifying_key()).unwrap();
    assert_eq!(env.encode(), bytes);
    assert_eq!(
        env.extensions().iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        [1, 99, -1]
    );
    // A duplicate extension key is refused.
    let mut dup = bytes.clone();
    dup[2] = 0xa7;
    dup.extend_from_slice(&[0x01, 0x41, 0x02]);
    assert!(
        matches!(Envelope::decode(&dup), Err(Error::Duplicate { .. })),
        "duplicate"
    );
}
