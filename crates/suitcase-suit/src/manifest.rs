//! The typed SUIT manifest: digest, parameters, commands, sequences, common and manifest.
//!
//! Decoding keeps everything it does not type (custom commands, unknown parameters, text)
//! as verbatim CBOR, so `encode(decode(x)) == x` for every canonically encoded input.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use minicbor::data::Type;
use sha2::{Digest as _, Sha256};

use crate::cbor::{int_key_bytes, Dec, Enc, MAX_DEPTH};
use crate::error::{Error, Result};
use crate::profile::{ArgKind, ManifestMember, Profile};

mod views;

use views::walk;
pub use views::ComponentView;

/// One CBOR data item kept verbatim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawValue(pub Vec<u8>);

/// `SUIT_Digest = [alg, bstr]` (extensions after the bytes are kept verbatim).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuitDigest {
    /// Algorithm id: -16 SHA-256 in the current draft, 2 in draft-09.
    pub algorithm: i64,
    /// The digest bytes.
    pub bytes: Vec<u8>,
    /// Extra array members after the digest (kept, not interpreted).
    pub extensions: Vec<RawValue>,
}

impl SuitDigest {
    /// A SHA-256 digest of `data` with the profile's algorithm id.
    pub fn sha256(profile: Profile, data: &[u8]) -> Self {
        SuitDigest {
            algorithm: profile.sha256_id(),
            bytes: Sha256::digest(data).to_vec(),
            extensions: Vec::new(),
        }
    }

    /// Recompute over `data` with this digest's algorithm and compare.
    pub fn matches(&self, profile: Profile, data: &[u8]) -> Result<bool> {
        if self.algorithm != profile.sha256_id() {
            return Err(Error::UnsupportedAlgorithm(self.algorithm));
        }
        Ok(Sha256::digest(data)[..] == self.bytes[..])
    }

    /// The CBOR encoding of this digest.
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut e = Enc::new();
        self.encode(&mut e);
        e.finish()
    }

    /// Decode a digest from its CBOR encoding (exactly one item).
    pub fn from_cbor(bytes: &[u8]) -> Result<Self> {
        let mut d = Dec::new(bytes);
        let v = Self::decode(&mut d)?;
        d.expect_end("SUIT_Digest")?;
        Ok(v)
    }

    pub(crate) fn encode(&self, e: &mut Enc) {
        e.array(2 + self.extensions.len());
        e.int(self.algorithm);
        e.bytes(&self.bytes);
        for x in &self.extensions {
            e.raw(&x.0);
        }
    }

    pub(crate) fn decode(d: &mut Dec<'_>) -> Result<Self> {
        let n = d.array("SUIT_Digest")?;
        if n < 2 {
            return Err(Error::malformed(d.position(), "SUIT_Digest needs [alg, bytes]"));
        }
        let algorithm = d.int("digest algorithm")?;
        let bytes = d.bytes("digest bytes")?.to_vec();
        let mut extensions = Vec::new();
        for _ in 2..n {
            extensions.push(RawValue(d.raw("digest extension")?.to_vec()));
        }
        Ok(SuitDigest {
            algorithm,
            bytes,
            extensions,
        })
    }
}

/// A component identifier: an array of byte strings, `[h'00']` for a single image.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ComponentId(pub Vec<Vec<u8>>);

/// The value of one parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParamValue {
    /// An unsigned integer (image-size, component-slot, source-component).
    Uint(u64),
    /// A byte string (vendor-id, class-id, content, invoke-args).
    Bytes(Vec<u8>),
    /// A text string (uri).
    Text(String),
    /// A boolean (strict-order, soft-failure).
    Bool(bool),
    /// image-digest: a bstr-wrapped SUIT_Digest.
    Digest(SuitDigest),
    /// Anything else, verbatim.
    Raw(RawValue),
}

/// A parameter map, in wire order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parameters(pub Vec<(i64, ParamValue)>);

/// Parameter keys shared by both profiles.
pub mod param {
    /// vendor-id (16-byte UUID).
    pub const VENDOR_ID: i64 = 1;
    /// class-id (16-byte UUID).
    pub const CLASS_ID: i64 = 2;
    /// image-digest (bstr-wrapped SUIT_Digest).
    pub const IMAGE_DIGEST: i64 = 3;
    /// component-slot (draft37) / component-offset (riot09).
    pub const COMPONENT_SLOT: i64 = 5;
    /// image-size.
    pub const IMAGE_SIZE: i64 = 14;
    /// uri.
    pub const URI: i64 = 21;
    /// source-component.
    pub const SOURCE_COMPONENT: i64 = 22;
}

impl Parameters {
    /// The value of `key`, if set.
    pub fn get(&self, key: i64) -> Option<&ParamValue> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Set `key`, keeping the map in canonical (bytewise) key order.
    pub fn set(&mut self, key: i64, value: ParamValue) {
        if let Some(slot) = self.0.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
            return;
        }
        self.0.push((key, value));
        self.0.sort_by_key(|(k, _)| int_key_bytes(*k));
    }

    fn encode(&self, e: &mut Enc) {
        e.map(self.0.len());
        for (k, v) in &self.0 {
            e.int(*k);
            match v {
                ParamValue::Uint(u) => e.uint(*u),
                ParamValue::Bytes(b) => e.bytes(b),
                ParamValue::Text(t) => e.text(t),
                ParamValue::Bool(b) => e.bool(*b),
                ParamValue::Digest(dg) => e.bytes(&dg.to_cbor()),
                ParamValue::Raw(r) => e.raw(&r.0),
            }
        }
    }

    fn decode(d: &mut Dec<'_>) -> Result<Self> {
        let n = d.map("parameters")?;
        let mut out: Vec<(i64, ParamValue)> = Vec::new();
        for _ in 0..n {
            let key = d.int("parameter key")?;
            if out.iter().any(|(k, _)| *k == key) {
                return Err(Error::Duplicate {
                    structure: "parameters",
                    key: key.to_string(),
                });
            }
            let value = if key == param::IMAGE_DIGEST && d.datatype()? == Type::Bytes {
                ParamValue::Digest(SuitDigest::from_cbor(d.bytes("image-digest")?)?)
            } else {
                match d.datatype()? {
                    Type::U8 | Type::U16 | Type::U32 | Type::U64 => ParamValue::Uint(d.uint("parameter")?),
                    Type::Bytes => ParamValue::Bytes(d.bytes("parameter")?.to_vec()),
                    Type::String => ParamValue::Text(d.text("parameter")?.to_string()),
                    Type::Bool => ParamValue::Bool(d.bool("parameter")?),
                    _ => ParamValue::Raw(RawValue(d.raw("parameter")?.to_vec())),
                }
            };
            out.push((key, value));
        }
        Ok(Parameters(out))
    }
}

/// The argument of set-component-index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ComponentIndex {
    /// One component.
    One(u64),
    /// `true`: every component.
    All,
    /// A list of components.
    Many(Vec<u64>),
}

impl ComponentIndex {
    /// The components it selects among `n`: every one for `All`; a list's indices below `n`,
    /// each once, in order; a single index as given (callers that index by it check its
    /// range, so an out-of-range selection stays visible).
    pub fn indices(&self, n: usize) -> Vec<usize> {
        match self {
            ComponentIndex::One(i) => alloc::vec![usize::try_from(*i).unwrap_or(usize::MAX)],
            ComponentIndex::All => (0..n).collect(),
            ComponentIndex::Many(v) => {
                let mut idx: Vec<usize> = v
                    .iter()
                    .filter_map(|i| usize::try_from(*i).ok())
                    .filter(|i| *i < n)
                    .collect();
                idx.sort_unstable();
                idx.dedup();
                idx
            }
        }
    }
}

/// The argument of one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandArg {
    /// A reporting policy (conditions and most directives).
    Policy(u64),
    /// set-component-index.
    Index(ComponentIndex),
    /// try-each: the alternatives, and whether a trailing `nil` makes the whole try optional.
    TryEach {
        /// Alternatives, each a bstr-wrapped sequence on the wire.
        alternatives: Vec<CommandSequence>,
        /// A trailing `nil` (no alternative matching is not a failure).
        trailing_nil: bool,
    },
    /// override-parameters / set-parameters.
    Params(Parameters),
    /// run-sequence.
    Sequence(CommandSequence),
    /// Custom commands: the argument verbatim.
    Raw(RawValue),
}

/// One condition or directive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// Command code (profile-specific; see [`Profile::command_name`]).
    pub code: i64,
    /// Its argument.
    pub arg: CommandArg,
}

/// Command codes common to both profiles.
pub mod cmd {
    /// condition-vendor-identifier.
    pub const VENDOR_IDENTIFIER: i64 = 1;
    /// condition-class-identifier.
    pub const CLASS_IDENTIFIER: i64 = 2;
    /// condition-image-match.
    pub const IMAGE_MATCH: i64 = 3;
    /// condition-component-slot / -offset.
    pub const COMPONENT_SLOT: i64 = 5;
    /// directive-set-component-index.
    pub const SET_COMPONENT_INDEX: i64 = 12;
    /// directive-try-each.
    pub const TRY_EACH: i64 = 15;
    /// directive-set-parameters (draft-09 / trust-domains).
    pub const SET_PARAMETERS: i64 = 19;
    /// directive-override-parameters.
    pub const OVERRIDE_PARAMETERS: i64 = 20;
    /// directive-fetch.
    pub const FETCH: i64 = 21;
    /// directive-copy.
    pub const COPY: i64 = 22;
    /// directive-invoke (draft37).
    pub const INVOKE: i64 = 23;
}

/// Reporting policies used by the IETF examples.
pub mod policy {
    /// Send a record on success and on failure, with system information (conditions).
    pub const ALL: u64 = 15;
    /// Send a record on failure (fetch, copy, invoke).
    pub const ON_FAILURE: u64 = 2;
}

/// A flat command sequence `[code, arg, code, arg, …]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandSequence(pub Vec<Command>);

impl CommandSequence {
    /// Append a command.
    pub fn push(&mut self, code: i64, arg: CommandArg) -> &mut Self {
        self.0.push(Command { code, arg });
        self
    }

    /// The CBOR encoding of the sequence (the content of its bstr wrapper).
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut e = Enc::new();
        self.encode(&mut e);
        e.finish()
    }

    /// Decode a sequence from the content of its bstr wrapper.
    pub fn from_cbor(profile: Profile, bytes: &[u8]) -> Result<Self> {
        Self::from_cbor_depth(profile, bytes, 0)
    }

    fn from_cbor_depth(profile: Profile, bytes: &[u8], depth: usize) -> Result<Self> {
        if depth > MAX_DEPTH {
            return Err(Error::TooDeep(MAX_DEPTH));
        }
        let mut d = Dec::new(bytes);
        let n = d.array("command sequence")?;
        if n % 2 != 0 {
            return Err(Error::malformed(0, "command sequence has an odd number of items"));
        }
        let mut cmds = Vec::new();
        for _ in 0..n / 2 {
            let code = d.int("command code")?;
            let arg = match profile.arg_kind(code) {
                ArgKind::Policy => {
                    if d.datatype()? == Type::Bool || !d.is_int()? {
                        CommandArg::Raw(RawValue(d.raw("command argument")?.to_vec()))
                    } else {
                        CommandArg::Policy(d.uint("reporting policy")?)
                    }
                }
                ArgKind::Index => match d.datatype()? {
                    Type::Bool => {
                        if d.bool("component index")? {
                            CommandArg::Index(ComponentIndex::All)
                        } else {
                            return Err(Error::malformed(d.position(), "component index `false`"));
                        }
                    }
                    Type::Array => {
                        let m = d.array("component index list")?;
                        let mut v = Vec::new();
                        for _ in 0..m {
                            v.push(d.uint("component index")?);
                        }
                        CommandArg::Index(ComponentIndex::Many(v))
                    }
                    _ => CommandArg::Index(ComponentIndex::One(d.uint("component index")?)),
                },
                ArgKind::TryEach => {
                    let m = d.array("try-each")?;
                    let mut alternatives = Vec::new();
                    let mut trailing_nil = false;
                    for i in 0..m {
                        if d.datatype()? == Type::Null && i + 1 == m {
                            d.null("try-each nil")?;
                            trailing_nil = true;
                        } else {
                            let inner = d.bytes("try-each alternative")?;
                            alternatives.push(Self::from_cbor_depth(profile, inner, depth + 1)?);
                        }
                    }
                    CommandArg::TryEach {
                        alternatives,
                        trailing_nil,
                    }
                }
                ArgKind::Params => CommandArg::Params(Parameters::decode(&mut d)?),
                ArgKind::Sequence => {
                    let inner = d.bytes("run-sequence")?;
                    CommandArg::Sequence(Self::from_cbor_depth(profile, inner, depth + 1)?)
                }
                ArgKind::Raw => CommandArg::Raw(RawValue(d.raw("command argument")?.to_vec())),
            };
            cmds.push(Command { code, arg });
        }
        d.expect_end("command sequence")?;
        Ok(CommandSequence(cmds))
    }

    fn encode(&self, e: &mut Enc) {
        e.array(self.0.len() * 2);
        for c in &self.0 {
            e.int(c.code);
            match &c.arg {
                CommandArg::Policy(p) => e.uint(*p),
                CommandArg::Index(ComponentIndex::One(i)) => e.uint(*i),
                CommandArg::Index(ComponentIndex::All) => e.bool(true),
                CommandArg::Index(ComponentIndex::Many(v)) => {
                    e.array(v.len());
                    for i in v {
                        e.uint(*i);
                    }
                }
                CommandArg::TryEach {
                    alternatives,
                    trailing_nil,
                } => {
                    e.array(alternatives.len() + usize::from(*trailing_nil));
                    for a in alternatives {
                        e.bytes(&a.to_cbor());
                    }
                    if *trailing_nil {
                        e.null();
                    }
                }
                CommandArg::Params(p) => p.encode(e),
                CommandArg::Sequence(s) => e.bytes(&s.to_cbor()),
                CommandArg::Raw(r) => e.raw(&r.0),
            }
        }
    }

    /// Every parameter map set in this sequence (recursively), in order.
    pub fn parameter_maps(&self) -> Vec<&Parameters> {
        let mut out = Vec::new();
        for c in &self.0 {
            match &c.arg {
                CommandArg::Params(p) => out.push(p),
                CommandArg::Sequence(s) => out.extend(s.parameter_maps()),
                CommandArg::TryEach { alternatives, .. } => {
                    for a in alternatives {
                        out.extend(a.parameter_maps());
                    }
                }
                _ => {}
            }
        }
        out
    }
}

/// A member that may be severed: present (bstr-wrapped) or replaced by its digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Severable<T> {
    /// The member itself.
    Present(T),
    /// The member was severed; the envelope may carry it under the same key.
    Severed(SuitDigest),
}

/// The common section (`SUIT_Common`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Common {
    /// Components (key 2).
    pub components: Vec<ComponentId>,
    /// The shared sequence (key 4), run before every other sequence.
    pub shared_sequence: Option<CommandSequence>,
    /// Other members (dependencies …), verbatim.
    pub other: Vec<(i64, RawValue)>,
}

impl Common {
    fn encode(&self, profile: Profile) -> Vec<u8> {
        let _ = profile;
        let mut members: Vec<(i64, Vec<u8>)> = Vec::new();
        let mut e = Enc::new();
        e.array(self.components.len());
        for c in &self.components {
            e.array(c.0.len());
            for part in &c.0 {
                e.bytes(part);
            }
        }
        members.push((2, e.finish()));
        if let Some(s) = &self.shared_sequence {
            let mut e = Enc::new();
            e.bytes(&s.to_cbor());
            members.push((4, e.finish()));
        }
        for (k, v) in &self.other {
            members.push((*k, v.0.clone()));
        }
        encode_int_map(members)
    }

    fn decode(profile: Profile, bytes: &[u8]) -> Result<Self> {
        let mut d = Dec::new(bytes);
        let n = d.map("common")?;
        let mut common = Common::default();
        let mut seen = Vec::new();
        for _ in 0..n {
            let key = d.int("common key")?;
            if seen.contains(&key) {
                return Err(Error::Duplicate {
                    structure: "common",
                    key: key.to_string(),
                });
            }
            seen.push(key);
            match key {
                2 => {
                    let m = d.array("components")?;
                    for _ in 0..m {
                        let parts = d.array("component id")?;
                        let mut id = Vec::new();
                        for _ in 0..parts {
                            id.push(d.bytes("component id part")?.to_vec());
                        }
                        common.components.push(ComponentId(id));
                    }
                }
                4 => {
                    let inner = d.bytes("shared sequence")?;
                    common.shared_sequence = Some(CommandSequence::from_cbor(profile, inner)?);
                }
                k => common.other.push((k, RawValue(d.raw("common member")?.to_vec()))),
            }
        }
        d.expect_end("common")?;
        // Unknown members are kept in canonical order, the order `encode` writes them in.
        common.other.sort_by_key(|(k, _)| int_key_bytes(*k));
        if !seen.contains(&2) {
            return Err(Error::Missing("components in common"));
        }
        Ok(common)
    }
}

fn encode_int_map(mut members: Vec<(i64, Vec<u8>)>) -> Vec<u8> {
    members.sort_by_key(|(k, _)| int_key_bytes(*k));
    let mut e = Enc::new();
    e.map(members.len());
    for (k, v) in members {
        e.int(k);
        e.raw(&v);
    }
    e.finish()
}

/// The SUIT manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// manifest-version; always 1.
    pub version: u64,
    /// manifest-sequence-number: monotonic, devices reject anything not newer.
    pub sequence_number: u64,
    /// The common section.
    pub common: Common,
    /// reference-uri.
    pub reference_uri: Option<String>,
    /// validate sequence.
    pub validate: Option<CommandSequence>,
    /// load sequence.
    pub load: Option<CommandSequence>,
    /// invoke (draft-09: run) sequence.
    pub invoke: Option<CommandSequence>,
    /// payload-fetch sequence (severable).
    pub payload_fetch: Option<Severable<CommandSequence>>,
    /// install sequence (severable).
    pub install: Option<Severable<CommandSequence>>,
    /// text (severable).
    pub text: Option<Severable<crate::text::Text>>,
    /// Members this crate does not type, verbatim.
    pub other: Vec<(i64, RawValue)>,
}

impl Manifest {
    /// Encode as the profile's CBOR (the content of the envelope's manifest bstr).
    pub fn encode(&self, profile: Profile) -> Vec<u8> {
        use ManifestMember as M;
        let key = |m| profile.manifest_key(m) as i64;
        let mut members: Vec<(i64, Vec<u8>)> = Vec::new();
        let mut one = |k: i64, f: &dyn Fn(&mut Enc)| {
            let mut e = Enc::new();
            f(&mut e);
            members.push((k, e.finish()));
        };
        one(key(M::Version), &|e| e.uint(self.version));
        one(key(M::SequenceNumber), &|e| e.uint(self.sequence_number));
        one(key(M::Common), &|e| e.bytes(&self.common.encode(profile)));
        if let Some(u) = &self.reference_uri {
            one(key(M::ReferenceUri), &|e| e.text(u));
        }
        for (m, s) in [
            (M::Validate, &self.validate),
            (M::Load, &self.load),
            (M::Invoke, &self.invoke),
        ] {
            if let Some(s) = s {
                one(key(m), &|e| e.bytes(&s.to_cbor()));
            }
        }
        for (m, s) in [(M::PayloadFetch, &self.payload_fetch), (M::Install, &self.install)] {
            match s {
                Some(Severable::Present(s)) => one(key(m), &|e| e.bytes(&s.to_cbor())),
                Some(Severable::Severed(dg)) => one(key(m), &|e| dg.encode(e)),
                None => {}
            }
        }
        match &self.text {
            Some(Severable::Present(t)) => one(key(M::Text), &|e| e.bytes(&t.to_cbor())),
            Some(Severable::Severed(dg)) => one(key(M::Text), &|e| dg.encode(e)),
            None => {}
        }
        for (k, v) in &self.other {
            members.push((*k, v.0.clone()));
        }
        encode_int_map(members)
    }

    /// Decode the content of the envelope's manifest bstr.
    pub fn decode(profile: Profile, bytes: &[u8]) -> Result<Self> {
        use ManifestMember as M;
        let mut d = Dec::new(bytes);
        let n = d.map("manifest")?;
        let mut version = None;
        let mut sequence_number = None;
        let mut common = None;
        let mut m = Manifest {
            version: 0,
            sequence_number: 0,
            common: Common::default(),
            reference_uri: None,
            validate: None,
            load: None,
            invoke: None,
            payload_fetch: None,
            install: None,
            text: None,
            other: Vec::new(),
        };
        let mut seen: Vec<i64> = Vec::new();
        for _ in 0..n {
            let key = d.int("manifest key")?;
            if seen.contains(&key) {
                return Err(Error::Duplicate {
                    structure: "manifest",
                    key: key.to_string(),
                });
            }
            seen.push(key);
            let member = u64::try_from(key).ok().and_then(|k| profile.manifest_member(k));
            match member {
                Some(M::Version) => version = Some(d.uint("manifest-version")?),
                Some(M::SequenceNumber) => sequence_number = Some(d.uint("sequence number")?),
                Some(M::Common) => common = Some(Common::decode(profile, d.bytes("common")?)?),
                Some(M::ReferenceUri) => m.reference_uri = Some(d.text("reference-uri")?.to_string()),
                Some(M::Validate) => m.validate = Some(seq(profile, &mut d, "validate")?),
                Some(M::Load) => m.load = Some(seq(profile, &mut d, "load")?),
                Some(M::Invoke) => m.invoke = Some(seq(profile, &mut d, "invoke")?),
                Some(M::PayloadFetch) => m.payload_fetch = Some(severable_seq(profile, &mut d, "payload-fetch")?),
                Some(M::Install) => m.install = Some(severable_seq(profile, &mut d, "install")?),
                Some(M::Text) => {
                    m.text = Some(if d.datatype()? == Type::Array {
                        Severable::Severed(SuitDigest::decode(&mut d)?)
                    } else {
                        Severable::Present(crate::text::Text::from_cbor(d.bytes("text")?)?)
                    })
                }
                None => {
                    if profile == Profile::Riot09 {
                        // RIOT rejects any manifest member it has no handler for.
                        return Err(Error::UnknownKey {
                            structure: "manifest",
                            key: key.to_string(),
                        });
                    }
                    m.other.push((key, RawValue(d.raw("manifest member")?.to_vec())))
                }
            }
        }
        d.expect_end("manifest")?;
        m.other.sort_by_key(|(k, _)| int_key_bytes(*k));
        m.version = version.ok_or(Error::Missing("manifest-version"))?;
        if m.version != 1 {
            return Err(Error::malformed(
                0,
                format!("manifest-version {} (only 1 exists)", m.version),
            ));
        }
        m.sequence_number = sequence_number.ok_or(Error::Missing("manifest-sequence-number"))?;
        m.common = common.ok_or(Error::Missing("common"))?;
        Ok(m)
    }

    /// Every (component index, merged parameters) pair this manifest sets, following
    /// set-component-index through common, payload-fetch and install. Used by `inspect`.
    pub fn component_parameters(&self) -> Vec<(usize, Parameters)> {
        let mut out: Vec<Parameters> = alloc::vec![Parameters::default(); self.common.components.len().max(1)];
        let mut visit = |s: &CommandSequence| walk(s, &mut out, &mut alloc::vec![0usize]);
        if let Some(s) = &self.common.shared_sequence {
            visit(s);
        }
        for s in [&self.payload_fetch, &self.install].into_iter().flatten() {
            if let Severable::Present(s) = s {
                visit(s);
            }
        }
        out.into_iter().enumerate().collect()
    }
}

fn seq(profile: Profile, d: &mut Dec<'_>, what: &str) -> Result<CommandSequence> {
    CommandSequence::from_cbor(profile, d.bytes(what)?)
}

fn severable_seq(profile: Profile, d: &mut Dec<'_>, what: &str) -> Result<Severable<CommandSequence>> {
    if d.datatype()? == Type::Array {
        Ok(Severable::Severed(SuitDigest::decode(d)?))
    } else {
        Ok(Severable::Present(seq(profile, d, what)?))
    }
}
