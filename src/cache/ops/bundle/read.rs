//! Import, step one: read the tar front to back. Every blob is streamed
//! into a staged write while it is hashed, and the first entry whose bytes
//! do not match its name rejects the whole bundle. Nothing is committed
//! here: dropping what this returns aborts every staged write.

use std::collections::HashMap;
use std::io::{self, BufWriter, Read, Write};

use serde::Deserialize;

use super::{BundleError, HashingReader};
use crate::cache::flight::IO_CHUNK;
use crate::cache::freshness::MAX_MANIFEST_SIZE;
use crate::cache::storage::{ContentStore, Staged};
use crate::registry::{Descriptor, Digest};

#[derive(Deserialize)]
pub(super) struct LayoutIndex {
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// An object of the bundle, verified and staged.
pub(super) struct StagedObject {
    pub staged: Box<dyn Staged>,
    pub size: u64,
}

impl StagedObject {
    /// The whole staged object, for a manifest (at most 4 MiB).
    pub fn read_whole(&self, digest: &Digest) -> Result<Vec<u8>, BundleError> {
        if self.size as usize > MAX_MANIFEST_SIZE {
            return Err(BundleError::Invalid(format!(
                "manifest {digest} is larger than 4 MiB"
            )));
        }
        let reader = self
            .staged
            .reader()
            .ok_or_else(|| io::Error::other("the staged object cannot be read back"))?;
        let mut bytes = vec![0; self.size as usize];
        reader.read_exact_at(&mut bytes, 0)?;
        Ok(bytes)
    }
}

/// What a whole, read and verified bundle holds.
pub(super) struct Archive {
    pub index: LayoutIndex,
    pub staged: HashMap<Digest, StagedObject>,
}

/// Appends through a staged write.
struct StagedWriter<'a>(&'a mut dyn Staged);

impl Write for StagedWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.append(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads a small entry whole, refusing more than `limit` bytes.
fn read_small(entry: &mut impl Read, limit: usize, what: &str) -> Result<Vec<u8>, BundleError> {
    let mut buf = Vec::new();
    entry
        .take(limit as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(tar_error)?;
    if buf.len() > limit {
        return Err(BundleError::Invalid(format!(
            "{what} is larger than {limit} bytes"
        )));
    }
    Ok(buf)
}

/// A tar read error means the bundle is cut short or mangled.
fn tar_error(e: io::Error) -> BundleError {
    BundleError::Incomplete(format!("the bundle is truncated or not a tar archive: {e}"))
}

pub(super) fn read<R: Read>(store: &dyn ContentStore, reader: R) -> Result<Archive, BundleError> {
    let mut staged: HashMap<Digest, StagedObject> = HashMap::new();
    let mut layout = None;
    let mut layout_index = None;
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(tar_error)? {
        let mut entry = entry.map_err(tar_error)?;
        let path = entry
            .path()
            .map_err(tar_error)?
            .to_string_lossy()
            .into_owned();
        let path = path.trim_start_matches("./").to_owned();
        match entry.header().entry_type() {
            tar::EntryType::Directory => continue,
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            other => {
                return Err(BundleError::Invalid(format!(
                    "{path}: unexpected entry type {other:?}"
                )))
            }
        }
        if path == "oci-layout" {
            layout = Some(read_small(&mut entry, 4096, "oci-layout")?);
        } else if path == "index.json" {
            layout_index = Some(read_small(&mut entry, MAX_MANIFEST_SIZE, "index.json")?);
        } else if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            let digest = Digest::from_hex(hex)
                .map_err(|_| BundleError::Invalid(format!("{path}: not a sha256 digest")))?;
            let mut write = store.begin()?;
            let mut hashing = HashingReader::new(&mut entry);
            {
                let mut out = BufWriter::with_capacity(IO_CHUNK, StagedWriter(write.as_mut()));
                io::copy(&mut hashing, &mut out).map_err(tar_error)?;
                out.flush()?;
            }
            let expected = hashing.inner.header().size().map_err(tar_error)?;
            let (count, actual) = (hashing.count, hashing.hasher.finish());
            if count != expected {
                return Err(BundleError::Incomplete(format!("{path}: cut short")));
            }
            if actual != digest {
                return Err(BundleError::Corrupt(format!(
                    "{path}: the content hashes to {actual}, not {digest}: the bundle is corrupt or was tampered with; nothing was installed"
                )));
            }
            // Many may wait for the install: hold no descriptor meanwhile.
            write.park();
            staged.insert(
                digest,
                StagedObject {
                    staged: write,
                    size: count,
                },
            );
        } else {
            tracing::warn!(%path, "ignoring an unexpected file in the bundle");
        }
    }
    let layout = layout.ok_or_else(|| {
        BundleError::Invalid("no oci-layout file: not an OCI image layout".into())
    })?;
    let layout: serde_json::Value = serde_json::from_slice(&layout)
        .map_err(|e| BundleError::Invalid(format!("oci-layout: {e}")))?;
    if layout
        .get("imageLayoutVersion")
        .and_then(|v| v.as_str())
        .is_none()
    {
        return Err(BundleError::Invalid(
            "oci-layout has no imageLayoutVersion".into(),
        ));
    }
    let layout_index = layout_index
        .ok_or_else(|| BundleError::Incomplete("no index.json: truncated bundle?".into()))?;
    let index: LayoutIndex = serde_json::from_slice(&layout_index)
        .map_err(|e| BundleError::Invalid(format!("index.json: {e}")))?;
    Ok(Archive { index, staged })
}
