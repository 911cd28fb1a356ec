//! Freshness: what may change under a name — tags, tag lists, referrers —
//! and how long an answer about it may be served before the upstream is
//! asked again; manifests kept hot in memory; remembered 404s.

pub mod listings;
pub mod manifests;
mod moves;
pub mod negative;
pub mod ttl;

pub use listings::{Listing, ListingCache};
pub use manifests::{Manifest, ManifestCache, MAX_MANIFEST_SIZE};
