//! Manifest references and what is read out of manifest bytes: tags and
//! digests by grammar, media types sniffed from any bytes, no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regcache::registry::{sniff_manifest_media_type, Digest, Reference};

fuzz_target!(|data: &[u8]| {
    let _ = sniff_manifest_media_type(data);
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Reference::parse(text) {
        Ok(Reference::Digest(d)) => {
            assert_eq!(d.to_string(), text);
            assert_eq!(d.hex().len(), 64);
        }
        Ok(Reference::Tag(t)) => assert!(t.as_str().len() <= 128 && !t.as_str().contains('/')),
        Err(_) => {}
    }
    let _ = text.parse::<Digest>();
});
