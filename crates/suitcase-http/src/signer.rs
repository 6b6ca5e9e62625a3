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
