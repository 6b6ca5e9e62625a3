//! Property: for generated manifests, `decode(encode(m)) == m` and the bytes re-encode
//! identically, in both profiles; plus keys written by openssl.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use suitcase_suit::manifest::{
    CommandArg, CommandSequence, Common, ComponentId, ComponentIndex, Manifest, ParamValue, Parameters, RawValue,
    Severable, SuitDigest,
};
use suitcase_suit::text::{Text, TextEntry};
use suitcase_suit::{Envelope, Profile, SigningKey, VerifyingKey};

fn digest() -> impl Strategy<Value = SuitDigest> {
    (prop::collection::vec(any::<u8>(), 32)).prop_map(|bytes| SuitDigest {
        algorithm: -16,
        bytes,
        extensions: vec![],
    })
}

fn params() -> impl Strategy<Value = Parameters> {
    let entry = prop_oneof![
        (
            Just(1i64),
            prop::collection::vec(any::<u8>(), 16).prop_map(ParamValue::Bytes)
        ),
        (
            Just(2i64),
            prop::collection::vec(any::<u8>(), 16).prop_map(ParamValue::Bytes)
        ),
        (Just(3i64), digest().prop_map(ParamValue::Digest)),
        (Just(5i64), any::<u64>().prop_map(ParamValue::Uint)),
        (Just(12i64), any::<bool>().prop_map(ParamValue::Bool)),
        (Just(14i64), any::<u64>().prop_map(ParamValue::Uint)),
        (Just(21i64), "[a-z:/.0-9]{0,40}".prop_map(ParamValue::Text)),
        (Just(24i64), Just(ParamValue::Raw(RawValue(vec![0x82, 0x01, 0x02])))),
        ((-300i64..-1), any::<u32>().prop_map(|v| ParamValue::Uint(u64::from(v)))),
    ];
    prop::collection::vec(entry, 0..6).prop_map(|entries| {
        let mut p = Parameters::default();
        for (k, v) in entries {
            p.set(k, v);
        }
        p
    })
}

fn sequence(profile: Profile) -> impl Strategy<Value = CommandSequence> {
    let policy_codes: &'static [i64] = match profile {
        Profile::Draft37 => &[1, 2, 3, 5, 6, 14, 18, 21, 22, 23, 24, 31],
        _ => &[1, 2, 3, 5, 21, 22, 23],
    };
    let run_code = if profile == Profile::Draft37 { 32 } else { 30 };
    let leaf = prop_oneof![
        (prop::sample::select(policy_codes), 0u64..16).prop_map(|(c, p)| (c, CommandArg::Policy(p))),
        any::<u8>().prop_map(|i| (12, CommandArg::Index(ComponentIndex::One(u64::from(i))))),
        Just((12, CommandArg::Index(ComponentIndex::All))),
        prop::collection::vec(0u64..5, 0..3).prop_map(|v| (12, CommandArg::Index(ComponentIndex::Many(v)))),
        params().prop_map(|p| (20, CommandArg::Params(p))),
        (-100i64..-1).prop_map(|c| (c, CommandArg::Raw(RawValue(vec![0x01])))),
    ];
    let cmds = prop::collection::vec(leaf, 0..6).prop_map(to_seq);
    cmds.prop_recursive(2, 24, 4, move |inner| {
        let nested = prop_oneof![
            (prop::collection::vec(inner.clone(), 2..4), any::<bool>()).prop_map(|(alternatives, trailing_nil)| (
                15,
                CommandArg::TryEach {
                    alternatives,
                    trailing_nil
                }
            )),
            inner.prop_map(move |s| (run_code, CommandArg::Sequence(s))),
        ];
        prop::collection::vec(nested, 1..3).prop_map(to_seq)
    })
}

fn to_seq(v: Vec<(i64, CommandArg)>) -> CommandSequence {
    let mut s = CommandSequence::default();
    for (c, a) in v {
        s.push(c, a);
    }
    s
}

fn text() -> impl Strategy<Value = Text> {
    (
        "[a-z]{2}-[A-Z]{2}",
        "[ -~]{0,20}",
        prop::collection::vec(any::<u8>(), 1..3),
    )
        .prop_map(|(lang, desc, id)| {
            Text(vec![(
                lang,
                vec![
                    TextEntry::Text(1, desc.clone()),
                    TextEntry::Component(ComponentId(vec![id]), vec![(1, "vendor".into()), (3, desc)]),
                ],
            )])
        })
}

fn manifest(profile: Profile) -> impl Strategy<Value = Manifest> {
    let components = prop::collection::vec(
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..4), 0..3),
        1..4,
    );
    let draft = profile == Profile::Draft37;
    (
        any::<u64>(),
        components,
        prop::option::of(sequence(profile)),
        prop::option::of(sequence(profile)),
        prop::option::of(sequence(profile)),
        prop::option::of(prop_oneof![
            sequence(profile).prop_map(Severable::Present),
            digest().prop_map(Severable::Severed)
        ]),
        prop::option::of(prop_oneof![
            text().prop_map(Severable::Present),
            digest().prop_map(Severable::Severed)
        ]),
        prop::option::of("https://[a-z]{1,10}\\.example/[a-z]{0,8}"),
    )
        .prop_map(
            move |(seq, comps, shared, validate, invoke, install, text, reference_uri)| Manifest {
                version: 1,
                sequence_number: seq,
                common: Common {
                    components: comps.into_iter().map(ComponentId).collect(),
                    shared_sequence: shared,
                    other: vec![],
                },
                reference_uri: if draft { reference_uri } else { None },
                validate,
                load: None,
                invoke,
                payload_fetch: None,
                install,
                text: if draft { text } else { None },
                other: vec![],
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn draft37_manifests_round_trip(m in manifest(Profile::Draft37)) {
        let bytes = m.encode(Profile::Draft37);
        let back = Manifest::decode(Profile::Draft37, &bytes).unwrap();
        prop_assert_eq!(&back, &m);
        prop_assert_eq!(back.encode(Profile::Draft37), bytes);
    }

    #[test]
    fn riot09_manifests_round_trip(m in manifest(Profile::Riot09)) {
        let bytes = m.encode(Profile::Riot09);
        let back = Manifest::decode(Profile::Riot09, &bytes).unwrap();
        prop_assert_eq!(&back, &m);
        prop_assert_eq!(back.encode(Profile::Riot09), bytes);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::decode(&bytes);
        let _ = Manifest::decode(Profile::Draft37, &bytes);
        let _ = Manifest::decode(Profile::Riot09, &bytes);
        let _ = suitcase_suit::diag::diag(&bytes);
    }
}

#[test]
fn keys_made_by_openssl_sign_and_verify() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/keys");
    for (private, public) in [
        ("ed25519.pem", "ed25519.pub.pem"),
        ("p256.pem", "p256.pub.pem"),
        ("p256.sec1.pem", "p256.pub.pem"),
    ] {
        let key = SigningKey::from_pkcs8_pem(&std::fs::read_to_string(dir.join(private)).unwrap()).unwrap();
        let pubkey = VerifyingKey::from_public_key_pem(&std::fs::read_to_string(dir.join(public)).unwrap()).unwrap();
        assert_eq!(key.verifying_key(), pubkey, "{private}");
        let m = suitcase_suit::ManifestBuilder::new(Profile::Draft37, 3, [1; 16], [2; 16])
            .image(suitcase_suit::Image::from_bytes("coap://h/f", b"x", None))
            .build()
            .unwrap();
        let env = Envelope::sign(Profile::Draft37, &m, &key).unwrap();
        Envelope::decode(&env.encode()).unwrap().verify(&pubkey).unwrap();
    }
}

#[test]
fn example2_text_decodes_typed() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/ietf");
    let env = Envelope::decode(&std::fs::read(dir.join("example2.signed.cbor")).unwrap()).unwrap();
    let (_, text) = env.severed_members().iter().find(|(k, _)| *k == 23).unwrap();
    let t = Text::from_cbor(text).unwrap();
    assert_eq!(t.to_cbor(), *text);
    assert_eq!(t.0[0].0, "en-US");
    assert!(t.0[0]
        .1
        .iter()
        .any(|e| matches!(e, TextEntry::Component(_, f) if f.iter().any(|(k, v)| *k == 3 && v == "arm.com"))));
}

/// Found by the `envelope` fuzz target: unknown manifest keys out of canonical order decoded
/// in wire order while `encode` writes them sorted, so `decode(encode(decode(x)))` differed.
#[test]
fn unknown_keys_are_kept_in_canonical_order() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/vectors/fuzz/envelope-unknown-keys-out-of-order.cbor");
    let bytes = std::fs::read(path).unwrap();
    for p in [Profile::Draft37, Profile::Riot09] {
        if let Ok(m) = Manifest::decode(p, &bytes) {
            let again = Manifest::decode(p, &m.encode(p)).unwrap();
            assert_eq!(again, m);
        }
    }
    assert!(
        Manifest::decode(Profile::Draft37, &bytes).is_ok(),
        "the vector is a draft-37 manifest"
    );
}
