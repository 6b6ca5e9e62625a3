//! Wire profiles: the key numbers of the current draft and of RIOT's draft-09 dialect.
//!
//! The typed model in [`crate::manifest`] is shared; a profile only says which number stands
//! for which member on the wire and how the authentication wrapper is shaped.

/// Which SUIT dialect an envelope is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Profile {
    /// draft-ietf-suit-manifest-34..37 (tag 107, detached COSE payload, COSE digest ids).
    Draft37,
    /// draft-ietf-suit-manifest-09 as parsed by RIOT (`sys/suit`): no tag, attached COSE
    /// payload, digest algorithm 2 = SHA-256, install 9, validate 10, run 12.
    Riot09,
}

/// How the argument of a command is shaped on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ArgKind {
    /// A reporting policy (uint).
    Policy,
    /// set-component-index: uint, `true` or an array of uints.
    Index,
    /// try-each: an array of bstr-wrapped sequences, optionally ending in `nil`.
    TryEach,
    /// override-/set-parameters: a parameter map.
    Params,
    /// run-sequence: one bstr-wrapped sequence.
    Sequence,
    /// Kept verbatim (custom commands).
    Raw,
}

/// Members of the manifest map, by meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ManifestMember {
    Version,
    SequenceNumber,
    Common,
    ReferenceUri,
    Validate,
    Load,
    Invoke,
    PayloadFetch,
    Install,
    Text,
}

impl Profile {
    /// The CBOR tag of a signed envelope, if the profile uses one.
    pub fn envelope_tag(self) -> Option<u64> {
        match self {
            Profile::Draft37 => Some(107),
            Profile::Riot09 => None,
        }
    }

    /// The digest algorithm id that stands for SHA-256.
    pub fn sha256_id(self) -> i64 {
        match self {
            Profile::Draft37 => -16,
            Profile::Riot09 => 2,
        }
    }

    /// The short name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Draft37 => "draft37",
            Profile::Riot09 => "riot09",
        }
    }

    pub(crate) fn manifest_key(self, m: ManifestMember) -> u64 {
        use ManifestMember::*;
        match (self, m) {
            (_, Version) => 1,
            (_, SequenceNumber) => 2,
            (_, Common) => 3,
            (_, ReferenceUri) => 4,
            (Profile::Draft37, Validate) => 7,
            (Profile::Draft37, Load) => 8,
            (Profile::Draft37, Invoke) => 9,
            (Profile::Draft37, PayloadFetch) => 16,
            (Profile::Draft37, Install) => 20,
            (Profile::Draft37, Text) => 23,
            (Profile::Riot09, PayloadFetch) => 8,
            (Profile::Riot09, Install) => 9,
            (Profile::Riot09, Validate) => 10,
            (Profile::Riot09, Load) => 11,
            (Profile::Riot09, Invoke) => 12,
            (Profile::Riot09, Text) => 13,
        }
    }

    pub(crate) fn manifest_member(self, key: u64) -> Option<ManifestMember> {
        use ManifestMember::*;
        [
            Version,
            SequenceNumber,
            Common,
            ReferenceUri,
            Validate,
            Load,
            Invoke,
            PayloadFetch,
            Install,
            Text,
        ]
        .into_iter()
        .find(|m| self.manifest_key(*m) == key)
    }

    /// Envelope keys that may carry a severed member's bstr.
    pub(crate) fn severable_envelope_key(self, key: u64) -> bool {
        match self {
            Profile::Draft37 => matches!(key, 16 | 20 | 23),
            Profile::Riot09 => false,
        }
    }

    pub(crate) fn arg_kind(self, code: i64) -> ArgKind {
        match (self, code) {
            (_, c) if c < 0 => ArgKind::Raw,
            (_, 12) => ArgKind::Index,
            (_, 15) => ArgKind::TryEach,
            (_, 19 | 20) => ArgKind::Params,
            (Profile::Draft37, 32) => ArgKind::Sequence,
            (Profile::Riot09, 30) => ArgKind::Sequence,
            // The draft-09 run-with-args / fetch-uri-list take structured arguments.
            (Profile::Riot09, 31) => ArgKind::Raw,
            _ => ArgKind::Policy,
        }
    }

    /// The name of a command code (condition or directive) in this profile.
    pub fn command_name(self, code: i64) -> &'static str {
        match (self, code) {
            (_, 1) => "condition-vendor-identifier",
            (_, 2) => "condition-class-identifier",
            (_, 3) => "condition-image-match",
            (Profile::Draft37, 5) => "condition-component-slot",
            (Profile::Riot09, 5) => "condition-component-offset",
            (_, 6) => "condition-check-content",
            (_, 4) => "condition-use-before",
            (Profile::Draft37, 7) => "condition-dependency-integrity",
            (Profile::Draft37, 8) => "condition-is-dependency",
            (Profile::Draft37, 11) => "directive-process-dependency",
            (_, 12) => "directive-set-component-index",
            (_, 14) => "condition-abort",
            (_, 15) => "directive-try-each",
            (Profile::Draft37, 18) => "directive-write",
            (_, 19) => "directive-set-parameters",
            (_, 20) => "directive-override-parameters",
            (_, 21) => "directive-fetch",
            (_, 22) => "directive-copy",
            (Profile::Draft37, 23) => "directive-invoke",
            (Profile::Riot09, 23) => "directive-run",
            (_, 24) => "condition-device-identifier",
            (_, 25) => "condition-image-not-match",
            (_, 26) => "condition-minimum-battery",
            (_, 27) => "condition-update-authorized",
            (_, 28) => "condition-version",
            (_, 29) => "directive-wait",
            (Profile::Draft37, 31) => "directive-swap",
            (Profile::Draft37, 32) => "directive-run-sequence",
            (Profile::Draft37, 33) => "directive-unlink",
            (Profile::Riot09, 30) => "directive-run-sequence",
            (Profile::Riot09, 31) => "directive-run-with-args",
            (Profile::Riot09, 32) => "directive-swap",
            (_, c) if c < 0 => "custom",
            _ => "unknown",
        }
    }

    /// The name of a parameter key in this profile.
    pub fn parameter_name(self, key: i64) -> &'static str {
        match (self, key) {
            (_, 1) => "vendor-id",
            (_, 2) => "class-id",
            (_, 3) => "image-digest",
            (Profile::Draft37, 5) => "component-slot",
            (Profile::Riot09, 5) => "component-offset",
            (_, 12) => "strict-order",
            (_, 13) => "soft-failure",
            (_, 14) => "image-size",
            (_, 18) => "content",
            (_, 19) => "encryption-info",
            (_, 21) => "uri",
            (_, 22) => "source-component",
            (_, 23) => "invoke-args",
            (_, 24) => "device-id",
            (_, 25) => "fetch-arguments",
            (_, k) if k < 0 => "custom",
            _ => "unknown",
        }
    }
}

impl core::fmt::Display for Profile {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

impl core::str::FromStr for Profile {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "draft37" | "ietf" | "draft-37" => Ok(Profile::Draft37),
            "riot09" | "riot" | "draft-09" => Ok(Profile::Riot09),
            other => Err(crate::Error::Build(alloc::format!(
                "unknown profile {other:?} (draft37 or riot09)"
            ))),
        }
    }
}
