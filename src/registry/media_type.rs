use http::header::{HeaderMap, ACCEPT};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The full modern Accept set regcache always sends upstream, so that what
/// it caches does not depend on which client happened to ask first.
pub const MANIFEST_MEDIA_TYPES: [&str; 4] = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// The canonical spelling of `media_type` if it is one of
/// [`MANIFEST_MEDIA_TYPES`] (media types compare without regard to case).
pub fn manifest_media_type(media_type: &str) -> Option<&'static str> {
    MANIFEST_MEDIA_TYPES
        .iter()
        .copied()
        .find(|t| t.eq_ignore_ascii_case(media_type))
}

/// [`MANIFEST_MEDIA_TYPES`] as one Accept header value.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// The media types a client accepts, from every `Accept` header line and
/// every comma-separated entry in each, parameters stripped.
#[derive(Debug, Clone, Default)]
pub struct AcceptList {
    types: Vec<String>,
}

impl AcceptList {
    pub fn from_headers(headers: &HeaderMap) -> AcceptList {
        let types = headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|entry| {
                entry
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .filter(|t| !t.is_empty())
            .collect();
        AcceptList { types }
    }

    /// A client that sends no Accept at all takes whatever it is given.
    pub fn allows(&self, media_type: &str) -> bool {
        self.types.is_empty()
            || self
                .types
                .iter()
                .any(|t| t == "*/*" || t == "application/*" || t.eq_ignore_ascii_case(media_type))
    }

    /// The client's own list, to forward upstream when its wishes differ
    /// from what is cached.
    pub fn header_value(&self) -> String {
        self.types.join(", ")
    }
}

pub fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    AcceptList::from_headers(headers).allows(media_type)
}

/// The media type of a stored manifest, read from its own bytes. Used when
/// the index is rebuilt from files; `mediaType` is set by every current
/// builder, and the shape decides otherwise.
pub fn sniff_manifest_media_type(bytes: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if let Some(mt) = value.get("mediaType").and_then(|v| v.as_str()) {
        return Some(mt.to_owned());
    }
    if value.get("manifests").is_some() {
        Some(OCI_INDEX.to_owned())
    } else if value.get("layers").is_some() || value.get("config").is_some() {
        Some(OCI_MANIFEST.to_owned())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(ACCEPT, HeaderValue::from_str(l).unwrap());
        }
        h
    }

    #[test]
    fn several_lines_and_comma_lists_with_params() {
        let h = headers(&[
            "application/vnd.oci.image.index.v1+json; q=0.9",
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
        ]);
        let a = AcceptList::from_headers(&h);
        assert!(a.allows(OCI_INDEX));
        assert!(a.allows(OCI_MANIFEST));
        assert!(a.allows(DOCKER_MANIFEST));
        assert!(!a.allows(DOCKER_LIST));
    }

    #[test]
    fn wildcard_and_absent() {
        assert!(accepts(&headers(&["application/json, */*"]), DOCKER_LIST));
        assert!(accepts(&HeaderMap::new(), OCI_INDEX));
        assert!(!accepts(&headers(&["application/json"]), OCI_INDEX));
    }

    #[test]
    fn the_accept_header_lists_every_manifest_type() {
        assert_eq!(MANIFEST_ACCEPT, MANIFEST_MEDIA_TYPES.join(", "));
    }

    #[test]
    fn sniffing() {
        assert_eq!(
            sniff_manifest_media_type(br#"{"mediaType":"x/y","schemaVersion":2}"#).as_deref(),
            Some("x/y")
        );
        assert_eq!(
            sniff_manifest_media_type(br#"{"schemaVersion":2,"manifests":[]}"#).as_deref(),
            Some(OCI_INDEX)
        );
        assert_eq!(sniff_manifest_media_type(b"not json"), None);
    }
}
