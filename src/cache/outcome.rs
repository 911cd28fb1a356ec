//! How a request was answered: one vocabulary for the access log, the audit
//! log and the cache metrics, for blobs and manifests alike.

/// How a lookup was answered; feeds the access log and the cache metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    /// Another request's upstream fetch answered this one too.
    Coalesced,
    /// A stale tag was confirmed or updated by the upstream.
    Revalidated,
    /// The upstream failed; a cached answer past its freshness was served.
    Stale,
    /// A remembered upstream 404 answered without asking again.
    Negative,
    /// The client accepts none of what is cached: relayed from the
    /// upstream, uncached.
    Bypass,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Coalesced => "coalesced",
            Outcome::Revalidated => "revalidated",
            Outcome::Stale => "stale",
            Outcome::Negative => "negative",
            Outcome::Bypass => "bypass",
        }
    }
}
