//! Build a manifest from image facts (digest, size, URI, optional slot/offset).
//!
//! Shapes follow the draft's templates (§7, Examples 1, 3, 5) and, for [`Profile::Riot09`],
//! what RIOT's `gen_manifest.py` + suit-tool emit: one component `[h'00']` and a try-each over
//! component offsets so one manifest serves both riotboot slots.

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
        }
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
        if self.profile == Profile::Riot09 && self.reference_uri.is_some() {
            return Err(Error::Build("RIOT's draft-09 parser rejects reference-uri".into()));
        }
        let slotted = self.images.iter().filter(|i| i.slot.is_some()).count();
        if slotted != 0 && slotted != self.images.len() {
            return Err(Error::Build("either every image has a slot/offset or none has".into()));
        }
        let (common, install, validate) = if slotted > 0 || self.images.len() == 1 {
            self.one_component()
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

    /// One component `[h'00']`; several images are try-each alternatives keyed on the slot.
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
            components: vec![ComponentId(vec![vec![0]])],
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
        let components = (0..self.images.len())
            .map(|i| ComponentId(vec![vec![i as u8]]))
            .collect();
        let common = Common {
            components,
            shared_sequence: Some(shared),
            other: Vec::new(),
        };
        (common, install, validate)
    }
}

fn uri_param(uri: &str) -> Parameters {
    let mut p = Parameters::default();
    p.set(param::URI, ParamValue::Text(uri.into()));
    p
}
