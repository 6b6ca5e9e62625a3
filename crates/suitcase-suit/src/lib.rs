//! SUIT manifests (draft-ietf-suit-manifest-34..37, and RIOT's draft-09 profile): a typed
//! codec on minicbor, COSE_Sign1 signing and verification (Ed25519, P-256) via coset, and a
//! manifest builder.
//!
//! Decoding gives an [`Envelope`], which is untrusted; only [`Envelope::verify`] yields a
//! [`VerifiedEnvelope`]. Nothing here performs I/O.
//!
//! ```
//! use suitcase_suit::{builder, Envelope, Image, ManifestBuilder, Profile, SigningKey, Algorithm};
//! let key = SigningKey::generate(Algorithm::Ed25519);
//! let vendor = builder::vendor_id("example.org");
//! let class = builder::class_id(&vendor, "board-x");
//! let manifest = ManifestBuilder::new(Profile::Draft37, 7, vendor, class)
//!     .image(Image::from_bytes("coap://[::1]/fw/app.bin", b"firmware", None))
//!     .build()?;
//! let bytes = Envelope::sign(Profile::Draft37, &manifest, &key)?.encode();
//! let verified = Envelope::decode(&bytes)?.verify(&key.verifying_key())?;
//! assert_eq!(verified.manifest().sequence_number, 7);
//! # Ok::<(), suitcase_suit::Error>(())
//! ```

#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub mod builder;
pub mod cbor;
pub mod cose;
pub mod diag;
pub mod envelope;
pub mod error;
pub mod manifest;
pub mod profile;
pub mod text;

pub use builder::{Image, ManifestBuilder};
pub use cose::{Algorithm, MacKey, SigningKey, VerifyingKey};
pub use envelope::{Envelope, VerifiedEnvelope};
pub use error::{Error, Result};
pub use manifest::{ComponentView, Manifest, SuitDigest};
pub use profile::Profile;
