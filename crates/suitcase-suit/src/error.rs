//! Errors of the SUIT codec.

use alloc::string::String;

/// Everything that can go wrong while decoding, building, signing or verifying a SUIT envelope.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not well-formed CBOR, or not of the shape SUIT requires at this place.
    #[error("malformed SUIT CBOR at byte {offset}: {what}")]
    Malformed {
        /// Byte offset (inside the innermost bstr being decoded) where the problem was found.
        offset: usize,
        /// What was expected.
        what: String,
    },
    /// A map key that the selected profile does not define.
    #[error("unknown key {key} in {structure}")]
    UnknownKey {
        /// The structure whose map holds the key.
        structure: &'static str,
        /// The key as it appeared.
        key: String,
    },
    /// A required member is missing.
    #[error("missing {0}")]
    Missing(&'static str),
    /// A member appears twice.
    #[error("duplicate key {key} in {structure}")]
    Duplicate {
        /// The structure holding the duplicate.
        structure: &'static str,
        /// The key.
        key: String,
    },
    /// A digest or signature algorithm this crate does not implement.
    #[error("unsupported algorithm {0}")]
    UnsupportedAlgorithm(i64),
    /// The digest in the authentication wrapper does not match the manifest.
    #[error("manifest digest mismatch: the authentication wrapper does not cover this manifest")]
    ManifestDigestMismatch,
    /// A severed member does not match the digest the manifest holds for it.
    #[error("severed member {0} does not match its digest in the manifest")]
    SeveredDigestMismatch(i64),
    /// No authentication block verified with the given key.
    #[error("signature verification failed: {0}")]
    BadSignature(String),
    /// Every authentication block is a COSE_Mac0/COSE_Mac (a shared-key MAC) and a
    /// signature key was given: verify with the shared key instead.
    #[error("the envelope is authenticated with a MAC (COSE_Mac0, shared HMAC key), not a signature")]
    MacNotSignature,
    /// The envelope has no COSE authentication block.
    #[error("the envelope is not signed")]
    Unsigned,
    /// A COSE structure could not be parsed or built.
    #[error("COSE: {0}")]
    Cose(String),
    /// A key could not be parsed or serialised.
    #[error("key: {0}")]
    Key(String),
    /// The builder was given inconsistent input.
    #[error("builder: {0}")]
    Build(String),
    /// Nesting deeper than the decoder allows (protects the stack).
    #[error("nesting deeper than {0} levels")]
    TooDeep(usize),
}

impl Error {
    pub(crate) fn malformed(offset: usize, what: impl Into<String>) -> Self {
        Error::Malformed {
            offset,
            what: what.into(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;
