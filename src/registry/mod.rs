//! The registry protocol's vocabulary: repository names, references,
//! digests, media types and descriptors, each validated against the distribution grammar
//! before anything else sees them.

mod descriptor;
mod digest;
mod manifest;
mod media_type;
mod name;
pub mod reference;

pub use descriptor::{references, Descriptor, Platform, References};
pub use digest::{Digest, DigestError, Sha256Hasher};
pub use manifest::{validate_manifest, ManifestError};
pub use media_type::{
    accepts, manifest_media_type, sniff_manifest_media_type, AcceptList, MANIFEST_ACCEPT,
    MANIFEST_MEDIA_TYPES,
};
pub use name::{looks_like_host, NameError, RepoName};
pub use reference::{Reference, Tag, TagError};
