//! What a manifest references: the descriptors of an index's child
//! manifests, and of an image manifest's config and layers, with their
//! platforms. Protocol vocabulary: read from manifests, never written.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Digest;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Descriptor {
    /// The digest, if it is one regcache can store (sha256).
    pub fn digest(&self) -> Option<Digest> {
        self.digest.parse().ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// `os/arch[/variant]`
    pub fn label(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }

    /// Whether this platform is one of `wanted` (`os/arch` matches every
    /// variant; `os/arch/variant` only that one).
    pub fn matches(&self, wanted: &[String]) -> bool {
        wanted.iter().any(|w| {
            let mut parts = w.split('/');
            let (os, arch, variant) = (parts.next(), parts.next(), parts.next());
            os == Some(self.os.as_str())
                && arch == Some(self.architecture.as_str())
                && match variant {
                    None => true,
                    Some(v) => self.variant.as_deref() == Some(v),
                }
        })
    }
}

/// The references of one manifest.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct References {
    /// Child manifests (an index or manifest list).
    pub manifests: Vec<Descriptor>,
    /// Config and layers (an image manifest), or an artifact's blobs.
    pub blobs: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Shape {
    #[serde(default)]
    manifests: Vec<Descriptor>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    blobs: Vec<Descriptor>,
}

pub fn references(manifest: &[u8]) -> Result<References, serde_json::Error> {
    let shape: Shape = serde_json::from_slice(manifest)?;
    let mut blobs: Vec<Descriptor> = shape.config.into_iter().collect();
    blobs.extend(shape.layers);
    blobs.extend(shape.blobs);
    Ok(References {
        manifests: shape.manifests,
        blobs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    #[test]
    fn index_and_image_references() {
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[
              {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":10,"platform":{{"architecture":"amd64","os":"linux"}}}},
              {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":11,"platform":{{"architecture":"arm","os":"linux","variant":"v7"}}}}]}}"#,
            d(1),
            d(2)
        );
        let refs = references(index.as_bytes()).unwrap();
        assert_eq!(refs.manifests.len(), 2);
        assert!(refs.blobs.is_empty());
        let p = refs.manifests[1].platform.clone().unwrap();
        assert_eq!(p.label(), "linux/arm/v7");
        assert!(p.matches(&["linux/arm".into()]));
        assert!(p.matches(&["linux/arm/v7".into()]));
        assert!(!p.matches(&["linux/arm/v6".into(), "linux/amd64".into()]));

        let image = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{}","size":5}},"layers":[{{"digest":"{}","size":6}}]}}"#,
            d(3),
            d(4)
        );
        let refs = references(image.as_bytes()).unwrap();
        let digests: Vec<_> = refs.blobs.iter().map(|b| b.digest.clone()).collect();
        assert_eq!(digests, vec![d(3), d(4)]);
    }
}
