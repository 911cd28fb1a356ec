//! The Range parser: a satisfiable range always lies inside the blob.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regcache::http::range::{parse_range, RangeRequest};

fuzz_target!(|input: (u64, &str)| {
    let (size, header) = input;
    if let RangeRequest::Partial { start, end } = parse_range(Some(header), size) {
        assert!(start < end && end <= size, "{header:?} on {size}: {start}..{end}");
    }
});
