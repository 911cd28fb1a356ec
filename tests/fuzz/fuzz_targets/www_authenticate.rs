//! The WWW-Authenticate parser: any header, no panic, lowercase schemes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regcache::upstream::parse_challenges;

fuzz_target!(|header: &str| {
    for challenge in parse_challenges(header) {
        assert!(!challenge.scheme.is_empty());
        assert_eq!(challenge.scheme, challenge.scheme.to_ascii_lowercase());
    }
});
