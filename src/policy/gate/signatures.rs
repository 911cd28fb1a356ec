//! `require_signatures`: a manifest of a matching repository is served only
//! when a cosign signature for its digest verifies with one of the rule's
//! keys. The cosign layout, read by hand (the cryptography is ring's, in
//! `keys`):
//!
//! - the signatures of `sha256:<hex>` are the manifest at tag
//!   `sha256-<hex>.sig` in the same repository;
//! - each of its layers of media type
//!   `application/vnd.dev.cosign.simplesigning.v1+json` is a payload blob,
//!   and its annotation `dev.cosignproject.cosign/signature` is the base64
//!   signature over the blob's bytes;
//! - the payload's `critical.image.docker-manifest-digest` must be the
//!   digest being served (else it is a valid signature of another image).
//!
//! The signature manifest and payloads are read through the cache like any
//! content, so verification works offline once they are cached. A
//! platform manifest of an index whose signature verified is served on the
//! index's signature (cosign signs the digest the tag names).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures_util::StreamExt;
use globset::GlobSet;
use serde::Deserialize;

use super::keys::{KeyError, PublicKey};
use crate::cache::{Cache, ManifestAnswer, UNKNOWN_SIZE};
use crate::config::Config;
use crate::registry::{references, AcceptList, Descriptor, Digest, Reference, RepoName, Tag};
use crate::upstream::Upstream;

pub const SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The largest payload read (cosign's are a few hundred bytes).
const MAX_PAYLOAD: usize = 256 * 1024;
/// Signature layers tried per manifest.
const MAX_LAYERS: usize = 32;
/// How long a verified digest is served without verifying again.
const VERIFIED_FOR: Duration = Duration::from_secs(300);

/// Why a signature check refused: the `reason` label of
/// `regcache_signature_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigReason {
    /// No signature manifest, or one without a simplesigning layer.
    Missing,
    /// Signatures, none of which verifies with a trusted key.
    Invalid,
    /// A verified signature of another digest.
    Mismatch,
    /// The signature could not be read (upstream down and not cached).
    Unavailable,
}

impl SigReason {
    pub fn label(self) -> &'static str {
        match self {
            SigReason::Missing => "missing",
            SigReason::Invalid => "invalid",
            SigReason::Mismatch => "mismatch",
            SigReason::Unavailable => "unavailable",
        }
    }
}

/// One compiled rule.
struct Rule {
    patterns: Vec<String>,
    repos: GlobSet,
    key: PublicKey,
}

/// Every upstream's rules.
#[derive(Default)]
pub struct SignatureRules {
    by_upstream: HashMap<String, Vec<Rule>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("upstreams[{index}] ({upstream}).require_signatures[{rule}].repos: {source}")]
    Pattern {
        index: usize,
        upstream: String,
        rule: usize,
        source: crate::policy::PatternError,
    },
    #[error(
        "upstreams[{index}] ({upstream}).require_signatures[{rule}].public_key_file: {source}"
    )]
    Key {
        index: usize,
        upstream: String,
        rule: usize,
        source: KeyError,
    },
}

impl SignatureRules {
    pub fn from_config(config: &Config) -> Result<SignatureRules, RuleError> {
        let mut by_upstream = HashMap::new();
        for (index, u) in config.upstreams().iter().enumerate() {
            let mut rules = Vec::new();
            for (rule, r) in u.require_signatures.iter().enumerate() {
                let repos =
                    crate::policy::glob_set(&r.repos).map_err(|source| RuleError::Pattern {
                        index,
                        upstream: u.name.clone(),
                        rule,
                        source,
                    })?;
                let key = PublicKey::load(&r.public_key_file).map_err(|source| RuleError::Key {
                    index,
                    upstream: u.name.clone(),
                    rule,
                    source,
                })?;
                rules.push(Rule {
                    patterns: r.repos.clone(),
                    repos,
                    key,
                });
            }
            if !rules.is_empty() {
                by_upstream.insert(u.name.to_ascii_lowercase(), rules);
            }
        }
        Ok(SignatureRules { by_upstream })
    }

    /// The keys that may sign `repo` of `upstream`, with the patterns that
    /// asked for them; empty when no rule matches.
    pub fn keys_for(&self, upstream: &str, repo: &RepoName) -> (Vec<PublicKey>, Vec<String>) {
        let mut keys = Vec::new();
        let mut patterns = Vec::new();
        for r in self
            .by_upstream
            .get(&upstream.to_ascii_lowercase())
            .into_iter()
            .flatten()
            .filter(|r| r.repos.is_match(repo.as_str()))
        {
            keys.push(r.key.clone());
            patterns.extend(r.patterns.iter().cloned());
        }
        (keys, patterns)
    }

    pub fn is_empty(&self) -> bool {
        self.by_upstream.is_empty()
    }
}

/// Whether a tag is one of cosign's own (`sha256-<hex>.sig`, `.att`,
/// `.sbom`): those are read to verify, and need no signature themselves.
pub fn is_cosign_tag(tag: &str) -> bool {
    let Some(rest) = tag.strip_prefix("sha256-") else {
        return false;
    };
    let Some((hex, suffix)) = rest.split_once('.') else {
        return false;
    };
    hex.len() == 64
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
        && matches!(suffix, "sig" | "att" | "sbom")
}

/// Whether a manifest is a signature manifest: every layer simplesigning.
pub fn is_signature_manifest(bytes: &[u8]) -> bool {
    match references(bytes) {
        Ok(r) => {
            r.manifests.is_empty()
                && r.blobs.len() > 1
                && r.blobs[1..]
                    .iter()
                    .all(|b| b.media_type.as_deref() == Some(SIMPLESIGNING))
        }
        Err(_) => false,
    }
}

#[derive(Deserialize)]
struct SigManifest {
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    image: Image,
}

#[derive(Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// A verified signature: the key file that verified it.
#[derive(Debug, Clone)]
pub struct Verified {
    pub key_file: PathBuf,
}

/// A refused check: the reason and what was found.
#[derive(Debug, Clone)]
pub struct SigRefusal {
    pub reason: SigReason,
    pub detail: String,
}

/// The digests verified lately, per (upstream, repository).
pub struct VerifiedDigests {
    memory: moka::sync::Cache<String, ()>,
}

impl Default for VerifiedDigests {
    fn default() -> Self {
        VerifiedDigests {
            memory: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(VERIFIED_FOR)
                .build(),
        }
    }
}

fn key(upstream: &str, repo: &RepoName, digest: &Digest) -> String {
    format!("{upstream}\0{repo}\0{}", digest.hex())
}

impl VerifiedDigests {
    pub fn clear(&self) {
        self.memory.invalidate_all();
    }

    pub fn contains(&self, upstream: &str, repo: &RepoName, digest: &Digest) -> bool {
        self.memory.contains_key(&key(upstream, repo, digest))
    }

    /// Notes `digest` verified, and the platform manifests it lists.
    pub fn insert(&self, upstream: &str, repo: &RepoName, digest: &Digest, body: Option<&[u8]>) {
        self.memory.insert(key(upstream, repo, digest), ());
        if let Some(r) = body.and_then(|b| references(b).ok()) {
            for child in r.manifests.iter().filter_map(Descriptor::digest) {
                self.memory.insert(key(upstream, repo, &child), ());
            }
        }
    }
}

/// Looks for a cosign signature of `digest` in `repo` that verifies with
/// one of `keys` and names `digest`.
pub async fn verify(
    cache: &Cache,
    upstream: &Arc<Upstream>,
    repo: &RepoName,
    digest: &Digest,
    keys: &[PublicKey],
) -> Result<Verified, SigRefusal> {
    let refusal = |reason, detail: String| SigRefusal { reason, detail };
    let tag_name = format!("sha256-{}.sig", digest.hex());
    let tag = Tag::parse(&tag_name).map_err(|e| refusal(SigReason::Missing, e.to_string()))?;
    let accept = AcceptList::from_headers(&http::HeaderMap::new());
    let sig_manifest = match cache
        .manifest(upstream, repo, &Reference::Tag(tag), &accept, false)
        .await
    {
        Ok(ManifestAnswer::Found {
            manifest: Some(m), ..
        }) => m,
        Ok(_) => {
            return Err(refusal(
                SigReason::Unavailable,
                format!("the signature manifest at tag {tag_name} could not be read"),
            ))
        }
        Err(e) if e.error.is_not_found() => {
            return Err(refusal(
                SigReason::Missing,
                format!("no cosign signature (no manifest at tag {tag_name})"),
            ))
        }
        Err(e) => {
            return Err(refusal(
                SigReason::Unavailable,
                format!("reading the signature at tag {tag_name}: {}", e.error),
            ))
        }
    };
    let layers: Vec<Descriptor> = serde_json::from_slice::<SigManifest>(&sig_manifest.bytes)
        .map(|m| m.layers)
        .unwrap_or_default()
        .into_iter()
        .filter(|l| l.media_type.as_deref() == Some(SIMPLESIGNING))
        .take(MAX_LAYERS)
        .collect();
    if layers.is_empty() {
        return Err(refusal(
            SigReason::Missing,
            format!("the manifest at tag {tag_name} has no {SIMPLESIGNING} layer"),
        ));
    }
    let mut found = SigReason::Missing;
    let mut details = Vec::new();
    for layer in &layers {
        let Some(signature) = layer
            .annotations
            .as_ref()
            .and_then(|a| a.get(SIGNATURE_ANNOTATION))
        else {
            details.push(format!(
                "layer {} has no signature annotation",
                layer.digest
            ));
            continue;
        };
        // cosign wraps long base64 at times: whitespace is no part of it.
        let compact: String = signature.chars().filter(|c| !c.is_whitespace()).collect();
        let Ok(signature) = base64::engine::general_purpose::STANDARD.decode(compact) else {
            found = found.max_with(SigReason::Invalid);
            details.push(format!(
                "layer {}: the signature is not base64",
                layer.digest
            ));
            continue;
        };
        let Some(payload_digest) = layer.digest() else {
            details.push(format!("layer {}: not a sha256 digest", layer.digest));
            continue;
        };
        let payload = match read_payload(cache, upstream, repo, &payload_digest).await {
            Ok(p) => p,
            Err(e) => {
                found = found.max_with(SigReason::Unavailable);
                details.push(format!("payload {payload_digest}: {e}"));
                continue;
            }
        };
        let Some(key) = keys.iter().find(|k| k.verifies(&payload, &signature)) else {
            found = found.max_with(SigReason::Invalid);
            details.push(format!(
                "the signature over payload {payload_digest} verifies with none of the trusted keys"
            ));
            continue;
        };
        let named = serde_json::from_slice::<Payload>(&payload)
            .map(|p| p.critical.image.docker_manifest_digest)
            .unwrap_or_default();
        if named == digest.to_string() {
            return Ok(Verified {
                key_file: key.file.clone(),
            });
        }
        found = found.max_with(SigReason::Mismatch);
        details.push(format!(
            "payload {payload_digest} is signed but names {named:?}, not {digest}"
        ));
    }
    Err(refusal(found, details.join("; ")))
}

impl SigReason {
    /// The more telling of two reasons: a signature of another image says
    /// more than a bad one, a bad one more than an unreadable one.
    fn max_with(self, other: SigReason) -> SigReason {
        let rank = |r: SigReason| match r {
            SigReason::Missing => 0,
            SigReason::Unavailable => 1,
            SigReason::Invalid => 2,
            SigReason::Mismatch => 3,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

/// A payload blob, whole, through the cache.
async fn read_payload(
    cache: &Cache,
    upstream: &Arc<Upstream>,
    repo: &RepoName,
    digest: &Digest,
) -> Result<Vec<u8>, String> {
    let answer = cache
        .blob(upstream, repo, digest, false)
        .await
        .map_err(|e| e.error.to_string())?;
    if answer.size.is_some_and(|s| s > MAX_PAYLOAD as u64) {
        return Err(format!("larger than {MAX_PAYLOAD} bytes"));
    }
    let Some(body) = answer.body else {
        return Err("no body".into());
    };
    let end = answer.size.unwrap_or(UNKNOWN_SIZE);
    let mut stream = std::pin::pin!(body.stream(0, end));
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        if out.len() + chunk.len() > MAX_PAYLOAD {
            return Err(format!("larger than {MAX_PAYLOAD} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosign_tags_and_signature_manifests_are_recognised() {
        let hex = "f3cfc9d0dbf931d3db4685ec659b7ac68e2a578219da4aae65427886e649b06b";
        assert!(is_cosign_tag(&format!("sha256-{hex}.sig")));
        assert!(is_cosign_tag(&format!("sha256-{hex}.att")));
        assert!(!is_cosign_tag(&format!("sha256-{hex}.exe")));
        assert!(!is_cosign_tag("sha256-abc.sig"));
        assert!(!is_cosign_tag("v1.0"));
        let d = format!("sha256:{hex}");
        let sig = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{d}","size":1}},"layers":[{{"mediaType":"{SIMPLESIGNING}","digest":"{d}","size":2,"annotations":{{"{SIGNATURE_ANNOTATION}":"MEUC"}}}}]}}"#
        );
        assert!(is_signature_manifest(sig.as_bytes()));
        let image = sig.replace(SIMPLESIGNING, "application/vnd.oci.image.layer.v1.tar+gzip");
        assert!(!is_signature_manifest(image.as_bytes()));
    }

    #[test]
    fn the_most_telling_reason_wins() {
        assert_eq!(
            SigReason::Missing.max_with(SigReason::Invalid),
            SigReason::Invalid
        );
        assert_eq!(
            SigReason::Mismatch.max_with(SigReason::Invalid),
            SigReason::Mismatch
        );
        assert_eq!(
            SigReason::Invalid.max_with(SigReason::Unavailable),
            SigReason::Invalid
        );
    }
}
