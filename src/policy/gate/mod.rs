//! The supply-chain gate: which digests may be served at all. Three checks,
//! in this order, on every manifest answer (cached or not) and on blobs:
//!
//! - `blocked`: a reloadable list of digests. A blocked manifest or
//!   index, any manifest of a blocked index, and any blob that only
//!   blocked manifests reach are refused; the cached objects stay on disk.
//! - `signatures`: per upstream, repositories whose manifests need a cosign
//!   signature that verifies with a configured key.
//! - `admission`: an optional webhook that reviews each manifest before it
//!   is first served (and a blob asked for without its manifest, through
//!   the manifests that reference it).
//!
//! The gate answers `Ok` or a [`Refusal`]; the HTTP edge turns a refusal
//! into 403 `DENIED` and does the bookkeeping (metric, audit line).
//! Reference bookkeeping among cached manifests is in `graph`.

mod admission;
mod blocked;
mod graph;
mod keys;
mod signatures;

use std::path::PathBuf;
use std::sync::Arc;

pub use admission::{AdmissionError, AdmissionSettings, Review, Verdict};
pub use blocked::{BlockedList, BlockedListError};
pub use keys::{KeyError, PublicKey};
pub use signatures::{RuleError, SigReason, SignatureRules};

use crate::cache::{Cache, Manifest};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::registry::{AcceptList, Digest, Reference, RepoName};
use crate::upstream::Upstream;

/// Who asks for what: the request a check is for.
pub struct Subject<'a> {
    pub upstream: &'a Arc<Upstream>,
    pub repo: &'a RepoName,
    /// The tag the client named, when it named one.
    pub tag: Option<&'a str>,
    /// The authenticated user, when client authentication is on.
    pub user: Option<&'a str>,
}

/// Which check refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    Blocked,
    AdmissionDenied,
    SignatureInvalid(SigReason),
}

/// A refused manifest or blob, with the reason the client is told.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub digest: Digest,
    pub reason: String,
}

/// One config generation of the gate, compiled: replaced whole on reload.
#[derive(Default, Clone)]
pub struct GateSettings {
    blocked_file: Option<PathBuf>,
    blocked: Arc<BlockedList>,
    admission: Option<Arc<AdmissionSettings>>,
    signatures: Arc<SignatureRules>,
}

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("policy.blocked_digests_file: {0}")]
    Blocked(#[source] BlockedListError),
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    #[error(transparent)]
    Signatures(#[from] RuleError),
    #[error("policy.blocked_digests_file is not set")]
    NoBlockedFile,
}

impl GateSettings {
    /// Reads the blocked list and the keys, builds the webhook client.
    pub fn from_config(config: &Config) -> Result<GateSettings, GateError> {
        let blocked_file = config.policy.blocked_digests_file.clone();
        let blocked = match &blocked_file {
            Some(path) => BlockedList::load(path).map_err(GateError::Blocked)?,
            None => BlockedList::default(),
        };
        Ok(GateSettings {
            blocked_file,
            blocked: Arc::new(blocked),
            admission: config
                .admission
                .as_ref()
                .map(AdmissionSettings::build)
                .transpose()?
                .map(Arc::new),
            signatures: Arc::new(SignatureRules::from_config(config)?),
        })
    }
}

/// The gate: the current settings, and what outlives a reload (the
/// reference graph, the verdicts, the verified digests).
#[derive(Default)]
pub struct Gate {
    settings: parking_lot::RwLock<Arc<GateSettings>>,
    graph: graph::Graph,
    verdicts: admission::Verdicts,
    verified: signatures::VerifiedDigests,
}

/// What `GET /admin/signatures/...` answers.
#[derive(Debug, serde::Serialize)]
pub struct SignatureReport {
    pub verified: bool,
    /// The key file that verified it.
    pub key_file: Option<PathBuf>,
    /// missing, invalid, mismatch, unavailable; or "unsigned-repository"
    /// when no rule asks for signatures there.
    pub reason: Option<String>,
    pub detail: Option<String>,
}

impl Gate {
    pub fn new(settings: GateSettings) -> Gate {
        Gate {
            settings: parking_lot::RwLock::new(Arc::new(settings)),
            ..Gate::default()
        }
    }

    /// A reload's new settings. Verified digests are forgotten (the keys
    /// may have changed), and so are the verdicts held in memory; verdicts
    /// kept in the index stay until they expire.
    pub fn apply(&self, settings: GateSettings) {
        *self.settings.write() = Arc::new(settings);
        self.verified.clear();
        self.verdicts.clear();
    }

    /// Reads the blocked list again (`POST /admin/blocked`); a bad file is
    /// refused and the running list kept. Returns how many digests it holds.
    pub fn reload_blocked(&self) -> Result<usize, GateError> {
        let path = self
            .settings
            .read()
            .blocked_file
            .clone()
            .ok_or(GateError::NoBlockedFile)?;
        let blocked = Arc::new(BlockedList::load(&path).map_err(GateError::Blocked)?);
        let n = blocked.len();
        let mut settings = self.settings.write();
        let mut next = GateSettings::clone(&settings);
        next.blocked = blocked;
        *settings = Arc::new(next);
        drop(settings);
        tracing::warn!(file = %path.display(), digests = n, "blocked digests reloaded");
        Ok(n)
    }

    /// Every blocked digest with its reason.
    pub fn blocked_entries(&self) -> Vec<(Digest, String)> {
        self.settings.read().blocked.entries()
    }

    pub fn blocked_file(&self) -> Option<PathBuf> {
        self.settings.read().blocked_file.clone()
    }

    /// Whether the gate has anything to check for `repo` of `upstream`
    /// (so a manifest relayed uncached must be checked first).
    pub fn is_active(&self, upstream: &str, repo: &RepoName) -> bool {
        let s = self.settings.read().clone();
        !s.blocked.is_empty()
            || s.admission.is_some()
            || !s.signatures.keys_for(upstream, repo).0.is_empty()
    }

    /// Checks a manifest answer. `body` is the manifest when the answer
    /// carried it (a GET); otherwise it is read from the cache when a
    /// check needs it.
    pub async fn check_manifest(
        &self,
        cache: &Cache,
        metrics: &Metrics,
        subject: &Subject<'_>,
        digest: &Digest,
        body: Option<Arc<Manifest>>,
    ) -> Result<(), Refusal> {
        let settings = self.settings.read().clone();
        let refuse = |kind, reason: String| Refusal {
            kind,
            digest: digest.clone(),
            reason,
        };
        if !settings.blocked.is_empty() {
            if let Some(reason) = settings.blocked.reason(digest) {
                // Its children are known once it is read: refresh now, so
                // they are refused from the next request on.
                self.graph.refresh(cache).await;
                return Err(refuse(
                    RefusalKind::Blocked,
                    format!("manifest {digest} is blocked: {reason}"),
                ));
            }
            self.graph.refresh(cache).await;
            let closure = self.graph.closure(settings.blocked.digests());
            if let Some(root) = closure.get(digest) {
                let reason = settings.blocked.reason(root).unwrap_or_default();
                return Err(refuse(
                    RefusalKind::Blocked,
                    format!("manifest {digest} belongs to the blocked index {root}: {reason}"),
                ));
            }
        }
        let upstream = &*subject.upstream.name;
        let (keys, patterns) = settings.signatures.keys_for(upstream, subject.repo);
        let needs_body = !keys.is_empty() || settings.admission.is_some();
        let body = match (body, needs_body) {
            (Some(b), _) => Some(b),
            (None, false) => None,
            (None, true) => Some(self.read_manifest(cache, subject, digest).await.map_err(
                |e| {
                    refuse(
                        RefusalKind::AdmissionDenied,
                        format!("manifest {digest} could not be read for the policy checks: {e}"),
                    )
                },
            )?),
        };
        if !keys.is_empty() {
            self.check_signature(cache, subject, digest, body.as_deref(), &keys)
                .await
                .map_err(|(why, detail)| {
                    refuse(
                        RefusalKind::SignatureInvalid(why),
                        format!(
                            "{} requires a cosign signature ({}): {}: {detail}",
                            subject.repo,
                            patterns.join(", "),
                            why.label()
                        ),
                    )
                })?;
        }
        if let (Some(admission), Some(body)) = (&settings.admission, &body) {
            self.verdicts
                .decide(admission, cache, metrics, subject, body)
                .await
                .map_err(|reason| {
                    refuse(
                        RefusalKind::AdmissionDenied,
                        format!("admission denied {digest}: {reason}"),
                    )
                })?;
        }
        Ok(())
    }

    /// Checks a blob before it is served: blocked itself, or reached only
    /// through blocked manifests; and with admission on, reached by an
    /// admitted manifest.
    pub async fn check_blob(
        &self,
        cache: &Cache,
        metrics: &Metrics,
        subject: &Subject<'_>,
        digest: &Digest,
    ) -> Result<(), Refusal> {
        let settings = self.settings.read().clone();
        if settings.blocked.is_empty() && settings.admission.is_none() {
            return Ok(());
        }
        let refuse = |kind, reason: String| Refusal {
            kind,
            digest: digest.clone(),
            reason,
        };
        if let Some(reason) = settings.blocked.reason(digest) {
            return Err(refuse(
                RefusalKind::Blocked,
                format!("blob {digest} is blocked: {reason}"),
            ));
        }
        self.graph.refresh(cache).await;
        let parents = self.graph.blob_parents(digest);
        if !settings.blocked.is_empty() && !parents.is_empty() {
            let closure = self.graph.closure(settings.blocked.digests());
            if let Some(root) = parents
                .iter()
                .map(|p| closure.get(p))
                .collect::<Option<Vec<_>>>()
                .and_then(|roots| roots.first().copied())
            {
                let reason = settings.blocked.reason(root).unwrap_or_default();
                return Err(refuse(
                    RefusalKind::Blocked,
                    format!("blob {digest} is reached only through blocked manifests ({root}: {reason})"),
                ));
            }
        }
        let Some(admission) = &settings.admission else {
            return Ok(());
        };
        let upstream = &*subject.upstream.name;
        let repo = subject.repo.as_str();
        let mut denied = None;
        let mut unreviewed = Vec::new();
        for p in &parents {
            match self
                .verdicts
                .known(admission, cache, upstream, repo, p)
                .await
            {
                Some(v) if v.allowed => return Ok(()),
                Some(v) => denied = Some(v.reason.clone()),
                None => unreviewed.push(p.clone()),
            }
        }
        // A client that skips the manifest: review a cached manifest that
        // references the blob, as if it had asked for it. One review at
        // most, so the blob waits no longer than `timeout` for it.
        for p in unreviewed {
            let Ok(Some(m)) = cache.local_manifest(&p).await else {
                continue;
            };
            let s = Subject {
                tag: None,
                ..*subject
            };
            match self
                .verdicts
                .decide(admission, cache, metrics, &s, &m)
                .await
            {
                Ok(()) => return Ok(()),
                Err(reason) => denied = Some(reason),
            }
            break;
        }
        Err(refuse(
            RefusalKind::AdmissionDenied,
            match denied {
                Some(reason) => format!("admission denied every manifest that references blob {digest}: {reason}"),
                None => format!(
                    "blob {digest} is not part of an admitted image in {repo}: pull the image's manifest first"
                ),
            },
        ))
    }

    /// `GET /admin/signatures/<upstream>/<repo>@<digest>`: whether a
    /// signature for `digest` verifies with the keys `repo` requires,
    /// without serving anything (the manifest itself need not exist).
    pub async fn signature_report(
        &self,
        cache: &Cache,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
    ) -> SignatureReport {
        let settings = self.settings.read().clone();
        let (keys, _) = settings.signatures.keys_for(&upstream.name, repo);
        if keys.is_empty() {
            return SignatureReport {
                verified: false,
                key_file: None,
                reason: Some("unsigned-repository".into()),
                detail: Some(format!(
                    "no require_signatures rule of upstream {} matches {repo}",
                    upstream.name
                )),
            };
        }
        match signatures::verify(cache, upstream, repo, digest, &keys).await {
            Ok(v) => SignatureReport {
                verified: true,
                key_file: Some(v.key_file),
                reason: None,
                detail: None,
            },
            Err(r) => SignatureReport {
                verified: false,
                key_file: None,
                reason: Some(r.reason.label().into()),
                detail: Some(r.detail),
            },
        }
    }

    async fn check_signature(
        &self,
        cache: &Cache,
        subject: &Subject<'_>,
        digest: &Digest,
        body: Option<&Manifest>,
        keys: &[PublicKey],
    ) -> Result<(), (SigReason, String)> {
        let upstream = &*subject.upstream.name;
        let repo = subject.repo;
        if subject.tag.is_some_and(signatures::is_cosign_tag)
            || body.is_some_and(|m| signatures::is_signature_manifest(&m.bytes))
            || self.verified.contains(upstream, repo, digest)
        {
            return Ok(());
        }
        match signatures::verify(cache, subject.upstream, repo, digest, keys).await {
            Ok(v) => {
                tracing::debug!(upstream, repository = %repo, %digest, key = %v.key_file.display(), "signature verified");
                self.verified
                    .insert(upstream, repo, digest, body.map(|m| &m.bytes[..]));
                Ok(())
            }
            Err(own) => {
                // A platform manifest is signed through its index: one of
                // the cached indexes listing it may verify.
                if own.reason == SigReason::Missing {
                    self.graph.refresh(cache).await;
                    for parent in self.graph.manifest_parents(digest).into_iter().take(4) {
                        if self.verified.contains(upstream, repo, &parent)
                            || signatures::verify(cache, subject.upstream, repo, &parent, keys)
                                .await
                                .is_ok()
                        {
                            self.verified.insert(upstream, repo, &parent, None);
                            self.verified.insert(upstream, repo, digest, None);
                            return Ok(());
                        }
                    }
                }
                Err((own.reason, own.detail))
            }
        }
    }

    async fn read_manifest(
        &self,
        cache: &Cache,
        subject: &Subject<'_>,
        digest: &Digest,
    ) -> Result<Arc<Manifest>, String> {
        if let Ok(Some(m)) = cache.local_manifest(digest).await {
            return Ok(m);
        }
        let accept = AcceptList::from_headers(&http::HeaderMap::new());
        match cache
            .manifest(
                subject.upstream,
                subject.repo,
                &Reference::Digest(digest.clone()),
                &accept,
                false,
            )
            .await
        {
            Ok(crate::cache::ManifestAnswer::Found {
                manifest: Some(m), ..
            }) => Ok(m),
            Ok(_) => Err("no body".into()),
            Err(e) => Err(e.error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SignatureRule, UpstreamConfig};

    #[test]
    fn bad_files_are_refused_naming_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.policy.blocked_digests_file = Some(dir.path().join("absent"));
        let e = GateSettings::from_config(&config)
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("policy.blocked_digests_file: "), "{e}");

        let mut config = Config {
            upstreams: Some(vec![UpstreamConfig {
                require_signatures: vec![SignatureRule {
                    repos: vec!["team/*".into()],
                    public_key_file: dir.path().join("cosign.pub"),
                }],
                ..UpstreamConfig::new("internal", "https://registry.example")
            }]),
            default_upstream: "internal".into(),
            ..Config::default()
        };
        let e = GateSettings::from_config(&config)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("upstreams[0] (internal).require_signatures[0].public_key_file: "),
            "{e}"
        );

        let key = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/cosign/cosign.pub"
        );
        if let Some(u) = config.upstreams.as_mut() {
            u[0].require_signatures[0].public_key_file = key.into();
        }
        let settings = GateSettings::from_config(&config).unwrap();
        let team = RepoName::parse("team/app").unwrap();
        let other = RepoName::parse("other/app").unwrap();
        assert_eq!(settings.signatures.keys_for("internal", &team).0.len(), 1);
        assert!(settings
            .signatures
            .keys_for("internal", &other)
            .0
            .is_empty());
        assert!(settings
            .signatures
            .keys_for("elsewhere", &team)
            .0
            .is_empty());
    }
}
