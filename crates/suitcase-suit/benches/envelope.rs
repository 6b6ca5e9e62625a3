//! Decode + verify (and sign) of typical envelopes.
//! Run: `cargo bench -p suitcase-suit --bench envelope`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use suitcase_suit::{builder, Algorithm, Envelope, Image, ManifestBuilder, Profile, SigningKey, VerifyingKey};

fn vectors(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/vectors")
        .join(name)
}

fn bench(c: &mut Criterion) {
    let ex1 = std::fs::read(vectors("ietf/example1.signed.cbor")).unwrap();
    let ietf_key =
        VerifyingKey::from_public_key_pem(&std::fs::read_to_string(vectors("ietf/example-key.pub.pem")).unwrap())
            .unwrap();
    c.bench_function("decode+verify IETF example 1 (ES256, 272 B)", |b| {
        b.iter(|| Envelope::decode(black_box(&ex1)).unwrap().verify(&ietf_key).unwrap())
    });
    c.bench_function("decode only IETF example 1", |b| {
        b.iter(|| Envelope::decode(black_box(&ex1)).unwrap())
    });

    let riot = std::fs::read(vectors("riot09/riot.suit.1700000000.bin")).unwrap();
    let riot_key =
        VerifyingKey::from_public_key_pem(&std::fs::read_to_string(vectors("keys/ed25519.pub.pem")).unwrap()).unwrap();
    c.bench_function("decode+verify RIOT draft-09 (Ed25519, 482 B)", |b| {
        b.iter(|| Envelope::decode(black_box(&riot)).unwrap().verify(&riot_key).unwrap())
    });

    let vendor = builder::vendor_id("suitcase.local");
    let class = builder::class_id(&vendor, "fw/app/board");
    let m = ManifestBuilder::new(Profile::Draft37, 1_800_000_000, vendor, class)
        .image(Image {
            uri: "coap://[2001:db8::1]:5683/fw/app/board/v/7/app.bin".into(),
            sha256: [7; 32],
            size: 1 << 20,
            slot: None,
        })
        .build()
        .unwrap();
    for alg in [Algorithm::Ed25519, Algorithm::Es256] {
        let key = SigningKey::generate(alg);
        c.bench_function(&format!("build+sign server manifest ({alg:?})"), |b| {
            b.iter(|| Envelope::sign(Profile::Draft37, black_box(&m), &key).unwrap().encode())
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
