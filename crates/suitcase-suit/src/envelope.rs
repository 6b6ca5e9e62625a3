//! The SUIT envelope: authentication wrapper + manifest + severed members, decoded into an
//! [`Envelope`] that is *not* trusted until [`Envelope::verify`] turns it into a
//! [`VerifiedEnvelope`].

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use minicbor::data::Type;

use crate::cbor::{bstr_item, int_key_bytes, Dec, Enc};
use crate::cose::{sign1_payload, SigningKey, VerifyingKey};
use crate::error::{Error, Result};
use crate::manifest::{Manifest, Severable, SuitDigest};
use crate::profile::{ManifestMember, Profile};

/// A decoded envelope whose signature has not been checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    profile: Profile,
    tagged: bool,
    /// The digest in the authentication wrapper (draft37) or in the COSE payload (riot09).
    auth_digest: Option<SuitDigest>,
    /// COSE blocks of the authentication wrapper, verbatim.
    auth_blocks: Vec<Vec<u8>>,
    /// The manifest bstr's content, exactly as received (the digest covers it).
    manifest_bytes: Vec<u8>,
    manifest: Manifest,
    /// Severed members carried in the envelope: (key, bstr content).
    severed: Vec<(u64, Vec<u8>)>,
    /// Integrated payloads: (text key, bytes).
    integrated: Vec<(String, Vec<u8>)>,
    /// Other integer-keyed members (`$$SUIT_Envelope_Extensions`, severable-member
    /// extensions such as suit-coswid): (key, the value's CBOR item verbatim), in canonical
    /// key order. draft37 only; riot09 refuses them as RIOT does.
    extensions: Vec<(i64, Vec<u8>)>,
}

/// An envelope whose manifest digest and signature checked out against a trusted key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedEnvelope(Envelope);

impl VerifiedEnvelope {
    /// The verified envelope.
    pub fn envelope(&self) -> &Envelope {
        &self.0
    }
    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.0.manifest
    }
}

impl Envelope {
    /// Decode, detecting the profile: tag 107 or a SUIT_Digest first in the authentication
    /// wrapper means the current draft; a wrapper holding only COSE blocks means RIOT's draft-09.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        match Self::decode_with(Profile::Draft37, bytes) {
            Ok(e) => Ok(e),
            Err(first) => {
                let d = Dec::new(bytes);
                if d.datatype().ok() == Some(Type::Tag) {
                    return Err(first);
                }
                Self::decode_with(Profile::Riot09, bytes).map_err(|_| first)
            }
        }
    }

    /// Decode in the given profile.
    pub fn decode_with(profile: Profile, bytes: &[u8]) -> Result<Self> {
        let mut d = Dec::new(bytes);
        let mut tagged = false;
        if d.datatype()? == Type::Tag {
            let tag = d.tag("envelope tag")?;
            if Some(tag) != profile.envelope_tag() {
                return Err(Error::malformed(
                    0,
                    alloc::format!("unexpected tag {tag} on the envelope"),
                ));
            }
            tagged = true;
        }
        let n = d.map("envelope")?;
        let mut auth = None;
        let mut manifest_bytes: Option<&[u8]> = None;
        let mut severed: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut integrated: Vec<(String, Vec<u8>)> = Vec::new();
        let mut extensions: Vec<(i64, Vec<u8>)> = Vec::new();
        let mut seen_int: Vec<i64> = Vec::new();
        for _ in 0..n {
            if d.datatype()? == Type::String && profile == Profile::Draft37 {
                let k = d.text("integrated payload key")?.to_string();
                if integrated.iter().any(|(x, _)| *x == k) {
                    return Err(Error::Duplicate {
                        structure: "envelope",
                        key: k,
                    });
                }
                integrated.push((k, d.bytes("integrated payload")?.to_vec()));
                continue;
            }
            let key = d.int("envelope key")?;
            if seen_int.contains(&key) {
                return Err(Error::Duplicate {
                    structure: "envelope",
                    key: key.to_string(),
                });
            }
            seen_int.push(key);
            match key {
                2 => auth = Some(d.bytes("authentication wrapper")?),
                3 => manifest_bytes = Some(d.bytes("manifest")?),
                k if u64::try_from(k).is_ok_and(|k| profile.severable_envelope_key(k)) => {
                    severed.push((k.unsigned_abs(), d.bytes("severed member")?.to_vec()))
                }
                // draft-37 allows `$$SUIT_Envelope_Extensions` and severable-member
                // extensions (suit-coswid, 14): kept verbatim. RIOT's envelope handler table
                // holds only 2 and 3 and refuses anything else, and so does riot09.
                k if profile == Profile::Draft37 => extensions.push((k, d.raw("envelope extension")?.to_vec())),
                k => {
                    return Err(Error::UnknownKey {
                        structure: "envelope",
                        key: k.to_string(),
                    })
                }
            }
        }
        d.expect_end("envelope")?;
        // Kept in canonical order, the order `encode` writes them in.
        extensions.sort_by_key(|(k, _)| int_key_bytes(*k));
        let auth = auth.ok_or(Error::Missing("authentication wrapper"))?;
        let manifest_bytes = manifest_bytes.ok_or(Error::Missing("manifest"))?;

        // Authentication wrapper.
        let mut a = Dec::new(auth);
        let count = a.array("authentication wrapper")?;
        let mut auth_digest = None;
        let mut auth_blocks = Vec::new();
        for i in 0..count {
            let item = a.bytes("authentication block")?;
            if i == 0 && profile == Profile::Draft37 {
                auth_digest = Some(SuitDigest::from_cbor(item)?);
            } else {
                auth_blocks.push(item.to_vec());
            }
        }
        a.expect_end("authentication wrapper")?;
        if profile == Profile::Draft37 && auth_digest.is_none() {
            return Err(Error::Missing("digest in the authentication wrapper"));
        }
        if profile == Profile::Riot09 {
            if let Some(first) = auth_blocks.first() {
                let payload =
                    sign1_payload(first)?.ok_or(Error::Missing("COSE payload (draft-09 attaches the digest)"))?;
                auth_digest = Some(SuitDigest::from_cbor(&payload)?);
            }
        }

        let manifest = Manifest::decode(profile, manifest_bytes)?;
        Ok(Envelope {
            profile,
            tagged,
            auth_digest,
            auth_blocks,
            manifest_bytes: manifest_bytes.to_vec(),
            manifest,
            severed,
            integrated,
            extensions,
        })
    }

    /// The profile it was decoded in.
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// The (unverified) manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The manifest's encoded bytes as received.
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_bytes
    }

    /// The digest the authentication wrapper claims for the manifest.
    pub fn claimed_digest(&self) -> Option<&SuitDigest> {
        self.auth_digest.as_ref()
    }

    /// The COSE authentication blocks.
    pub fn authentication_blocks(&self) -> &[Vec<u8>] {
        &self.auth_blocks
    }

    /// Severed members carried in the envelope.
    pub fn severed_members(&self) -> &[(u64, Vec<u8>)] {
        &self.severed
    }

    /// Envelope members beyond the wrapper, the manifest, the core severable members and
    /// integrated payloads: (key, the value's CBOR item verbatim), in canonical order. One
    /// whose key the manifest holds a SUIT_Digest for (a severed extension member, such as
    /// suit-coswid) is checked by `verify`; any other is not covered by the signature.
    pub fn extensions(&self) -> &[(i64, Vec<u8>)] {
        &self.extensions
    }

    /// Keys of the extension members no digest in the manifest covers: the signature says
    /// nothing about them (a device that does not know them ignores them; one that does must
    /// authenticate them by other means, as trust-domains' delegation chains are).
    pub fn unauthenticated_extensions(&self) -> Vec<i64> {
        self.extensions
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| !self.manifest.other.iter().any(|(mk, v)| mk == k && is_array(&v.0)))
            .collect()
    }

    /// Integrated payloads.
    pub fn integrated_payloads(&self) -> &[(String, Vec<u8>)] {
        &self.integrated
    }

    /// SHA-256 over the manifest bstr *including* its CBOR header (what the wrapper signs).
    pub fn manifest_digest(&self) -> SuitDigest {
        SuitDigest::sha256(self.profile, &bstr_item(&self.manifest_bytes))
    }

    /// Check the manifest digest, the severed members and a signature with `key`.
    pub fn verify(&self, key: &VerifyingKey) -> Result<VerifiedEnvelope> {
        self.verify_any(core::slice::from_ref(key))
    }

    /// Like [`Envelope::verify`], accepting a signature by any one of `keys`.
    pub fn verify_any(&self, keys: &[VerifyingKey]) -> Result<VerifiedEnvelope> {
        let claimed = self.auth_digest.as_ref().ok_or(Error::Unsigned)?;
        if !claimed.matches(self.profile, &bstr_item(&self.manifest_bytes))? {
            return Err(Error::ManifestDigestMismatch);
        }
        if self.auth_blocks.is_empty() {
            return Err(Error::Unsigned);
        }
        if self.auth_blocks.iter().all(|b| is_mac(b)) {
            return Err(Error::MacNotSignature);
        }
        let payload = claimed.to_cbor();
        let mut last = Error::Unsigned;
        let mut ok = false;
        'outer: for block in &self.auth_blocks {
            for key in keys {
                match key.verify_sign1(block, &payload) {
                    Ok(()) => {
                        ok = true;
                        break 'outer;
                    }
                    Err(e) => last = e,
                }
            }
        }
        if !ok {
            return Err(last);
        }
        self.check_severed()?;
        Ok(VerifiedEnvelope(self.clone()))
    }

    /// Like [`Envelope::verify`] for envelopes authenticated with COSE_Mac0 (HMAC 256/256).
    pub fn verify_mac(&self, key: &crate::cose::MacKey) -> Result<VerifiedEnvelope> {
        let claimed = self.auth_digest.as_ref().ok_or(Error::Unsigned)?;
        if !claimed.matches(self.profile, &bstr_item(&self.manifest_bytes))? {
            return Err(Error::ManifestDigestMismatch);
        }
        let payload = claimed.to_cbor();
        let mut last = Error::Unsigned;
        for block in &self.auth_blocks {
            match key.verify_mac0(block, &payload) {
                Ok(()) => {
                    self.check_severed()?;
                    return Ok(VerifiedEnvelope(self.clone()));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn check_severed(&self) -> Result<()> {
        for (key, content) in &self.severed {
            let expected = match self.profile.manifest_member(*key) {
                Some(ManifestMember::PayloadFetch) => digest_of(&self.manifest.payload_fetch),
                Some(ManifestMember::Install) => digest_of(&self.manifest.install),
                Some(ManifestMember::Text) => digest_of(&self.manifest.text),
                _ => None,
            };
            let mismatch = || Error::SeveredDigestMismatch(i64::try_from(*key).unwrap_or(i64::MAX));
            let expected = expected.ok_or_else(mismatch)?;
            if !expected.matches(self.profile, &bstr_item(content))? {
                return Err(mismatch());
            }
        }
        // Severed extension members: the manifest holds `key: SUIT_Digest` (a bare array),
        // the envelope the bstr under the same key. The digest covers the bstr item with its
        // header, which is exactly the verbatim item kept.
        for (key, item) in &self.extensions {
            let Some((_, member)) = self.manifest.other.iter().find(|(k, v)| k == key && is_array(&v.0)) else {
                continue;
            };
            let mismatch = || Error::SeveredDigestMismatch(*key);
            let expected = SuitDigest::from_cbor(&member.0).map_err(|_| mismatch())?;
            if Dec::new(item).datatype()? != Type::Bytes || !expected.matches(self.profile, item)? {
                return Err(mismatch());
            }
        }
        Ok(())
    }

    /// Encode the envelope (canonical order: integer keys, then text keys).
    pub fn encode(&self) -> Vec<u8> {
        let mut auth = Enc::new();
        match self.profile {
            Profile::Draft37 => {
                auth.array(1 + self.auth_blocks.len());
                if let Some(dg) = &self.auth_digest {
                    auth.bytes(&dg.to_cbor());
                }
            }
            Profile::Riot09 => auth.array(self.auth_blocks.len()),
        }
        for b in &self.auth_blocks {
            auth.bytes(b);
        }
        let mut e = Enc::new();
        if self.tagged {
            if let Some(tag) = self.profile.envelope_tag() {
                e.tag(tag);
            }
        }
        e.map(2 + self.severed.len() + self.extensions.len() + self.integrated.len());
        // Integer keys in canonical (bytewise) order: 2, 3, the severed members and the
        // extensions interleaved by key.
        let mut members: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        members.push((int_key_bytes(2), bstr_item(&auth.finish())));
        members.push((int_key_bytes(3), bstr_item(&self.manifest_bytes)));
        for (k, v) in &self.severed {
            members.push((crate::cbor::uint_key_bytes(*k), bstr_item(v)));
        }
        for (k, v) in &self.extensions {
            members.push((int_key_bytes(*k), v.clone()));
        }
        members.sort();
        for (k, v) in &members {
            e.raw(k);
            e.raw(v);
        }
        let mut integrated = self.integrated.clone();
        integrated.sort_by_key(|(k, _)| crate::cbor::text_key_bytes(k));
        for (k, v) in &integrated {
            e.text(k);
            e.bytes(v);
        }
        e.finish()
    }

    /// An envelope of `profile` around `manifest` with no signature yet (draft37: the
    /// authentication wrapper holds only the digest, as the draft's unsigned examples).
    pub fn unsigned(profile: Profile, manifest: &Manifest) -> Result<Self> {
        if profile == Profile::Riot09 && manifest.sequence_number > u64::from(u32::MAX) {
            return Err(crate::builder::riot_sequence_number(manifest.sequence_number));
        }
        let manifest_bytes = manifest.encode(profile);
        // Re-check what will be signed (the draft's TOCTOU rule): it must decode back.
        let decoded = Manifest::decode(profile, &manifest_bytes)?;
        if &decoded != manifest {
            return Err(Error::Build(
                "manifest does not survive an encode/decode round trip".into(),
            ));
        }
        Ok(Envelope {
            profile,
            tagged: profile.envelope_tag().is_some(),
            auth_digest: Some(SuitDigest::sha256(profile, &bstr_item(&manifest_bytes))),
            auth_blocks: Vec::new(),
            manifest_bytes,
            manifest: decoded,
            severed: Vec::new(),
            integrated: Vec::new(),
            extensions: Vec::new(),
        })
    }

    /// Add a COSE_Sign1 by `key` over the manifest digest (recomputed, never trusted).
    ///
    /// draft37: `[bstr(digest), *bstr(COSE_Sign1 detached)]`, tag 107.
    /// riot09: `[*bstr(COSE_Sign1 with the digest attached)]`, no tag.
    pub fn add_signature(mut self, key: &SigningKey) -> Result<Self> {
        if self.profile == Profile::Riot09 && self.manifest.sequence_number > u64::from(u32::MAX) {
            return Err(crate::builder::riot_sequence_number(self.manifest.sequence_number));
        }
        let digest = self.manifest_digest();
        if let Some(claimed) = &self.auth_digest {
            if claimed.bytes != digest.bytes && !self.auth_blocks.is_empty() {
                return Err(Error::ManifestDigestMismatch);
            }
        }
        let cose = key.sign1(&digest.to_cbor(), self.profile == Profile::Riot09)?;
        self.auth_digest = Some(digest);
        self.auth_blocks.push(cose);
        Ok(self)
    }

    /// Sign `manifest` with `key` and wrap it into an envelope of `profile`.
    pub fn sign(profile: Profile, manifest: &Manifest, key: &SigningKey) -> Result<Self> {
        Self::unsigned(profile, manifest)?.add_signature(key)
    }

    /// Move severable members out of the manifest into the envelope (draft37 only).
    /// Must happen before signing, so this re-signs.
    pub fn sign_severed(manifest: &Manifest, sever_install: bool, sever_text: bool, key: &SigningKey) -> Result<Self> {
        let profile = Profile::Draft37;
        let mut m = manifest.clone();
        let mut severed = Vec::new();
        if sever_install {
            if let Some(Severable::Present(s)) = &m.install {
                let content = s.to_cbor();
                let dg = SuitDigest::sha256(profile, &bstr_item(&content));
                severed.push((profile.manifest_key(ManifestMember::Install), content));
                m.install = Some(Severable::Severed(dg));
            }
        }
        if sever_text {
            if let Some(Severable::Present(t)) = &m.text {
                let content = t.to_cbor();
                let dg = SuitDigest::sha256(profile, &bstr_item(&content));
                severed.push((profile.manifest_key(ManifestMember::Text), content));
                m.text = Some(Severable::Severed(dg));
            }
        }
        let mut env = Self::sign(profile, &m, key)?;
        env.severed = severed;
        Ok(env)
    }
}

/// Is this authentication block a COSE_Mac0 (tag 17) or COSE_Mac (tag 97)?
fn is_mac(block: &[u8]) -> bool {
    let mut d = Dec::new(block);
    matches!(d.tag("COSE tag"), Ok(17 | 97))
}

/// Is `item` a CBOR array (a severed member's SUIT_Digest, as opposed to a present bstr)?
fn is_array(item: &[u8]) -> bool {
    Dec::new(item).datatype().ok() == Some(Type::Array)
}

fn digest_of<T>(s: &Option<Severable<T>>) -> Option<&SuitDigest> {
    match s {
        Some(Severable::Severed(d)) => Some(d),
        _ => None,
    }
}
