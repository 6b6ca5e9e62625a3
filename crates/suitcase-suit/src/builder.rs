//! Build a manifest from image facts (digest, size, URI, optional slot/offset).
//!
//! Shapes follow the draft's templates (§7, Examples 1, 3, 5) and, for [`Profile::Riot09`],
//! what RIOT's `gen_manifest.py` + suit-tool emit: one component (`[h'00']`, riotboot flash, by
//! default) and a try-each over component offsets so one manifest serves both riotboot slots.
//! [`ManifestBuilder::component`] names another storage: RIOT's `suit_storage` backends take
//! the elements of the id joined with their separator, `["ram", "0"]` for the RAM region
//! `.ram.0`, `["/nvm0/SLOT0.txt"]` for a VFS file.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::manifest::{
    cmd, param, policy, CommandArg, CommandSequence, Common, ComponentId, ComponentIndex, Manifest, ParamValue,
    Parameters, Severable, SuitDigest,
};
use crate::profile::Profile;

/// UUID namespace DNS (RFC 4122).
const NAMESPACE_DNS: uuid::Uuid = uuid::Uuid::NAMESPACE_DNS;

/// vendor-id = UUID5(DNS, domain), as the draft (§8.4.8.2) and RIOT compute it.
pub fn vendor_id(domain: &str) -> [u8; 16] {
    *uuid::Uuid::new_v5(&NAMESPACE_DNS, domain.as_bytes()).as_bytes()
}

/// class-id = UUID5(vendor-id, class), as RIOT computes it from the board name.
pub fn class_id(vendor: &[u8; 16], class: &str) -> [u8; 16] {
    *uuid::Uuid::new_v5(&uuid::Uuid::from_bytes(*vendor), class.as_bytes()).as_bytes()
}

/// A component id as a user writes it: elements separated by `,` (`ram,0`,
/// `/nvm0/SLOT0.txt`), or a RIOT RAM location as `lsstorage` prints it (`.ram.0`, elements
/// after each `.`); an element `h'HEX'` is raw bytes (`h'00'`, riotboot flash, the default).
pub fn parse_component(s: &str) -> Result<ComponentId> {
    let s = s.trim();
    let bad = |why: &str| Error::Build(alloc::format!("component {s:?}: {why}"));
    let elements: Vec<&str> = match s.strip_prefix('.') {
        Some(rest) => rest.split('.').collect(),
        None => s.split(',').collect(),
    };
    let mut id = Vec::new();
    for e in elements {
        let bytes = match e.strip_prefix("h'").and_then(|h| h.strip_suffix('\'')) {
            Some(h) => hex::decode(h).map_err(|_| bad("h'...' must hold hex digits"))?,
            None => e.as_bytes().to_vec(),
        };
        if bytes.is_empty() {
            return Err(bad("an element is empty"));
        }
        if bytes.len() > 64 {
            return Err(bad("an element is longer than 64 bytes"));
        }
        id.push(bytes);
    }
    Ok(ComponentId(id))
}

/// One image a manifest describes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Where the device fetches it.
    pub uri: String,
    /// SHA-256 of the raw image bytes.
    pub sha256: [u8; 32],
    /// Size in bytes.
    pub size: u64,
    /// Slot (draft37 component-slot) or flash offset (riot09 component-offset): images with
    /// a slot are alternatives for one component, chosen by the device with try-each.
    pub slot: Option<u64>,
}

impl Image {
    /// Image facts from its bytes.
    pub fn from_bytes(uri: impl Into<String>, data: &[u8], slot: Option<u64>) -> Self {
        Image {
            uri: uri.into(),
            sha256: Sha256::digest(data).into(),
            size: data.len() as u64,
            slot,
        }
    }
}

/// Builder of an unsigned [`Manifest`].
#[derive(Clone, Debug)]
pub struct ManifestBuilder {
    profile: Profile,
    sequence_number: u64,
    vendor_id: [u8; 16],
    class_id: [u8; 16],
    images: Vec<Image>,
    reference_uri: Option<String>,
    component: Option<ComponentId>,
}

impl ManifestBuilder {
    /// A builder for `profile` with the given sequence number and vendor/class ids.
    pub fn new(profile: Profile, sequence_number: u64, vendor_id: [u8; 16], class_id: [u8; 16]) -> Self {
        ManifestBuilder {
            profile,
            sequence_number,
            vendor_id,
            class_id,
            images: Vec::new(),
            reference_uri: None,
            component: None,
        }
    }

    /// The id of the one component the images install into (default `[h'00']`, RIOT's
    /// riotboot flash slots). RIOT storage names: `["ram", "0"]` (`.ram.0`),
    /// `["/nvm0/SLOT0.txt"]` (a VFS file). Only for manifests of one component (one image,
    /// or slot/offset alternatives).
    pub fn component(mut self, id: ComponentId) -> Self {
        self.component = Some(id);
        self
    }

    /// Add an image.
    pub fn image(mut self, image: Image) -> Self {
        self.images.push(image);
        self
    }

    /// Set reference-uri (draft37 only).
    pub fn reference_uri(mut self, uri: impl Into<String>) -> Self {
        self.reference_uri = Some(uri.into());
        self
    }

    fn digest_param(&self, sha256: &[u8; 32]) -> ParamValue {
        ParamValue::Digest(SuitDigest {
            algorithm: self.profile.sha256_id(),
            bytes: sha256.to_vec(),
            extensions: Vec::new(),
        })
    }

    fn ids(&self, p: &mut Parameters) {
        p.set(param::VENDOR_ID, ParamValue::Bytes(self.vendor_id.to_vec()));
        p.set(param::CLASS_ID, ParamValue::Bytes(self.class_id.to_vec()));
    }

    /// Build the manifest.
    pub fn build(&self) -> Result<Manifest> {
        if self.images.is_empty() {
            return Err(Error::Build("a manifest needs at least one image".into()));
        }
        if self.profile == Profile::Riot09 && self.sequence_number > u64::from(u32::MAX) {
            return Err(riot_sequence_number(self.sequence_number));
        }
        if self.profile == Profile::Riot09 && self.reference_uri.is_some() {
            return Err(Error::Build("RIOT's draft-09 parser rejects reference-uri".into()));
        }
        let slotted = self.images.iter().filter(|i| i.slot.is_some()).count();
        if slotted != 0 && slotted != self.images.len() {
            return Err(Error::Build("either every image has a slot/offset or none has".into()));
        }
        if let Some(c) = &self.component {
            if c.0.is_empty() || c.0.iter().any(Vec::is_empty) {
                return Err(Error::Build(
                    "a component id needs at least one element and no empty element".into(),
                ));
            }
        }
        let (common, install, validate) = if slotted > 0 || self.images.len() == 1 {
            self.one_component()
        } else if self.component.is_some() {
            return Err(Error::Build(
                "a component id names one component: give several images only as slot alternatives".into(),
            ));
        } else if self.profile == Profile::Riot09 {
            return Err(Error::Build(
                "RIOT supports one component: give several images only as slot alternatives".into(),
            ));
        } else {
            self.many_components()
        };
        Ok(Manifest {
            version: 1,
            sequence_number: self.sequence_number,
            common,
            reference_uri: self.reference_uri.clone(),
            validate: Some(validate),
            load: None,
            invoke: None,
            payload_fetch: None,
            install: Some(Severable::Present(install)),
            text: None,
            other: Vec::new(),
        })
    }

    /// One component (`[h'00']` unless set); several images are try-each alternatives keyed on the slot.
    fn one_component(&self) -> (Common, CommandSequence, CommandSequence) {
        let riot = self.profile == Profile::Riot09;
        let mut shared = CommandSequence::default();
        let mut install = CommandSequence::default();
        let mut fixed = Parameters::default();
        self.ids(&mut fixed);
        let same_size = self.images.iter().all(|i| i.size == self.images[0].size);
        if self.images.len() == 1 {
            let img = &self.images[0];
            fixed.set(param::IMAGE_DIGEST, self.digest_param(&img.sha256));
            fixed.set(param::IMAGE_SIZE, ParamValue::Uint(img.size));
            shared.push(cmd::OVERRIDE_PARAMETERS, CommandArg::Params(fixed));
            if let Some(slot) = img.slot {
                let mut p = Parameters::default();
                p.set(param::COMPONENT_SLOT, ParamValue::Uint(slot));
                shared.push(cmd::OVERRIDE_PARAMETERS, CommandArg::Params(p));
                shared.push(
                    cmd::COMPONENT_SLOT,
                    CommandArg::Policy(if riot { 5 } else { policy::ALL }),
                );
            }
            install.push(cmd::OVERRIDE_PARAMETERS, CommandArg::Params(uri_param(&img.uri)));
        } else {
            if same_size {
                fixed.set(param::IMAGE_SIZE, ParamValue::Uint(self.images[0].size));
            }
            shared.push(cmd::OVERRIDE_PARAMETERS, CommandArg::Params(fixed));
            let slot_check = if riot { 5 } else { policy::ALL };
            let set = if riot {
                cmd::SET_PARAMETERS
            } else {
                cmd::OVERRIDE_PARAMETERS
            };
            let mut shared_alts = Vec::new();
            let mut install_alts = Vec::new();
            for img in &self.images {
                let slot = img.slot.unwrap_or_default();
                let mut sp = Parameters::default();
                sp.set(param::COMPONENT_SLOT, ParamValue::Uint(slot));
                let mut dp = Parameters::default();
                dp.set(param::IMAGE_DIGEST, self.digest_param(&img.sha256));
                if !same_size {
                    dp.set(param::IMAGE_SIZE, ParamValue::Uint(img.size));
                }
                let mut a = CommandSequence::default();
                a.push(cmd::OVERRIDE_PARAMETERS, CommandArg::Params(sp.clone()))
                    .push(cmd::COMPONENT_SLOT, CommandArg::Policy(slot_check))
                    .push(cmd::OVERRIDE_PARAMETERS, CommandArg::Params(dp));
                shared_alts.push(a);
                let mut b = CommandSequence::default();
                b.push(set, CommandArg::Params(sp))
                    .push(cmd::COMPONENT_SLOT, CommandArg::Policy(slot_check))
                    .push(set, CommandArg::Params(uri_param(&img.uri)));
                install_alts.push(b);
            }
            shared.push(
                cmd::TRY_EACH,
                CommandArg::TryEach {
                    alternatives: shared_alts,
                    trailing_nil: false,
                },
            );
            install.push(
                cmd::TRY_EACH,
                CommandArg::TryEach {
                    alternatives: install_alts,
                    trailing_nil: false,
                },
            );
        }
        shared
            .push(cmd::VENDOR_IDENTIFIER, CommandArg::Policy(policy::ALL))
            .push(cmd::CLASS_IDENTIFIER, CommandArg::Policy(policy::ALL));
        install
            .push(cmd::FETCH, CommandArg::Policy(policy::ON_FAILURE))
            .push(cmd::IMAGE_MATCH, CommandArg::Policy(policy::ALL));
        let mut validate = CommandSequence::default();
        validate.push(cmd::IMAGE_MATCH, CommandArg::Policy(policy::ALL));
        let common = Common {
            components: vec![self.component.clone().unwrap_or_else(|| ComponentId(vec![vec![0]]))],
            shared_sequence: Some(shared),
            other: Vec::new(),
        };
        (common, install, validate)
    }

    /// One component per image (draft Example 5 shape): every sequence selects its component.
    fn many_components(&self) -> (Common, CommandSequence, CommandSequence) {
        let mut shared = CommandSequence::default();
        let mut install = CommandSequence::default();
        let mut validate = CommandSequence::default();
        for (i, img) in self.images.iter().enumerate() {
            let idx = CommandArg::Index(ComponentIndex::One(i as u64));
            let mut p = Parameters::default();
            self.ids(&mut p);
            p.set(param::IMAGE_DIGEST, self.digest_param(&img.sha256));
            p.set(param::IMAGE_SIZE, ParamValue::Uint(img.size));
            shared
                .push(cmd::SET_COMPONENT_INDEX, idx.clone())
                .push(cmd::OVERRIDE_PARAMETERS, CommandArg::Params(p))
                .push(cmd::VENDOR_IDENTIFIER, CommandArg::Policy(policy::ALL))
                .push(cmd::CLASS_IDENTIFIER, CommandArg::Policy(policy::ALL));
            install
                .push(cmd::SET_COMPONENT_INDEX, idx.clone())
                .push(cmd::OVERRIDE_PARAMETERS, CommandArg::Params(uri_param(&img.uri)))
                .push(cmd::FETCH, CommandArg::Policy(policy::ON_FAILURE))
                .push(cmd::IMAGE_MATCH, CommandArg::Policy(policy::ALL));
            validate
                .push(cmd::SET_COMPONENT_INDEX, idx)
                .push(cmd::IMAGE_MATCH, CommandArg::Policy(policy::ALL));
        }
        let components = (0..self.images.len()).map(index_component_id).collect();
        let common = Common {
            components,
            shared_sequence: Some(shared),
            other: Vec::new(),
        };
        (common, install, validate)
    }
}

/// The component id of image `i` in a manifest of several: `[h'<i>']`, the index's
/// big-endian bytes without leading zeros (`h'00'`, `h'01'` as the draft's Example 5, `h'0100'`
/// for the 257th), so ids stay distinct past 256 images.
fn index_component_id(i: usize) -> ComponentId {
    let be = (i as u64).to_be_bytes();
    let first = be.iter().position(|b| *b != 0).unwrap_or(be.len() - 1);
    ComponentId(vec![be[first..].to_vec()])
}

/// RIOT keeps the sequence number in a `uint32_t` and refuses a larger one.
pub(crate) fn riot_sequence_number(seq: u64) -> Error {
    Error::Build(alloc::format!(
        "sequence number {seq}: RIOT's is 32-bit (at most {}), so riot09 cannot carry it",
        u32::MAX
    ))
}

fn uri_param(uri: &str) -> Parameters {
    let mut p = Parameters::default();
    p.set(param::URI, ParamValue::Text(uri.into()));
    p
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::Envelope;

    fn one(profile: Profile, component: Option<ComponentId>) -> Result<Vec<u8>> {
        let vendor = vendor_id("riot-os.org");
        let mut b = ManifestBuilder::new(profile, 7, vendor, class_id(&vendor, "native64")).image(Image::from_bytes(
            "coap://[::1]/a",
            b"abc",
            None,
        ));
        if let Some(c) = component {
            b = b.component(c);
        }
        let m = b.build()?;
        Ok(Envelope::unsigned(profile, &m)?.manifest_bytes().to_vec())
    }

    /// The decoded component ids, and whether `want` (common key 2, the components) is in
    /// the encoded manifest byte for byte.
    fn has(profile: Profile, m: &[u8], want: &[u8]) -> Vec<Vec<Vec<u8>>> {
        assert!(
            m.windows(want.len()).any(|w| w == want),
            "{profile}: {} lacks {}",
            hex::encode(m),
            hex::encode(want)
        );
        let decoded = Manifest::decode(profile, m).unwrap();
        decoded.common.components.iter().map(|c| c.0.clone()).collect()
    }

    #[test]
    fn the_component_id_is_encoded_as_an_array_of_bstrs() {
        // Default: riotboot flash, [h'00'].
        for profile in [Profile::Riot09, Profile::Draft37] {
            // common: {2: [[h'00']], ...}
            let m = one(profile, None).unwrap();
            assert_eq!(has(profile, &m, &[0x02, 0x81, 0x81, 0x41, 0x00]), [vec![vec![0u8]]]);

            // RAM region .ram.0: [h'72616d', h'30'].
            let ram = ComponentId(vec![b"ram".to_vec(), b"0".to_vec()]);
            let m = one(profile, Some(ram)).unwrap();
            let want = [0x02, 0x81, 0x82, 0x43, b'r', b'a', b'm', 0x41, b'0'];
            assert_eq!(has(profile, &m, &want), [vec![b"ram".to_vec(), b"0".to_vec()]]);

            // A VFS file: one element, the path.
            let vfs = ComponentId(vec![b"/nvm0/SLOT0.txt".to_vec()]);
            let m = one(profile, Some(vfs)).unwrap();
            let mut want = vec![0x02, 0x81, 0x81, 0x4f];
            want.extend_from_slice(b"/nvm0/SLOT0.txt");
            assert_eq!(has(profile, &m, &want), [vec![b"/nvm0/SLOT0.txt".to_vec()]]);
        }
    }

    #[test]
    fn component_ids_as_users_write_them() {
        let p = |s: &str| parse_component(s).map(|c| c.0);
        assert_eq!(p("ram,0").unwrap(), [b"ram".to_vec(), b"0".to_vec()]);
        assert_eq!(p(".ram.0").unwrap(), [b"ram".to_vec(), b"0".to_vec()]);
        assert_eq!(p("/nvm0/SLOT0.txt").unwrap(), [b"/nvm0/SLOT0.txt".to_vec()]);
        assert_eq!(p("h'00'").unwrap(), [vec![0u8]]);
        assert!(p("").is_err());
        assert!(p("ram,").is_err());
        assert!(p("h'0g'").is_err());
    }

    #[test]
    fn component_ids_stay_distinct_past_256_images() {
        let vendor = vendor_id("x");
        let mut b = ManifestBuilder::new(Profile::Draft37, 1, vendor, vendor);
        for i in 0..300u32 {
            b = b.image(Image::from_bytes(
                alloc::format!("coap://h/{i}"),
                &i.to_be_bytes(),
                None,
            ));
        }
        let m = b.build().unwrap();
        let ids = &m.common.components;
        assert_eq!(ids.len(), 300);
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 300, "component ids repeat");
        assert_eq!(ids[0].0, [vec![0u8]]);
        assert_eq!(ids[1].0, [vec![1u8]]);
        assert_eq!(ids[255].0, [vec![255u8]]);
        assert_eq!(ids[256].0, [vec![1u8, 0]]);
        assert_eq!(ids[299].0, [vec![1u8, 43]]);
        let bytes = m.encode(Profile::Draft37);
        assert_eq!(Manifest::decode(Profile::Draft37, &bytes).unwrap(), m);
    }

    #[test]
    fn riot09_refuses_a_sequence_number_past_32_bits() {
        let vendor = vendor_id("riot-os.org");
        let b = |seq| {
            ManifestBuilder::new(Profile::Riot09, seq, vendor, vendor)
                .image(Image::from_bytes("coap://h/a", b"a", None))
                .build()
        };
        b(u64::from(u32::MAX)).unwrap();
        let err = b(1 << 32).unwrap_err().to_string();
        assert!(err.contains("32-bit"), "{err}");
        // draft37 takes any uint.
        ManifestBuilder::new(Profile::Draft37, u64::MAX, vendor, vendor)
            .image(Image::from_bytes("coap://h/a", b"a", None))
            .build()
            .unwrap();
        // Neither can a riot09 envelope be made or signed around such a manifest.
        let mut m = b(1).unwrap();
        m.sequence_number = 1 << 32;
        assert!(Envelope::unsigned(Profile::Riot09, &m).is_err());
        let key = crate::SigningKey::generate(crate::Algorithm::Ed25519);
        assert!(Envelope::sign(Profile::Riot09, &m, &key).is_err());
    }

    #[test]
    fn a_component_id_must_be_usable() {
        assert!(one(Profile::Riot09, Some(ComponentId(vec![]))).is_err());
        assert!(one(Profile::Riot09, Some(ComponentId(vec![vec![]]))).is_err());
        let vendor = vendor_id("x");
        let two = ManifestBuilder::new(Profile::Draft37, 1, vendor, vendor)
            .image(Image::from_bytes("coap://[::1]/a", b"a", None))
            .image(Image::from_bytes("coap://[::1]/b", b"b", None))
            .component(ComponentId(vec![b"ram".to_vec()]));
        let err = two.build().unwrap_err().to_string();
        assert!(err.contains("one component"), "{err}");
    }
}
