//! Checks of an uploaded manifest against the files it describes: every image digest (and
//! the image size beside it) must be that of a file uploaded in the same publish or already
//! stored under the publish-id. Both profiles; every alternative of a try-each is checked.

use std::collections::HashMap;

use suitcase_suit::manifest::{param, CommandArg, CommandSequence, ParamValue, Severable};
use suitcase_suit::{Manifest, Profile};

/// One image a manifest describes.
#[derive(Debug, PartialEq, Eq)]
pub struct Described {
    component: usize,
    digest: [u8; 32],
    /// The image-size set in the same parameter map, or the component's only size.
    size: Option<u64>,
}

/// Every (component, digest, size) the manifest's present command sequences set.
pub fn described(manifest: &Manifest, profile: Profile) -> Result<Vec<Described>, String> {
    let mut found: Vec<(usize, &suitcase_suit::SuitDigest, Option<u64>)> = Vec::new();
    let mut sizes: HashMap<usize, Vec<u64>> = HashMap::new();
    let n = manifest.common.components.len().max(1);
    let mut seqs: Vec<&CommandSequence> = Vec::new();
    seqs.extend(manifest.common.shared_sequence.as_ref());
    for s in [&manifest.payload_fetch, &manifest.install].into_iter().flatten() {
        if let Severable::Present(s) = s {
            seqs.push(s);
        }
    }
    seqs.extend(manifest.validate.as_ref());
    seqs.extend(manifest.load.as_ref());
    seqs.extend(manifest.invoke.as_ref());
    for s in seqs {
        walk(s, n, &mut vec![0], &mut found, &mut sizes)?;
    }
    let mut out = Vec::new();
    for (component, d, size) in found {
        if d.algorithm != profile.sha256_id() {
            return Err(format!(
                "component {component}: image digest algorithm {} is not SHA-256",
                d.algorithm
            ));
        }
        let digest: [u8; 32] = d
            .bytes
            .as_slice()
            .try_into()
            .map_err(|_| format!("component {component}: image digest of {} bytes", d.bytes.len()))?;
        let size = size.or_else(|| match sizes.get(&component).map(Vec::as_slice) {
            Some([one]) => Some(*one),
            _ => None,
        });
        out.push(Described {
            component,
            digest,
            size,
        });
    }
    Ok(out)
}

/// (component, digest) pairs and sizes a manifest may set before it is refused: far more
/// than any real manifest, and a bound on the work an upload can ask for.
const MAX_DESCRIBED: usize = 4096;

fn walk<'a>(
    s: &'a CommandSequence,
    n: usize,
    current: &mut Vec<usize>,
    found: &mut Vec<(usize, &'a suitcase_suit::SuitDigest, Option<u64>)>,
    sizes: &mut HashMap<usize, Vec<u64>>,
) -> Result<(), String> {
    for c in &s.0 {
        if found.len() + sizes.len() > MAX_DESCRIBED {
            return Err(format!(
                "the manifest sets more than {MAX_DESCRIBED} image digests and sizes: refused"
            ));
        }
        match &c.arg {
            // Indices past the component list name nothing; each counts once.
            CommandArg::Index(i) => *current = i.indices(n),
            CommandArg::Params(p) => {
                let size = match p.get(param::IMAGE_SIZE) {
                    Some(ParamValue::Uint(s)) => Some(*s),
                    _ => None,
                };
                for idx in current.iter() {
                    if let Some(s) = size {
                        let v = sizes.entry(*idx).or_default();
                        if !v.contains(&s) {
                            v.push(s);
                        }
                    }
                    if let Some(ParamValue::Digest(d)) = p.get(param::IMAGE_DIGEST) {
                        if !found.iter().any(|(c, fd, fs)| c == idx && *fd == d && *fs == size) {
                            found.push((*idx, d, size));
                        }
                    }
                    if found.len() + sizes.len() > MAX_DESCRIBED {
                        return Err(format!(
                            "the manifest sets more than {MAX_DESCRIBED} image digests and sizes: refused"
                        ));
                    }
                }
            }
            CommandArg::Sequence(inner) => walk(inner, n, current, found, sizes)?,
            CommandArg::TryEach { alternatives, .. } => {
                for a in alternatives {
                    let mut cur = current.clone();
                    walk(a, n, &mut cur, found, sizes)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Check `described` against the available files (digest → size); a clear message naming
/// the first mismatch otherwise.
pub fn check(described: &[Described], files: &HashMap<[u8; 32], (String, u64)>) -> Result<(), String> {
    for d in described {
        match files.get(&d.digest) {
            None => {
                return Err(format!(
                    "the manifest's image digest {} (component {}) matches no file of this publish nor any stored under the publish-id",
                    hex::encode(d.digest),
                    d.component
                ))
            }
            Some((name, size)) => {
                if let Some(want) = d.size.filter(|w| w != size) {
                    return Err(format!(
                        "the manifest says component {} is {want} bytes, but {name} (the file with its digest) is {size} bytes",
                        d.component
                    ));
                }
            }
        }
    }
    Ok(())
}
