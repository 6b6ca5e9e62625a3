//! The server's signing identity: key, vendor id, and how it builds manifests.

use suitcase_store::{Draft, NewManifest};
use suitcase_suit::{builder, Envelope, Image, ManifestBuilder, Profile, SigningKey};

use crate::ApiError;

/// Builds and signs manifests for publishes that bring none.
pub struct Signer {
    key: SigningKey,
    vendor_domain: String,
}

impl Signer {
    /// A signer with `key` for vendor `vendor_domain` (vendor-id = UUID5(DNS, domain)).
    pub fn new(key: SigningKey, vendor_domain: impl Into<String>) -> Self {
        Signer {
            key,
            vendor_domain: vendor_domain.into(),
        }
    }

    /// The public key, PEM.
    pub fn public_key_pem(&self) -> Result<String, ApiError> {
        self.key.verifying_key().to_public_key_pem().map_err(ApiError::internal)
    }

    /// Build and sign the manifest of `draft`: one component per file, URIs pointing at the
    /// version's immutable CoAP paths, sequence number = max(highest ever + 1, now), where
    /// "highest ever" counts removed versions too (their manifests may be on devices).
    pub fn build(&self, draft: &Draft<'_>, coap_base: &str, class: &str) -> Result<NewManifest, String> {
        let sequence_number = match draft.max_sequence_number {
            None => draft.now,
            Some(n) => n
                .checked_add(1)
                .ok_or("the manifest sequence numbers of this publish-id are exhausted (2^64 - 1 was used)")?
                .max(draft.now),
        };
        let vendor = builder::vendor_id(&self.vendor_domain);
        let class = builder::class_id(&vendor, class);
        let mut b = ManifestBuilder::new(Profile::Draft37, sequence_number, vendor, class);
        for entry in draft.files {
            let uri = format!(
                "{coap_base}/{}",
                suitcase_store::paths::version_file_path(draft.publish_id, draft.seq, &entry.name)
            );
            b = b.image(Image {
                uri,
                sha256: entry.sha256.0,
                size: entry.size,
                slot: None,
            });
        }
        let manifest = b.build().map_err(|e| e.to_string())?;
        let envelope = Envelope::sign(Profile::Draft37, &manifest, &self.key).map_err(|e| e.to_string())?;
        Ok(NewManifest {
            name: format!("manifest.{}.suit", draft.seq),
            data: envelope.encode().into(),
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
                .build(&draft(max, &files), "coap://[::1]", "c")
                .map(|m| m.sequence_number)
        };
        assert_eq!(seq(None).unwrap(), Some(1_700_000_000));
        assert_eq!(seq(Some(5)).unwrap(), Some(1_700_000_000), "the clock is ahead");
        // A removed version's uploaded manifest had 9,999,999,999: start above it.
        assert_eq!(seq(Some(9_999_999_999)).unwrap(), Some(10_000_000_000));
        let err = seq(Some(u64::MAX)).unwrap_err();
        assert!(err.contains("exhausted"), "{err}");
        let m = signer.build(&draft(None, &files), "coap://[::1]", "c").unwrap();
        let env = Envelope::decode(&m.data).unwrap();
        assert_eq!(env.manifest().sequence_number, 1_700_000_000);
    }
}
