//! The admission webhook: before a manifest is first served, regcache POSTs
//! a review of it to `[admission] url` and serves it only if the answer is
//! `{"allowed": true}`. Verdicts are kept per (upstream, repository,
//! digest) for `cache_verdicts`, in memory and in the index (so a restart
//! does not review everything again); an index's verdict is its platform
//! manifests' too. Concurrent requests for one manifest share one review.
//! A review that fails — no answer within `timeout`, a status other than
//! 200, a body that is no verdict — is decided by `on_error`, and is not
//! kept: the next request asks again.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Subject;
use crate::cache::storage::index::now_millis;
use crate::cache::{Cache, Manifest};
use crate::config::{AdmissionConfig, OnError};
use crate::metrics::Metrics;
use crate::registry::{references, AcceptList, Descriptor, Digest, Reference};

/// The largest verdict body read.
const MAX_ANSWER: usize = 64 * 1024;
/// Platform manifests of an index whose layers a review lists.
const MAX_CHILDREN: usize = 16;
/// Verdicts kept in memory (the index keeps all of them).
const MEMORY_VERDICTS: u64 = 100_000;

/// `[admission]`, compiled: the client that sends reviews.
pub struct AdmissionSettings {
    url: reqwest::Url,
    timeout: Duration,
    on_error: OnError,
    keep: Duration,
    client: reqwest::Client,
}

#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error("admission.url: {0}")]
    Url(String),
    #[error("admission: building its HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

impl AdmissionSettings {
    pub fn build(config: &AdmissionConfig) -> Result<AdmissionSettings, AdmissionError> {
        let url: reqwest::Url = config
            .url
            .parse()
            .map_err(|e| AdmissionError::Url(format!("{:?}: {e}", config.url)))?;
        let timeout = config.timeout.get();
        // The webhook is the one host the config names: a redirect is an
        // answer of its own (an error), never followed elsewhere.
        // The whole exchange is bounded by `timeout` around it (see
        // `review`), so a hung webhook is told apart from a refused one.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .build()
            .map_err(AdmissionError::Client)?;
        Ok(AdmissionSettings {
            url,
            timeout,
            on_error: config.on_error,
            keep: config.cache_verdicts.get(),
            client,
        })
    }
}

/// A decided review, as kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    pub allowed: bool,
    pub reason: String,
    /// When it was decided, unix milliseconds.
    pub at: u64,
}

/// What the webhook receives.
#[derive(Debug, Serialize)]
pub struct Review {
    pub upstream: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: String,
    pub media_type: String,
    /// `os/arch[/variant]` of an index's manifests.
    pub platforms: Vec<String>,
    /// The image's config and layers (for an index, those of its platform
    /// manifests, as far as they could be read within `timeout`).
    pub layers: Vec<Layer>,
    /// An index's platform manifests.
    pub manifests: Vec<Child>,
    /// The client's user, when client authentication is on.
    pub user: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Layer {
    pub digest: String,
    pub size: u64,
    pub media_type: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Child {
    pub digest: String,
    pub media_type: Option<String>,
    pub platform: Option<String>,
}

/// What the webhook answers.
#[derive(Debug, Deserialize)]
struct Answer {
    allowed: bool,
    #[serde(default)]
    reason: String,
}

#[derive(Debug, Clone, thiserror::Error)]
enum ReviewError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
}

/// The verdicts in memory, with their single flights.
pub struct Verdicts {
    memory: moka::future::Cache<String, Arc<Verdict>>,
}

impl Default for Verdicts {
    fn default() -> Self {
        Verdicts {
            memory: moka::future::Cache::builder()
                .max_capacity(MEMORY_VERDICTS)
                .build(),
        }
    }
}

fn key(upstream: &str, repo: &str, digest: &Digest) -> String {
    format!("{upstream}\0{repo}\0{}", digest.hex())
}

fn record_key(key: &str) -> String {
    format!("admission:{key}")
}

impl Verdicts {
    /// Forgets the verdicts held in memory (a reload that changed the
    /// webhook); those in the index stay, until they expire.
    pub fn clear(&self) {
        self.memory.invalidate_all();
    }

    /// `Ok` to serve `manifest`, `Err(reason)` to refuse it.
    pub async fn decide(
        &self,
        settings: &AdmissionSettings,
        cache: &Cache,
        metrics: &Metrics,
        subject: &Subject<'_>,
        manifest: &Manifest,
    ) -> Result<(), String> {
        let upstream = &*subject.upstream.name;
        let k = key(upstream, subject.repo.as_str(), &manifest.digest);
        // Two rounds at most: a kept verdict found expired is dropped and
        // the manifest reviewed again.
        for _ in 0..2 {
            let found = self
                .memory
                .try_get_with(k.clone(), async {
                    if let Some(v) = self.kept(settings, cache, &k) {
                        return Ok(Arc::new(v));
                    }
                    let verdict = review(settings, cache, metrics, subject, manifest).await?;
                    self.keep(cache, &k, &verdict);
                    self.inherit(cache, subject, manifest, &verdict).await;
                    Ok::<_, ReviewError>(Arc::new(verdict))
                })
                .await;
            match found {
                Ok(v) if fresh(settings, &v) => {
                    return if v.allowed {
                        Ok(())
                    } else {
                        Err(v.reason.clone())
                    }
                }
                Ok(_) => self.memory.invalidate(&k).await,
                Err(e) => {
                    return match settings.on_error {
                        OnError::Allow => {
                            tracing::warn!(upstream, repository = %subject.repo, digest = %manifest.digest, error = %e, "admission review failed; serving (on_error = allow)");
                            Ok(())
                        }
                        OnError::Deny => Err(format!(
                            "the admission review failed ({e}) and on_error is deny"
                        )),
                    }
                }
            }
        }
        Err("the admission verdict expired while it was read; try again".into())
    }

    /// The verdict already decided for (upstream, repository, digest), if
    /// any and fresh, without reviewing.
    pub async fn known(
        &self,
        settings: &AdmissionSettings,
        cache: &Cache,
        upstream: &str,
        repo: &str,
        digest: &Digest,
    ) -> Option<Arc<Verdict>> {
        let k = key(upstream, repo, digest);
        if let Some(v) = self.memory.get(&k).await.filter(|v| fresh(settings, v)) {
            return Some(v);
        }
        let v = Arc::new(self.kept(settings, cache, &k)?);
        self.memory.insert(k, v.clone()).await;
        Some(v)
    }

    fn kept(&self, settings: &AdmissionSettings, cache: &Cache, k: &str) -> Option<Verdict> {
        cache
            .policy_record::<Verdict>(&record_key(k))
            .unwrap_or_else(|e| {
                tracing::debug!(error = %e, "reading a kept admission verdict failed");
                None
            })
            .filter(|v| fresh(settings, v))
    }

    fn keep(&self, cache: &Cache, k: &str, verdict: &Verdict) {
        if let Err(e) = cache.set_policy_record(&record_key(k), verdict) {
            tracing::warn!(error = %e, "keeping an admission verdict failed; it holds in memory only");
        }
    }

    /// An index's verdict is its platform manifests' (the review listed
    /// them), so a pull by tag costs one review, not one per platform.
    async fn inherit(
        &self,
        cache: &Cache,
        subject: &Subject<'_>,
        manifest: &Manifest,
        verdict: &Verdict,
    ) {
        let Ok(refs) = references(&manifest.bytes) else {
            return;
        };
        for child in refs.manifests.iter().filter_map(Descriptor::digest) {
            let k = key(&subject.upstream.name, subject.repo.as_str(), &child);
            self.keep(cache, &k, verdict);
            self.memory.insert(k, Arc::new(verdict.clone())).await;
        }
    }
}

fn fresh(settings: &AdmissionSettings, v: &Verdict) -> bool {
    now_millis().saturating_sub(v.at) < settings.keep.as_millis() as u64
}

/// Sends one review and reads its verdict, all within `timeout`.
async fn review(
    settings: &AdmissionSettings,
    cache: &Cache,
    metrics: &Metrics,
    subject: &Subject<'_>,
    manifest: &Manifest,
) -> Result<Verdict, ReviewError> {
    let upstream = &*subject.upstream.name;
    let counted = |verdict: &str| {
        metrics
            .admission_reviews
            .with_label_values(&[upstream, verdict])
            .inc()
    };
    let started = tokio::time::Instant::now();
    let body = describe(settings, cache, subject, manifest).await;
    let left = settings.timeout.saturating_sub(started.elapsed());
    let sent = tokio::time::timeout(left, async {
        let response = settings
            .client
            .post(settings.url.clone())
            .json(&body)
            .send()
            .await
            .map_err(|e| ReviewError::Failed(format!("sending the review: {e}")))?;
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            return Err(ReviewError::Failed(format!(
                "the webhook answered {status}, not 200"
            )));
        }
        let bytes = read_bounded(response).await?;
        serde_json::from_slice::<Answer>(&bytes).map_err(|e| {
            ReviewError::Failed(format!(
                "the answer is not {{\"allowed\": bool, \"reason\": \"...\"}}: {e}"
            ))
        })
    })
    .await
    .unwrap_or(Err(ReviewError::Timeout(settings.timeout)));
    match sent {
        Ok(answer) => {
            counted(if answer.allowed { "allowed" } else { "denied" });
            let reason = if answer.reason.is_empty() && !answer.allowed {
                "denied by the admission webhook".to_owned()
            } else {
                answer.reason
            };
            tracing::info!(upstream, repository = %subject.repo, digest = %manifest.digest, allowed = answer.allowed, reason = %reason, "admission verdict");
            Ok(Verdict {
                allowed: answer.allowed,
                reason,
                at: now_millis(),
            })
        }
        Err(e) => {
            counted("error");
            Err(e)
        }
    }
}

async fn read_bounded(mut response: reqwest::Response) -> Result<Bytes, ReviewError> {
    let mut out = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ReviewError::Failed(format!("reading the answer: {e}")))?
    {
        if out.len() + chunk.len() > MAX_ANSWER {
            return Err(ReviewError::Failed(format!(
                "the answer is larger than {MAX_ANSWER} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.into())
}

/// The review of `manifest`. An index's platform manifests are read
/// through the cache (as the client is about to) for their layers, as far
/// as half the budget allows.
async fn describe(
    settings: &AdmissionSettings,
    cache: &Cache,
    subject: &Subject<'_>,
    manifest: &Manifest,
) -> Review {
    let refs = references(&manifest.bytes).unwrap_or_default();
    let layers_of = |blobs: &[Descriptor]| -> Vec<Layer> {
        blobs
            .iter()
            .map(|b| Layer {
                digest: b.digest.clone(),
                size: b.size,
                media_type: b.media_type.clone(),
            })
            .collect()
    };
    let mut layers = layers_of(&refs.blobs);
    let children: Vec<Child> = refs
        .manifests
        .iter()
        .map(|m| Child {
            digest: m.digest.clone(),
            media_type: m.media_type.clone(),
            platform: m.platform.as_ref().map(|p| p.label()),
        })
        .collect();
    let platforms = children.iter().filter_map(|c| c.platform.clone()).collect();
    let child_layers = async {
        let mut out = Vec::new();
        let accept = AcceptList::from_headers(&http::HeaderMap::new());
        for d in refs
            .manifests
            .iter()
            .filter_map(Descriptor::digest)
            .take(MAX_CHILDREN)
        {
            if let Ok(crate::cache::ManifestAnswer::Found {
                manifest: Some(m), ..
            }) = cache
                .manifest(
                    subject.upstream,
                    subject.repo,
                    &Reference::Digest(d),
                    &accept,
                    false,
                )
                .await
            {
                if let Ok(r) = references(&m.bytes) {
                    out.extend(layers_of(&r.blobs));
                }
            }
        }
        out
    };
    if !refs.manifests.is_empty() {
        if let Ok(more) = tokio::time::timeout(settings.timeout / 2, child_layers).await {
            layers.extend(more);
        }
    }
    Review {
        upstream: subject.upstream.name.to_string(),
        repository: subject.repo.to_string(),
        tag: subject.tag.map(str::to_owned),
        digest: manifest.digest.to_string(),
        media_type: manifest.media_type.clone(),
        platforms,
        layers,
        manifests: children,
        user: subject.user.map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;

    fn settings(keep: Duration) -> AdmissionSettings {
        AdmissionSettings::build(&AdmissionConfig {
            url: "http://scanner.example:8080/review".into(),
            timeout: HumanDuration(Duration::from_secs(1)),
            on_error: OnError::Deny,
            cache_verdicts: HumanDuration(keep),
        })
        .unwrap()
    }

    #[test]
    fn verdicts_expire_after_cache_verdicts() {
        let s = settings(Duration::from_secs(60));
        let now = now_millis();
        let v = |at| Verdict {
            allowed: true,
            reason: String::new(),
            at,
        };
        assert!(fresh(&s, &v(now)));
        assert!(fresh(&s, &v(now - 59_000)));
        assert!(!fresh(&s, &v(now - 61_000)));
        assert!(!fresh(&settings(Duration::ZERO), &v(now)));
    }

    #[test]
    fn verdicts_are_kept_per_upstream_repository_and_digest() {
        let d: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        assert_ne!(key("up", "team/a", &d), key("up", "team/b", &d));
        assert_ne!(key("up", "team/a", &d), key("other", "team/a", &d));
        assert_eq!(
            record_key(&key("up", "r", &d)),
            format!("admission:up\0r\0{}", d.hex())
        );
    }

    #[test]
    fn a_verdict_must_say_allowed() {
        let a: Answer = serde_json::from_str(r#"{"allowed": false, "reason": "CVE"}"#).unwrap();
        assert!(!a.allowed);
        assert_eq!(a.reason, "CVE");
        assert!(serde_json::from_str::<Answer>(r#"{"reason": "no verdict"}"#).is_err());
        let a: Answer = serde_json::from_str(r#"{"allowed": true}"#).unwrap();
        assert!(a.allowed && a.reason.is_empty());
    }
}
