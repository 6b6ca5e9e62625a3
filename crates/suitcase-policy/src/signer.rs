//! The server's signing identity: key, vendor id, and how it builds manifests.

use suitcase_store::{Draft, NewManifest};
use suitcase_suit::manifest::ComponentId;
use suitcase_suit::{builder, Algorithm, Envelope, Image, ManifestBuilder, Profile, SigningKey};

/// RIOT's `SUIT_MANIFEST_BUFSIZE`: the largest manifest a RIOT device fetches.
pub const RIOT_MAX_MANIFEST: usize = 640;
/// RIOT's `CONFIG_SOCK_URLPATH_MAXLEN` (128, set by `suit.inc.mk`) holds a URL and its NUL.
pub const RIOT_MAX_URL: usize = 127;
/// RIOT's default vendor domain (`SUIT_VENDOR`).
pub const RIOT_VENDOR_DOMAIN: &str = "riot-os.org";

/// What a publish asks of the manifest the server builds.
#[derive(Clone, Debug)]
pub struct BuildRequest {
    /// The wire profile.
    pub profile: Profile,
    /// The device class (class-id = UUID5(vendor-id, class)); `None`: the publish-id, or for
    /// riot09 its last segment (RIOT's publish-ids are `fw/<app>/<board>` and its class is
    /// the board).
    pub class: Option<String>,
    /// The vendor domain; `None`: the server's (for riot09, its RIOT vendor domain).
    pub vendor_domain: Option<String>,
    /// The component id; `None`: one per file for draft37, `[h'00']` (riotboot) for riot09.
    pub component: Option<ComponentId>,
}

impl Default for BuildRequest {
    fn default() -> Self {
        BuildRequest {
            profile: Profile::Draft37,
            class: None,
            vendor_domain: None,
            component: None,
        }
    }
}

/// Builds and signs manifests for publishes that bring none.
pub struct Signer {
    key: SigningKey,
    vendor_domain: String,
    riot_vendor_domain: String,
}

impl Signer {
    /// A signer with `key` for vendor `vendor_domain` (vendor-id = UUID5(DNS, domain)); riot09
    /// manifests use RIOT's default vendor domain, `riot-os.org`, unless
    /// [`Signer::with_riot_vendor_domain`] says otherwise.
    pub fn new(key: SigningKey, vendor_domain: impl Into<String>) -> Self {
        Signer {
            key,
            vendor_domain: vendor_domain.into(),
            riot_vendor_domain: RIOT_VENDOR_DOMAIN.into(),
        }
    }

    /// The vendor domain of riot09 manifests (RIOT's `SUIT_VENDOR`).
    pub fn with_riot_vendor_domain(mut self, domain: impl Into<String>) -> Self {
        self.riot_vendor_domain = domain.into();
        self
    }

    /// Why this server cannot sign for `profile`, if it cannot.
    pub fn refuses(&self, profile: Profile) -> Option<String> {
        (profile == Profile::Riot09 && self.key.algorithm() != Algorithm::Ed25519).then(|| {
            "profile riot09: RIOT verifies Ed25519 signatures only, and this server's signing key is P-256; \
             start it with an Ed25519 key (--key, `suitcase keygen --alg ed25519`) or upload a manifest signed offline"
                .to_string()
        })
    }

    /// The public key, PEM.
    pub fn public_key_pem(&self) -> Result<String, suitcase_suit::Error> {
        self.key.verifying_key().to_public_key_pem()
    }

    /// Build and sign the manifest of `draft`: one component per file (riot09: one image in
    /// one component), URIs pointing at the version's immutable CoAP paths, sequence number =
    /// max(highest ever + 1, now), where "highest ever" counts removed versions too (their
    /// manifests may be on devices).
    ///
    /// riot09 adds RIOT's limits: an Ed25519 key, a 32-bit sequence number, URLs of at most
    /// [`RIOT_MAX_URL`] bytes, at most [`RIOT_MAX_MANIFEST`] bytes of manifest; the manifest is
    /// stored as `riot.suit.<seq>.bin`, so `riot.suit.latest.bin` names the newest.
    pub fn build(&self, draft: &Draft<'_>, coap_base: &str, req: &BuildRequest) -> Result<NewManifest, String> {
        let riot = req.profile == Profile::Riot09;
        if let Some(why) = self.refuses(req.profile) {
            return Err(why);
        }
        let sequence_number = match draft.max_sequence_number {
            None => draft.now,
            Some(n) => n
                .checked_add(1)
                .ok_or("the manifest sequence numbers of this publish-id are exhausted (2^64 - 1 was used)")?
                .max(draft.now),
        };
        if riot && sequence_number > u64::from(u32::MAX) {
            return Err(format!(
                "profile riot09: the sequence number would be {sequence_number}, but RIOT's is 32-bit (at most {}); \
                 the publish-id already had a manifest numbered {} — use a new publish-id",
                u32::MAX,
                draft.max_sequence_number.unwrap_or_default()
            ));
        }
        if riot && draft.files.len() != 1 {
            return Err(format!(
                "profile riot09: RIOT installs one image per manifest, this publish has {} files",
                draft.files.len()
            ));
        }
        let domain = match (&req.vendor_domain, riot) {
            (Some(d), _) => d.as_str(),
            (None, true) => self.riot_vendor_domain.as_str(),
            (None, false) => self.vendor_domain.as_str(),
        };
        let class = match (&req.class, riot) {
            (Some(c), _) => c.as_str(),
            (None, true) => draft.publish_id.rsplit('/').next().unwrap_or(draft.publish_id),
            (None, false) => draft.publish_id,
        };
        let vendor = builder::vendor_id(domain);
        let class = builder::class_id(&vendor, class);
        let mut b = ManifestBuilder::new(req.profile, sequence_number, vendor, class);
        if let Some(c) = &req.component {
            b = b.component(c.clone());
        }
        for entry in draft.files {
            let uri = format!(
                "{coap_base}/{}",
                suitcase_store::paths::version_file_path(draft.publish_id, draft.seq, &entry.name)
            );
            if riot && uri.len() > RIOT_MAX_URL {
                return Err(format!(
                    "profile riot09: the image URL {uri} is {} bytes, RIOT takes at most {RIOT_MAX_URL} \
                     (CONFIG_SOCK_URLPATH_MAXLEN); use a shorter publish-id, file name or --coap-url",
                    uri.len()
                ));
            }
            b = b.image(Image {
                uri,
                sha256: entry.sha256.0,
                size: entry.size,
                slot: None,
            });
        }
        let manifest = b.build().map_err(|e| e.to_string())?;
        let envelope = Envelope::sign(req.profile, &manifest, &self.key).map_err(|e| e.to_string())?;
        let data = envelope.encode();
        let name = if riot {
            // The URLs a trigger sends (riot.suit.latest.bin or this one by its number): each
            // and its NUL fit RIOT's URL buffer too.
            let name = format!("riot.suit.{sequence_number}.bin");
            let longer = if name.len() > "riot.suit.latest.bin".len() {
                name.as_str()
            } else {
                "riot.suit.latest.bin"
            };
            let trigger = format!("{coap_base}/{}/{longer}", draft.publish_id);
            if trigger.len() > RIOT_MAX_URL - 1 {
                return Err(format!(
                    "profile riot09: the trigger URL {trigger} is {} bytes, RIOT takes at most {} and a NUL \
                     (CONFIG_SOCK_URLPATH_MAXLEN); use a shorter publish-id or --coap-url",
                    trigger.len(),
                    RIOT_MAX_URL - 1
                ));
            }
            if data.len() > RIOT_MAX_MANIFEST {
                return Err(format!(
                    "profile riot09: the signed manifest is {} bytes, RIOT fetches at most {RIOT_MAX_MANIFEST} \
                     (SUIT_MANIFEST_BUFSIZE); shorten the URLs",
                    data.len()
                ));
            }
            name
        } else {
            format!("manifest.{}.suit", draft.seq)
        };
        Ok(NewManifest {
            name,
            data: data.into(),
            sequence_number: Some(sequence_number),
            server_built: true,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use suitcase_store::{FileEntry, Sha256};

    fn draft(max: Option<u64>, files: &[FileEntry]) -> Draft<'_> {
        Draft {
            publish_id: "fw/app",
            seq: 3,
            previous: None,
            max_sequence_number: max,
            files,
            now: 1_700_000_000,
        }
    }

    #[test]
    fn sequence_numbers_start_above_every_removed_one_and_never_overflow() {
        let signer = Signer::new(SigningKey::generate(suitcase_suit::Algorithm::Ed25519), "example.org");
        let files = [FileEntry {
            name: "a.bin".into(),
            sha256: Sha256::of(b"a"),
            size: 1,
        }];
        let seq = |max| {
            signer
                .build(&draft(max, &files), "coap://[::1]", &BuildRequest::default())
                .map(|m| m.sequence_number)
        };
        assert_eq!(seq(None).unwrap(), Some(1_700_000_000));
        assert_eq!(seq(Some(5)).unwrap(), Some(1_700_000_000), "the clock is ahead");
        // A removed version's uploaded manifest had 9,999,999,999: start above it.
        assert_eq!(seq(Some(9_999_999_999)).unwrap(), Some(10_000_000_000));
        let err = seq(Some(u64::MAX)).unwrap_err();
        assert!(err.contains("exhausted"), "{err}");
        let m = signer
            .build(&draft(None, &files), "coap://[::1]", &BuildRequest::default())
            .unwrap();
        let env = Envelope::decode(&m.data).unwrap();
        assert_eq!(env.manifest().sequence_number, 1_700_000_000);
    }

    fn riot() -> BuildRequest {
        BuildRequest {
            profile: Profile::Riot09,
            class: Some("native64".into()),
            vendor_domain: None,
            component: Some(builder::parse_component("/nvm0/SLOT0.txt").unwrap()),
        }
    }

    #[test]
    fn riot09_manifests_are_what_a_riot_device_checks() {
        let key = SigningKey::generate(suitcase_suit::Algorithm::Ed25519);
        let signer = Signer::new(key.clone(), "example.org");
        let files = [FileEntry {
            name: "image.bin".into(),
            sha256: Sha256::of(b"a"),
            size: 1,
        }];
        let m = signer
            .build(&draft(Some(5), &files), "coap://[::1]:5683", &riot())
            .unwrap();
        assert_eq!(m.name, "riot.suit.1700000000.bin");
        assert!(m.data.len() <= RIOT_MAX_MANIFEST);
        let env = Envelope::decode(&m.data).unwrap();
        assert_eq!(env.profile(), Profile::Riot09);
        let v = env.verify(&key.verifying_key()).unwrap();
        let man = v.manifest();
        assert_eq!(man.common.components[0].0, [b"/nvm0/SLOT0.txt".to_vec()]);
        // RIOT's vendor domain by default; the class from the request.
        let vendor = builder::vendor_id("riot-os.org");
        let params = man.component_parameters();
        let p = &params[0].1;
        use suitcase_suit::manifest::{param, ParamValue};
        assert_eq!(p.get(param::VENDOR_ID), Some(&ParamValue::Bytes(vendor.to_vec())));
        assert_eq!(
            p.get(param::CLASS_ID),
            Some(&ParamValue::Bytes(builder::class_id(&vendor, "native64").to_vec()))
        );
        assert_eq!(
            p.get(param::URI),
            Some(&ParamValue::Text("coap://[::1]:5683/fw/app/v/3/image.bin".into()))
        );
        // Without a class: the publish-id's last segment (RIOT's fw/<app>/<board>).
        let no_class = BuildRequest { class: None, ..riot() };
        let m = signer.build(&draft(None, &files), "coap://[::1]", &no_class).unwrap();
        let env = Envelope::decode(&m.data).unwrap();
        assert_eq!(
            env.manifest().component_parameters()[0].1.get(param::CLASS_ID),
            Some(&ParamValue::Bytes(builder::class_id(&vendor, "app").to_vec()))
        );
    }

    #[test]
    fn riot09_refuses_what_riot_cannot_take() {
        let files = [FileEntry {
            name: "image.bin".into(),
            sha256: Sha256::of(b"a"),
            size: 1,
        }];
        let ed = Signer::new(SigningKey::generate(suitcase_suit::Algorithm::Ed25519), "example.org");
        let err =
            |signer: &Signer, max, base: &str, files| signer.build(&draft(max, files), base, &riot()).unwrap_err();
        // A 64-bit sequence number.
        let e = err(&ed, Some(u64::from(u32::MAX)), "coap://[::1]", &files);
        assert!(e.contains("32-bit"), "{e}");
        // A P-256 key.
        let p256 = Signer::new(SigningKey::generate(suitcase_suit::Algorithm::Es256), "example.org");
        let e = err(&p256, None, "coap://[::1]", &files);
        assert!(e.contains("Ed25519"), "{e}");
        assert!(p256.refuses(Profile::Riot09).is_some() && p256.refuses(Profile::Draft37).is_none());
        // A URL longer than RIOT's buffer.
        let long = format!("coap://{}", "h".repeat(120));
        let e = err(&ed, None, &long, &files);
        assert!(e.contains("at most 127"), "{e}");
        // Two files.
        let two = [files[0].clone(), files[0].clone()];
        let e = err(&ed, None, "coap://[::1]", &two);
        assert!(e.contains("one image"), "{e}");
    }
}
