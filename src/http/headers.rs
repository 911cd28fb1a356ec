//! Response headers shared by the registry API's handlers.

use http::{HeaderValue, Response};

use super::body::Body;

/// Marks an answer served past its freshness because the upstream failed.
pub fn mark_stale(response: &mut Response<Body>) {
    response.headers_mut().insert(
        http::header::WARNING,
        HeaderValue::from_static("110 - \"response is stale\""),
    );
}
