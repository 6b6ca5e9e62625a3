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
    let dir = tempfile::tempdir().unwrap();
    let python = Command::new("python3")
        .args(["-c", "import cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !python {
        println!("skipping the pyca/cryptography check: python3 cannot import cryptography");
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
