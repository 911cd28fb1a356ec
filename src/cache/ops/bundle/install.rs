//! Import, step three: commit the staged objects (each made durable, then
//! indexed), then record the tags and link their images to their
//! repositories. Objects the cache already has are only indexed.

use super::check::Plan;
use super::read::Archive;
use super::{BundleError, ImportReport};
use crate::cache::storage::index::Index;
use crate::cache::storage::{Kind, Storage};
use crate::registry::Digest;

pub(super) fn install(
    storage: &Storage,
    index: &Index,
    mut archive: Archive,
    plan: Plan,
) -> Result<ImportReport, BundleError> {
    let Plan {
        manifests,
        blobs,
        tags,
        mut report,
    } = plan;
    let store = storage.content.as_ref();
    let mut install =
        |kind: Kind, d: &Digest, media_type: Option<&str>| -> Result<(), BundleError> {
            if let Some(size) = store.stat(kind, d)? {
                report.already_cached += 1;
                if index.get(kind, d)?.is_none() {
                    index.record(kind, d, size, media_type)?;
                }
                return Ok(());
            }
            let Some(object) = archive.staged.remove(d) else {
                return Ok(());
            };
            object.staged.commit(kind, d)?;
            index.record(kind, d, object.size, media_type)?;
            report.bytes_added += object.size;
            match kind {
                Kind::Blob => report.blobs_added += 1,
                Kind::Manifest => report.manifests_added += 1,
            }
            Ok(())
        };
    for d in &blobs {
        install(Kind::Blob, d, None)?;
    }
    for (d, media_type) in &manifests {
        install(Kind::Manifest, d, media_type.as_deref())?;
    }
    for tag in &tags {
        let r = &tag.record;
        storage.tags.put_tag(r)?;
        index.set_tag(&r.upstream, &r.repo, &r.tag, &r.entry)?;
        // The bundle vouches that this repository holds the image, as a
        // pull through it would have: private-content checks need no
        // upstream (there is none in an air gap).
        for d in &tag.closure {
            index.link(&r.upstream, &r.repo, d)?;
        }
        report.tags += 1;
    }
    index.flush()?;
    Ok(report)
}
