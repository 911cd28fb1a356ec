//! The HTTP client every test uses, and reading bodies with it.

use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;

/// How long any one test request may take, body included: long enough for
/// the largest fixture on a loaded machine, short enough that a hung
/// request fails the test instead of stalling the suite.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The builder behind [`client`], for a test that needs one more setting
/// (a private CA, a shorter timeout).
pub fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().timeout(REQUEST_TIMEOUT)
}

/// A client with a fresh connection pool.
pub fn client() -> reqwest::Client {
    client_builder()
        .build()
        .expect("building the test HTTP client")
}

/// GET `url` with a fresh [`client`]: the status and the whole body, or
/// the error that cut the exchange short.
pub async fn get(url: &str) -> reqwest::Result<(StatusCode, Bytes)> {
    let response = client().get(url).send().await?;
    let status = response.status();
    Ok((status, response.bytes().await?))
}

/// Reads a response to its end: what arrived, and the error that cut it
/// short if one did (fault tests look at both).
pub async fn read_body(mut response: reqwest::Response) -> (Vec<u8>, Option<reqwest::Error>) {
    let mut out = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(c)) => out.extend_from_slice(&c),
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}
