//! Build a draft-37 SUIT manifest for a firmware file, sign it (COSE_Sign1, Ed25519), encode
//! the envelope, decode it again as an untrusted envelope and verify it: the library's whole
//! path, with no I/O but reading the file and writing the envelope.
//!
//! ```sh
//! cargo run -p suitcase-suit --example sign_and_verify -- firmware.bin manifest.suit
//! ```

#![allow(clippy::print_stdout)]

use suitcase_suit::{builder, diag, Algorithm, Envelope, Image, ManifestBuilder, Profile, SigningKey};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let firmware = match args.next() {
        Some(path) => std::fs::read(path)?,
        None => b"an example firmware image".to_vec(),
    };
    let key = SigningKey::generate(Algorithm::Ed25519);
    let vendor = builder::vendor_id("example.org");
    let class = builder::class_id(&vendor, "board-x");
    let manifest = ManifestBuilder::new(Profile::Draft37, 1, vendor, class)
        .image(Image::from_bytes(
            "coap://[2001:db8::1]/fw/app/v/1/app.bin",
            &firmware,
            None,
        ))
        .build()?;
    let bytes = Envelope::sign(Profile::Draft37, &manifest, &key)?.encode();
    // What a device does: decode (untrusted), then verify with the key it trusts.
    let verified = Envelope::decode(&bytes)?.verify(&key.verifying_key())?;
    println!(
        "{} bytes, sequence number {}, signature verified",
        bytes.len(),
        verified.manifest().sequence_number
    );
    println!("{}", diag::diag(&bytes)?);
    if let Some(out) = args.next() {
        std::fs::write(out, &bytes)?;
    }
    Ok(())
}
