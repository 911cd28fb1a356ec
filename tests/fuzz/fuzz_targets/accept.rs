//! The Accept parser: any header lines, no panic; `*/*` allows anything.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use regcache::registry::AcceptList;

fuzz_target!(|lines: Vec<&[u8]>| {
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append(http::header::ACCEPT, v);
        }
    }
    let accept = AcceptList::from_headers(&headers);
    let any = accept.allows("application/vnd.oci.image.index.v1+json");
    let _ = accept.header_value();
    if headers.is_empty() {
        assert!(any);
    }
});
