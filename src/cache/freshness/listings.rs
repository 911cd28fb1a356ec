//! Tag lists and referrers: mutable listings relayed from the upstream,
//! kept in the index so that they are served fresh for `tag_ttl` and stale
//! when the upstream fails, like tags.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method};
use serde::{Deserialize, Serialize};

use super::negative::NegativeCache;
use super::ttl;
use crate::cache::flight::SingleFlight;
use crate::cache::storage::index::{now_millis, Index};
use crate::cache::{CacheError, Outcome};
use crate::metrics::Metrics;
use crate::registry::RepoName;
use crate::upstream::{Upstream, UpstreamError};
use tokio_util::task::TaskTracker;

/// Listings are buffered whole; a registry with more tags than this should
/// be paginated by the client.
const LISTING_LIMIT: usize = 8 * 1024 * 1024;

/// An upstream listing answer, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listing {
    pub content_type: Option<String>,
    /// The upstream's `Link` header, rewritten for the client when served.
    pub link: Option<String>,
    pub filters_applied: Option<String>,
    pub body: String,
    pub checked_at: u64,
    /// The upstream's `max-age` for it, when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_ms: Option<u64>,
    /// The upstream forbade sharing it (`no-store`, `private`): not stored.
    #[serde(skip)]
    pub unshared: bool,
}

impl ttl::Confirmed for Listing {
    fn checked_at(&self) -> u64 {
        self.checked_at
    }
    fn max_age(&self) -> Option<std::time::Duration> {
        self.max_age_ms.map(std::time::Duration::from_millis)
    }
    fn shared(&self) -> bool {
        !self.unshared
    }
}

pub struct ListingCache {
    index: Arc<Index>,
    metrics: Arc<Metrics>,
    flights: SingleFlight<String, Result<Listing, CacheError>>,
    negative: NegativeCache,
}

fn task_panicked() -> Result<Listing, CacheError> {
    Err(CacheError::Internal("listing task panicked".into()))
}

impl ListingCache {
    pub fn new(index: Arc<Index>, metrics: Arc<Metrics>, tasks: TaskTracker) -> ListingCache {
        ListingCache {
            index,
            metrics,
            flights: SingleFlight::new(tasks),
            negative: NegativeCache::new(),
        }
    }

    /// `GET /v2/<repo>/<suffix>?<query>` at the upstream, through the cache.
    pub async fn get(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        suffix: &str,
        query: Option<&str>,
    ) -> Result<(Listing, Outcome), CacheError> {
        let what = format!("{suffix}?{}", query.unwrap_or(""));
        let key = NegativeCache::key(&upstream.name, repo.as_str(), &what);
        let asked_at = now_millis();
        let cached = self.index.listing::<Listing>(&key)?;
        let refresh = || async {
            if let Some(e) = self.negative.get(&key).await {
                return (Err(e), false);
            }
            let fetch = {
                let upstream = upstream.clone();
                let repo = repo.clone();
                let suffix = suffix.to_owned();
                let query = query.map(str::to_owned);
                let index = self.index.clone();
                let key = key.clone();
                let negative = self.negative.clone();
                let ttl = upstream.settings().negative_ttl;
                move || async move {
                    // A flight that ended between our index read and this
                    // one's start has asked already: take its answer.
                    let answered = index
                        .listing::<Listing>(&key)?
                        .filter(|l| l.checked_at >= asked_at);
                    if let Some(listing) = answered {
                        return Ok(listing);
                    }
                    let work = fetch(&upstream, &repo, &suffix, query.as_deref(), &index, &key);
                    negative.remembering(key.clone(), ttl, work).await
                }
            };
            self.flights.run(key.clone(), fetch, task_panicked).await
        };
        let (listing, outcome) = ttl::lookup(upstream, cached, refresh).await?;
        self.metrics
            .cache_outcome(&upstream.name, "listing", outcome.label());
        Ok((listing, outcome))
    }
}

async fn fetch(
    upstream: &Upstream,
    repo: &RepoName,
    suffix: &str,
    query: Option<&str>,
    index: &Index,
    key: &str,
) -> Result<Listing, CacheError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::ACCEPT,
        HeaderValue::from_static("application/json, */*"),
    );
    let response = upstream
        .request(Method::GET, repo, suffix, query, headers)
        .await?
        .require_ok("listing")?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let sharing = response.sharing(&Method::GET);
    let content_type = header("content-type");
    let link = header("link");
    let filters_applied = header("oci-filters-applied");
    let bytes = response.bytes(LISTING_LIMIT).await.map_err(|e| match e {
        UpstreamError::TooLarge { .. } => {
            UpstreamError::Body(format!("listing larger than {LISTING_LIMIT} bytes"))
        }
        e => e,
    })?;
    upstream.count_received(bytes.len());
    let body = String::from_utf8(bytes.to_vec())
        .map_err(|_| UpstreamError::Body("listing is not UTF-8 JSON".into()))?;
    let listing = Listing {
        content_type,
        link,
        filters_applied,
        body,
        checked_at: now_millis(),
        max_age_ms: sharing.max_age.map(|d| d.as_millis() as u64),
        unshared: !sharing.storable,
    };
    if !listing.unshared {
        index.set_listing(key, &listing)?;
    }
    Ok(listing)
}
