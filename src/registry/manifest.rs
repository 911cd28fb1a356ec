//! What makes a body a manifest: checked before an upstream's answer is
//! stored, so that a registry (or something posing as one) answering `{}`
//! or an HTML page with 200 cannot put it in the cache as an image.

use std::sync::Arc;

use serde_json::Value;

use super::media_type::{manifest_media_type as known, DOCKER_LIST, OCI_INDEX};

/// Why a body is not a manifest regcache can cache.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ManifestError {
    #[error("the body is not JSON: {0}")]
    NotJson(#[source] Arc<serde_json::Error>),
    #[error("the body is not a JSON object")]
    NotAnObject,
    /// Schema 1 is not in the Accept set regcache sends, and nothing in
    /// the cache (eviction, export, reachability) reads its `fsLayers`.
    #[error("docker schema 1 manifests are not supported")]
    Schema1,
    #[error("schemaVersion is {0}, not 2")]
    SchemaVersion(String),
    #[error("media type {0:?} is not a manifest or index type")]
    UnknownMediaType(String),
    #[error("the body names no media type and Content-Type {0:?} is no manifest type")]
    NoMediaType(Option<String>),
    #[error("a {media_type} must have {needs}")]
    Shape {
        media_type: String,
        needs: &'static str,
    },
}

fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

/// Checks that `bytes`, answered with `content_type` (parameters already
/// stripped), is a schema 2 image manifest or index, and returns the
/// media type to store it under.
///
/// A body that names its `mediaType` must name a known one, and that is
/// its type: the digest covers it, the header not. One that does not (OCI
/// allows that) must come with a manifest `Content-Type` and have that
/// type's fields: `config` and `layers`, or `manifests`.
pub fn validate_manifest(
    content_type: Option<&str>,
    bytes: &[u8],
) -> Result<String, ManifestError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| ManifestError::NotJson(Arc::new(e)))?;
    let Value::Object(doc) = &value else {
        return Err(ManifestError::NotAnObject);
    };
    match doc.get("schemaVersion") {
        Some(v) if v.as_u64() == Some(2) => {}
        Some(v) if v.as_u64() == Some(1) => return Err(ManifestError::Schema1),
        Some(v) => return Err(ManifestError::SchemaVersion(v.to_string())),
        None => return Err(ManifestError::SchemaVersion("missing".into())),
    }
    let own = match doc.get("mediaType") {
        None => None,
        Some(Value::String(s)) => {
            Some(known(s).ok_or_else(|| ManifestError::UnknownMediaType(s.clone()))?)
        }
        Some(v) => return Err(ManifestError::UnknownMediaType(v.to_string())),
    };
    let Some(media_type) = own.or_else(|| content_type.and_then(known)) else {
        return Err(ManifestError::NoMediaType(content_type.map(str::to_owned)));
    };
    // The fields a client reads next must have their JSON types; without
    // a `mediaType` of its own, they are all that says what the body is.
    let has = |field: &str, array: bool| match doc.get(field) {
        Some(v) => (array && v.is_array()) || (!array && v.is_object()),
        None => own.is_some(),
    };
    let (fine, needs) = if is_index(media_type) {
        (has("manifests", true), "a manifests array")
    } else {
        (
            has("config", false) && has("layers", true),
            "a config object and a layers array",
        )
    };
    if !fine {
        return Err(ManifestError::Shape {
            media_type: media_type.to_owned(),
            needs,
        });
    }
    Ok(media_type.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::media_type::{DOCKER_MANIFEST, OCI_MANIFEST};

    const IMAGE: &str = r#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","size":2},"layers":[]}"#;

    fn check(content_type: Option<&str>, body: &str) -> Result<String, ManifestError> {
        validate_manifest(content_type, body.as_bytes())
    }

    #[test]
    fn an_empty_object_is_no_manifest_whatever_the_content_type() {
        for ct in [
            None,
            Some("application/json"),
            Some(OCI_MANIFEST),
            Some(OCI_INDEX),
        ] {
            assert!(
                matches!(check(ct, "{}"), Err(ManifestError::SchemaVersion(_))),
                "{ct:?}"
            );
        }
    }

    #[test]
    fn not_json_or_not_an_object() {
        assert!(matches!(
            check(Some(OCI_MANIFEST), "<html>hello</html>"),
            Err(ManifestError::NotJson(_))
        ));
        assert!(matches!(
            check(Some(OCI_MANIFEST), ""),
            Err(ManifestError::NotJson(_))
        ));
        assert!(matches!(
            check(Some(OCI_MANIFEST), "[1,2]"),
            Err(ManifestError::NotAnObject)
        ));
    }

    #[test]
    fn only_schema_version_two() {
        assert!(matches!(
            check(None, r#"{"schemaVersion":1,"fsLayers":[]}"#),
            Err(ManifestError::Schema1)
        ));
        assert!(matches!(
            check(Some(OCI_MANIFEST), r#"{"schemaVersion":"2","config":{},"layers":[]}"#),
            Err(ManifestError::SchemaVersion(v)) if v == "\"2\""
        ));
    }

    #[test]
    fn without_its_own_media_type_the_content_type_and_the_shape_decide() {
        assert_eq!(check(Some(OCI_MANIFEST), IMAGE).unwrap(), OCI_MANIFEST);
        // Content-Type is compared without regard to case, stored canonical.
        assert_eq!(
            check(Some("Application/VND.oci.image.manifest.v1+json"), IMAGE).unwrap(),
            OCI_MANIFEST
        );
        assert!(matches!(
            check(Some("application/json"), IMAGE),
            Err(ManifestError::NoMediaType(Some(t))) if t == "application/json"
        ));
        assert!(matches!(
            check(None, IMAGE),
            Err(ManifestError::NoMediaType(None))
        ));
        // The shape must be the Content-Type's.
        assert!(matches!(
            check(Some(OCI_INDEX), IMAGE),
            Err(ManifestError::Shape { .. })
        ));
        assert!(matches!(
            check(Some(OCI_MANIFEST), r#"{"schemaVersion":2,"layers":[]}"#),
            Err(ManifestError::Shape { .. })
        ));
        assert!(matches!(
            check(
                Some(OCI_MANIFEST),
                r#"{"schemaVersion":2,"config":{},"layers":{}}"#
            ),
            Err(ManifestError::Shape { .. })
        ));
        assert_eq!(
            check(Some(OCI_INDEX), r#"{"schemaVersion":2,"manifests":[]}"#).unwrap(),
            OCI_INDEX
        );
    }

    #[test]
    fn its_own_media_type_must_be_a_manifest_type() {
        let docker = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{}},"layers":[]}}"#
        );
        // A plain JSON Content-Type is taken when the body says what it is.
        assert_eq!(
            check(Some("application/json"), &docker).unwrap(),
            DOCKER_MANIFEST
        );
        assert_eq!(check(None, &docker).unwrap(), DOCKER_MANIFEST);
        // The body's own type wins over a header that says otherwise.
        assert_eq!(check(Some(OCI_MANIFEST), &docker).unwrap(), DOCKER_MANIFEST);
        assert!(matches!(
            check(
                Some(OCI_MANIFEST),
                r#"{"schemaVersion":2,"mediaType":"text/html","config":{},"layers":[]}"#
            ),
            Err(ManifestError::UnknownMediaType(t)) if t == "text/html"
        ));
        assert!(matches!(
            check(Some(OCI_MANIFEST), r#"{"schemaVersion":2,"mediaType":7}"#),
            Err(ManifestError::UnknownMediaType(_))
        ));
        // Fields it names must still have their types.
        let list = format!(r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":"no"}}"#);
        assert!(matches!(
            check(Some(DOCKER_LIST), &list),
            Err(ManifestError::Shape { .. })
        ));
        // An index that names itself may leave out what it has none of.
        let empty = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}"}}"#);
        assert_eq!(check(Some(OCI_INDEX), &empty).unwrap(), OCI_INDEX);
    }
}
