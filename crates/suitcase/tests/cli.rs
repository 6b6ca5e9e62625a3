//! The offline manifest tools: keygen, create, sign, verify, inspect.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use support::*;

#[test]
fn keygen_create_sign_verify_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    std::fs::write(p("app.bin"), random_bytes(5000, 4)).unwrap();
    for alg in ["es256", "ed25519"] {
        let key = p(&format!("{alg}.pem"));
        suitcase(&["keygen", "--alg", alg, "--out", &key]);
        let public = p(&format!("{alg}.pub.pem"));
        let unsigned = p(&format!("{alg}.unsigned.suit"));
        let signed = p(&format!("{alg}.suit"));
        suitcase(&[
            "manifest",
            "create",
            "--seq",
            "42",
            "--class",
            "board",
            "--image",
            &format!("coap://[::1]/x/app.bin={}", p("app.bin")),
            "-o",
            &unsigned,
        ]);
        // Unsigned: verification fails with exit status 1.
        let out = Command::new(bin())
            .args(["manifest", "verify", "--key", &public, &unsigned])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("not signed"));
        suitcase(&["manifest", "sign", "--key", &key, &unsigned, "-o", &signed]);
        let ok = suitcase(&["manifest", "verify", "--key", &public, &signed]);
        assert!(ok.starts_with("OK: draft37 manifest, sequence number 42"), "{ok}");
        let json: serde_json::Value =
            serde_json::from_str(&suitcase(&["manifest", "inspect", "--json", "--key", &public, &signed])).unwrap();
        assert_eq!(json["signature"], "verified");
        assert_eq!(json["sequence_number"], 42);
        assert_eq!(json["components"][0]["image-size"], 5000);
        assert_eq!(json["components"][0]["uri"], "coap://[::1]/x/app.bin");
        assert_eq!(
            json["components"][0]["image-digest"]["digest"],
            suitcase_store::Sha256::of(&std::fs::read(p("app.bin")).unwrap()).to_hex()
        );
        // One flipped byte in the manifest: refused.
        let mut bytes = std::fs::read(&signed).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&signed, &bytes).unwrap();
        let out = Command::new(bin())
            .args(["manifest", "verify", "--key", &public, &signed])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
    }
    // A key file that exists is never overwritten.
    let out = Command::new(bin())
        .args(["keygen", "--out", &p("es256.pem")])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Keys from `suitcase keygen` (and the server's own, written by the same code) are read by
/// OpenSSL and pyca/cryptography: Ed25519 in PKCS#8 v1, which both accept (v2, with the public
/// key inside, made OpenSSL 3.0 say `unsupported` and cryptography `extra data`).
#[test]
fn generated_keys_are_read_by_openssl_and_pyca_cryptography() {
    if !require("openssl", "version", "Debian: apt-get install openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let python = Command::new("python3")
        .args(["-c", "import cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !python {
        eprintln!("skipping the pyca/cryptography check: python3 cannot import cryptography");
    }
    for alg in ["ed25519", "es256"] {
        let key = dir.path().join(format!("{alg}.pem"));
        let key = key.to_str().unwrap();
        suitcase(&["keygen", "--alg", alg, "--out", key]);
        let out = Command::new("openssl")
            .args(["pkey", "-in", key, "-noout"])
            .output()
            .expect("openssl is installed by .ci/run");
        assert!(out.status.success(), "openssl refuses the {alg} key: {out:?}");
        let public = dir.path().join(format!("{alg}.pub.pem"));
        let out = Command::new("openssl")
            .args(["pkey", "-pubin", "-in", public.to_str().unwrap(), "-noout"])
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl refuses the {alg} public key: {out:?}");
        if python {
            let script = "import sys\n\
                from cryptography.hazmat.primitives.serialization import load_pem_private_key\n\
                load_pem_private_key(open(sys.argv[1], 'rb').read(), password=None)";
            let out = Command::new("python3").args(["-c", script, key]).output().unwrap();
            assert!(out.status.success(), "cryptography refuses the {alg} key: {out:?}");
        }
    }
}

fn vector(name: &str) -> String {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/vectors")
        .join(name)
        .to_str()
        .unwrap()
        .to_string()
}

/// A two-slot riot09 manifest: `inspect` shows each try-each alternative with its own
/// offset, URI and digest (it used to merge them: slot 0's URI next to slot 1's digest).
#[test]
fn inspect_shows_each_try_each_alternative() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let (a, b) = (random_bytes(1000, 1), random_bytes(1500, 2));
    std::fs::write(p("slot0.bin"), &a).unwrap();
    std::fs::write(p("slot1.bin"), &b).unwrap();
    suitcase(&[
        "manifest",
        "create",
        "--profile",
        "riot09",
        "--seq",
        "7",
        "--class",
        "native64",
        "--image",
        &format!("coap://[::1]/fw/slot0.7.bin={}@0x1000", p("slot0.bin")),
        "--image",
        &format!("coap://[::1]/fw/slot1.7.bin={}@0x20000", p("slot1.bin")),
        "-o",
        &p("m.suit"),
    ]);
    let json: serde_json::Value =
        serde_json::from_str(&suitcase(&["manifest", "inspect", "--json", &p("m.suit")])).unwrap();
    let c = &json["components"][0];
    assert!(c.get("uri").is_none() && c.get("image-digest").is_none(), "merged: {c}");
    let alts = c["alternatives"].as_array().unwrap();
    assert_eq!(alts.len(), 2, "{c}");
    let sha = |d: &[u8]| suitcase_store::Sha256::of(d).to_hex();
    for (alt, (offset, uri, data)) in alts.iter().zip([
        (0x1000, "coap://[::1]/fw/slot0.7.bin", &a),
        (0x20000, "coap://[::1]/fw/slot1.7.bin", &b),
    ]) {
        assert_eq!(alt["component-offset"], offset, "{alt}");
        assert_eq!(alt["uri"], uri, "{alt}");
        assert_eq!(alt["image-digest"]["digest"], sha(data), "{alt}");
        assert_eq!(alt["image-size"], data.len(), "{alt}");
    }
    let text = suitcase(&["manifest", "inspect", &p("m.suit")]);
    let slot1 = text.find("alternative 1").unwrap_or_else(|| panic!("{text}"));
    assert!(
        text[..slot1].contains("slot0.7.bin") && !text[..slot1].contains("slot1.7.bin"),
        "{text}"
    );
    assert!(
        text[slot1..].contains("slot1.7.bin") && text[slot1..].contains(&sha(&b)),
        "{text}"
    );
}

/// `--key` on a MAC-authenticated envelope names `--hmac-key`; `inspect --key` exits 1 when
/// the signature does not verify (it printed "invalid" and exited 0).
#[test]
fn verify_and_inspect_report_bad_authentication_in_the_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let key = vector("ietf/example-key.pub.pem");
    let mac = vector("libcsuit/suit_manifest_expAW.suit");
    let out = Command::new(bin())
        .args(["manifest", "verify", "--key", &key, &mac])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("--hmac-key"), "{out:?}");
    let secret = dir.path().join("hmac.key");
    std::fs::write(&secret, [b'a'; 32]).unwrap();
    let ok = suitcase(&["manifest", "verify", "--hmac-key", secret.to_str().unwrap(), &mac]);
    assert!(ok.starts_with("OK:"), "{ok}");

    let signed = vector("libcsuit/suit_manifest_expU2.suit");
    let ok = suitcase(&["manifest", "verify", "--key", &key, &signed]);
    assert!(ok.starts_with("OK: draft37 manifest, sequence number 0"), "{ok}");
    let json: serde_json::Value =
        serde_json::from_str(&suitcase(&["manifest", "inspect", "--json", "--key", &key, &signed])).unwrap();
    assert_eq!(json["signature"], "verified");
    assert_eq!(json["envelope_extensions"][0]["key"], 14);

    let other = dir.path().join("other.pem");
    suitcase(&["keygen", "--alg", "es256", "--out", other.to_str().unwrap()]);
    let other_pub = dir.path().join("other.pub.pem");
    for args in [
        vec!["manifest", "inspect", "--key", other_pub.to_str().unwrap(), &signed],
        vec![
            "manifest",
            "inspect",
            "--json",
            "--key",
            other_pub.to_str().unwrap(),
            &signed,
        ],
        vec!["manifest", "inspect", "--key", &key, &mac],
    ] {
        let out = Command::new(bin()).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("invalid"), "{out:?}");
    }
}

#[test]
fn riot09_refuses_a_sequence_number_past_32_bits() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    std::fs::write(p("a.bin"), b"a").unwrap();
    let create = |seq: &str| {
        Command::new(bin())
            .args([
                "manifest",
                "create",
                "--profile",
                "riot09",
                "--seq",
                seq,
                "--class",
                "b",
            ])
            .args([
                "--image",
                &format!("coap://[::1]/a.bin={}", p("a.bin")),
                "-o",
                &p(&format!("{seq}.suit")),
            ])
            .output()
            .unwrap()
    };
    assert!(create("4294967295").status.success());
    let out = create("4294967296");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("32-bit"), "{out:?}");
}
