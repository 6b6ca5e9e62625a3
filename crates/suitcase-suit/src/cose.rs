//! Keys and COSE_Sign1 signing/verification (Ed25519 and P-256), PEM in and out.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use coset::{iana, CborSerializable, CoseSign1, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable};
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use p256::ecdsa::signature::{Signer as _, Verifier as _};

use crate::error::{Error, Result};

/// Signature algorithms this crate signs and verifies with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Algorithm {
    /// Ed25519 (COSE -8 EdDSA, or the fully specified -19 on input). What RIOT verifies.
    Ed25519,
    /// ECDSA P-256 with SHA-256 (COSE -7 ES256, or -9 ESP256 on input). The IETF examples' key.
    Es256,
}

impl Algorithm {
    fn cose_id(self) -> iana::Algorithm {
        match self {
            Algorithm::Ed25519 => iana::Algorithm::EdDSA,
            Algorithm::Es256 => iana::Algorithm::ES256,
        }
    }

    fn from_cose(id: i64) -> Result<Self> {
        match id {
            -8 | -19 => Ok(Algorithm::Ed25519),
            -7 | -9 => Ok(Algorithm::Es256),
            other => Err(Error::UnsupportedAlgorithm(other)),
        }
    }
}

impl core::str::FromStr for Algorithm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "ed25519" | "eddsa" => Ok(Algorithm::Ed25519),
            "es256" | "esp256" | "p256" | "p-256" => Ok(Algorithm::Es256),
            other => Err(Error::Key(format!("unknown algorithm {other:?} (ed25519 or es256)"))),
        }
    }
}

/// A private signing key.
#[derive(Clone)]
pub enum SigningKey {
    /// Ed25519.
    Ed25519(ed25519_dalek::SigningKey),
    /// P-256.
    Es256(p256::ecdsa::SigningKey),
}

impl core::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SigningKey({:?})", self.algorithm())
    }
}

/// A public verification key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyingKey {
    /// Ed25519.
    Ed25519(ed25519_dalek::VerifyingKey),
    /// P-256.
    Es256(p256::ecdsa::VerifyingKey),
}

fn key_err(e: impl core::fmt::Display) -> Error {
    Error::Key(e.to_string())
}

impl SigningKey {
    /// A fresh random key from the operating system's RNG.
    #[cfg(feature = "std")]
    pub fn generate(alg: Algorithm) -> Self {
        Self::generate_with(alg, &mut rand_core::OsRng)
    }

    /// A fresh random key from `rng` (for targets without an OS RNG).
    pub fn generate_with(alg: Algorithm, rng: &mut impl rand_core::CryptoRngCore) -> Self {
        let mut rng = rng;
        match alg {
            Algorithm::Ed25519 => SigningKey::Ed25519(ed25519_dalek::SigningKey::generate(&mut rng)),
            Algorithm::Es256 => SigningKey::Es256(p256::ecdsa::SigningKey::random(&mut rng)),
        }
    }

    /// The algorithm of this key.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            SigningKey::Ed25519(_) => Algorithm::Ed25519,
            SigningKey::Es256(_) => Algorithm::Es256,
        }
    }

    /// Parse an unencrypted PKCS#8 PEM (or a SEC1 `EC PRIVATE KEY` PEM for P-256) (`openssl genpkey -algorithm ed25519` or
    /// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self> {
        if let Ok(k) = ed25519_dalek::SigningKey::from_pkcs8_pem(pem) {
            return Ok(SigningKey::Ed25519(k));
        }
        if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_pem(pem) {
            return Ok(SigningKey::Es256(k));
        }
        // `openssl ecparam -genkey` writes SEC1 ("EC PRIVATE KEY").
        p256::SecretKey::from_sec1_pem(pem)
            .map(|k| SigningKey::Es256(k.into()))
            .map_err(|e| Error::Key(format!("not an Ed25519 or P-256 private key (PKCS#8 or SEC1 PEM): {e}")))
    }

    /// Serialise as PKCS#8 PEM. Ed25519 keys are written in the v1 form (RFC 5208 /
    /// RFC 8410 §7: version 0, no public key inside), which OpenSSL 3.0, pyca/cryptography
    /// and RIOT's suit-tool read; ed25519-dalek would write v2 (RFC 5958, with the public
    /// key), which they refuse. Both forms are read.
    pub fn to_pkcs8_pem(&self) -> Result<String> {
        let le = Default::default();
        let pem = match self {
            SigningKey::Ed25519(k) => ed25519_dalek::pkcs8::KeypairBytes {
                secret_key: k.to_bytes(),
                public_key: None,
            }
            .to_pkcs8_pem(le)
            .map_err(key_err)?,
            SigningKey::Es256(k) => k.to_pkcs8_pem(le).map_err(key_err)?,
        };
        Ok(pem.to_string())
    }

    /// The matching public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        match self {
            SigningKey::Ed25519(k) => VerifyingKey::Ed25519(k.verifying_key()),
            SigningKey::Es256(k) => VerifyingKey::Es256(*k.verifying_key()),
        }
    }

    fn sign_raw(&self, tbs: &[u8]) -> Vec<u8> {
        match self {
            SigningKey::Ed25519(k) => {
                let sig: ed25519_dalek::Signature = k.sign(tbs);
                sig.to_bytes().to_vec()
            }
            SigningKey::Es256(k) => {
                let sig: p256::ecdsa::Signature = k.sign(tbs);
                sig.to_bytes().to_vec()
            }
        }
    }

    /// A tagged COSE_Sign1 (tag 18) over `payload`, which is left out (detached) or kept
    /// (attached, as draft-09 / RIOT wants it).
    pub fn sign1(&self, payload: &[u8], attached: bool) -> Result<Vec<u8>> {
        let protected = HeaderBuilder::new().algorithm(self.algorithm().cose_id()).build();
        let builder = CoseSign1Builder::new().protected(protected);
        let sign1 = if attached {
            builder
                .payload(payload.to_vec())
                .create_signature(b"", |tbs| self.sign_raw(tbs))
                .build()
        } else {
            builder
                .create_detached_signature(payload, b"", |tbs| self.sign_raw(tbs))
                .build()
        };
        sign1.to_tagged_vec().map_err(|e| Error::Cose(format!("{e:?}")))
    }
}

impl VerifyingKey {
    /// Parse an SPKI PEM (`openssl pkey -pubout`).
    pub fn from_public_key_pem(pem: &str) -> Result<Self> {
        if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
            return Ok(VerifyingKey::Ed25519(k));
        }
        p256::ecdsa::VerifyingKey::from_public_key_pem(pem)
            .map(VerifyingKey::Es256)
            .map_err(|e| Error::Key(format!("not an Ed25519 or P-256 public key: {e}")))
    }

    /// A public key from PEM that may also be a private key (its public half is used).
    pub fn from_any_pem(pem: &str) -> Result<Self> {
        Self::from_public_key_pem(pem).or_else(|_| SigningKey::from_pkcs8_pem(pem).map(|k| k.verifying_key()))
    }

    /// Serialise as SPKI PEM.
    pub fn to_public_key_pem(&self) -> Result<String> {
        let le = Default::default();
        match self {
            VerifyingKey::Ed25519(k) => k.to_public_key_pem(le).map_err(key_err),
            VerifyingKey::Es256(k) => k.to_public_key_pem(le).map_err(key_err),
        }
    }

    /// The algorithm of this key.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            VerifyingKey::Ed25519(_) => Algorithm::Ed25519,
            VerifyingKey::Es256(_) => Algorithm::Es256,
        }
    }

    fn verify_raw(&self, sig: &[u8], tbs: &[u8]) -> Result<()> {
        match self {
            VerifyingKey::Ed25519(k) => {
                let sig = ed25519_dalek::Signature::from_slice(sig)
                    .map_err(|e| Error::BadSignature(format!("malformed Ed25519 signature: {e}")))?;
                k.verify_strict(tbs, &sig)
                    .map_err(|_| Error::BadSignature("Ed25519 signature does not verify".into()))
            }
            VerifyingKey::Es256(k) => {
                let sig = p256::ecdsa::Signature::from_slice(sig)
                    .map_err(|e| Error::BadSignature(format!("malformed ES256 signature: {e}")))?;
                k.verify(tbs, &sig)
                    .map_err(|_| Error::BadSignature("ES256 signature does not verify".into()))
            }
        }
    }

    /// Verify a COSE_Sign1 (tagged or not) over `payload`. A detached Sign1 is checked over
    /// `payload`; an attached one must carry exactly `payload`.
    pub fn verify_sign1(&self, cose: &[u8], payload: &[u8]) -> Result<()> {
        check_sign1_shape(cose)?;
        let sign1 = CoseSign1::from_tagged_slice(cose)
            .or_else(|_| CoseSign1::from_slice(cose))
            .map_err(|e| Error::Cose(format!("not a COSE_Sign1: {e:?}")))?;
        let alg = match &sign1.protected.header.alg {
            Some(coset::RegisteredLabelWithPrivate::Assigned(a)) => *a as i64,
            Some(coset::RegisteredLabelWithPrivate::PrivateUse(a)) => *a,
            _ => {
                return Err(Error::Cose(
                    "COSE_Sign1 has no algorithm in its protected header".into(),
                ))
            }
        };
        let alg = Algorithm::from_cose(alg)?;
        if alg != self.algorithm() {
            return Err(Error::BadSignature(format!(
                "signed with {alg:?}, key is {:?}",
                self.algorithm()
            )));
        }
        // coset panics on verify_detached_signature when a payload is present: branch first.
        match &sign1.payload {
            None => sign1.verify_detached_signature(payload, b"", |sig, tbs| self.verify_raw(sig, tbs)),
            Some(p) => {
                if p.as_slice() != payload {
                    return Err(Error::ManifestDigestMismatch);
                }
                sign1.verify_signature(b"", |sig, tbs| self.verify_raw(sig, tbs))
            }
        }
    }
}

/// The attached payload of a COSE_Sign1, if any (draft-09 carries the digest there).
pub(crate) fn sign1_payload(cose: &[u8]) -> Result<Option<Vec<u8>>> {
    let sign1 = CoseSign1::from_tagged_slice(cose)
        .or_else(|_| CoseSign1::from_slice(cose))
        .map_err(|e| Error::Cose(format!("not a COSE_Sign1: {e:?}")))?;
    Ok(sign1.payload)
}

/// RFC 9052 §4.2 to the letter: `18([bstr, map, bstr / nil, bstr])`, nothing after it.
/// (coset alone also takes `undefined` for the payload; a signed object has one valid form.)
fn check_sign1_shape(cose: &[u8]) -> Result<()> {
    check_cose_shape(cose, 18, "COSE_Sign1")
}

/// `tag([bstr, map, bstr / nil, bstr])` (COSE_Sign1: 18, COSE_Mac0: 17), nothing after it.
fn check_cose_shape(cose: &[u8], tag: u64, name: &str) -> Result<()> {
    use minicbor::data::Type;
    let bad = |what: &str| Error::Cose(format!("malformed {name}: {what}"));
    let mut d = crate::cbor::Dec::new(cose);
    if d.datatype()? == Type::Tag && d.tag("COSE tag")? != tag {
        return Err(bad("unexpected tag"));
    }
    if d.array(name)? != 4 {
        return Err(bad("not 4 members"));
    }
    d.bytes("protected header")?;
    if !matches!(d.datatype()?, Type::Map) {
        return Err(bad("unprotected header is not a map"));
    }
    d.raw("unprotected header")?;
    match d.datatype()? {
        Type::Null => d.null("payload")?,
        Type::Bytes => {
            d.bytes("payload")?;
        }
        _ => return Err(bad("payload is neither a bstr nor nil")),
    }
    d.bytes("signature or tag")?;
    d.expect_end(name)
}

/// A shared secret for COSE_Mac0 with HMAC 256/256 (COSE algorithm 5), the MTI profile
/// `suit-sha256-hmac-a128kw-a128ctr`.
#[derive(Clone)]
pub struct MacKey(Vec<u8>);

impl core::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("MacKey(…)")
    }
}

impl MacKey {
    /// A key from its bytes.
    pub fn new(secret: &[u8]) -> Self {
        MacKey(secret.to_vec())
    }

    /// Verify a tagged COSE_Mac0 (tag 17) over `payload` (detached, or attached and equal).
    pub fn verify_mac0(&self, cose: &[u8], payload: &[u8]) -> Result<()> {
        use hmac::Mac as _;
        check_cose_shape(cose, 17, "COSE_Mac0")?;
        let mut mac0 = coset::CoseMac0::from_tagged_slice(cose)
            .or_else(|_| coset::CoseMac0::from_slice(cose))
            .map_err(|e| Error::Cose(format!("not a COSE_Mac0: {e:?}")))?;
        match &mac0.protected.header.alg {
            Some(coset::RegisteredLabelWithPrivate::Assigned(iana::Algorithm::HMAC_256_256)) => {}
            Some(coset::RegisteredLabelWithPrivate::Assigned(a)) => return Err(Error::UnsupportedAlgorithm(*a as i64)),
            Some(coset::RegisteredLabelWithPrivate::PrivateUse(a)) => return Err(Error::UnsupportedAlgorithm(*a)),
            _ => return Err(Error::Cose("COSE_Mac0 has no algorithm in its protected header".into())),
        }
        match &mac0.payload {
            Some(p) if p.as_slice() != payload => return Err(Error::ManifestDigestMismatch),
            Some(_) => {}
            None => mac0.payload = Some(payload.to_vec()),
        }
        mac0.verify_payload_tag(
            b"",
            || Error::Cose("no payload".into()),
            |tag, tbm| {
                let mut m =
                    hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0).map_err(|e| Error::Key(e.to_string()))?;
                m.update(tbm);
                m.verify_slice(tag)
                    .map_err(|_| Error::BadSignature("HMAC 256/256 tag does not verify".into()))
            },
        )
    }
}
