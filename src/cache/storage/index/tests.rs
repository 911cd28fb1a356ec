use super::*;

#[test]
fn reconcile_rebuilds_from_files_and_drops_ghosts() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::cache::storage::MemoryStore::new();
    let blob = Digest::sha256_of(b"layer");
    let manifest_bytes =
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
    let manifest = Digest::sha256_of(manifest_bytes);
    store.write_whole(Kind::Blob, &blob, b"layer").unwrap();
    store
        .write_whole(Kind::Manifest, &manifest, manifest_bytes)
        .unwrap();

    let index = Index::open(&dir.path().join("index")).unwrap();
    let ghost = Digest::sha256_of(b"gone");
    index.record(Kind::Blob, &ghost, 4, None).unwrap();
    let report = index.reconcile(&store).unwrap();
    assert_eq!(
        report,
        ReconcileReport {
            added: 2,
            dropped: 1,
            ..Default::default()
        }
    );
    assert_eq!(index.get(Kind::Blob, &blob).unwrap().unwrap().size, 5);
    assert!(index.get(Kind::Blob, &ghost).unwrap().is_none());
    assert_eq!(
        index
            .get(Kind::Manifest, &manifest)
            .unwrap()
            .unwrap()
            .media_type
            .as_deref(),
        Some("application/vnd.oci.image.manifest.v1+json")
    );
    // A second pass has nothing to do.
    assert_eq!(index.reconcile(&store).unwrap(), ReconcileReport::default());
}

#[test]
fn access_times_are_batched() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(&dir.path().join("index")).unwrap();
    let d = Digest::sha256_of(b"a");
    index.record(Kind::Blob, &d, 1, None).unwrap();
    let before = index.get(Kind::Blob, &d).unwrap().unwrap().last_accessed;
    std::thread::sleep(std::time::Duration::from_millis(5));
    index.touch(Kind::Blob, &d);
    assert_eq!(
        index.get(Kind::Blob, &d).unwrap().unwrap().last_accessed,
        before
    );
    index.flush_access_times().unwrap();
    assert!(index.get(Kind::Blob, &d).unwrap().unwrap().last_accessed > before);
}

#[test]
fn entries_removal_totals_and_high_water() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(&dir.path().join("index")).unwrap();
    index.set_high_water(Some(10));
    let a = Digest::sha256_of(b"a");
    let b = Digest::sha256_of(b"b");
    index.record(Kind::Blob, &a, 6, None).unwrap();
    index.record(Kind::Manifest, &b, 6, Some("m")).unwrap();
    assert_eq!(index.total_bytes(), 12);
    // The second record crossed the mark: a waiter is woken at once.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(1),
            index.wait_over_high_water(),
        )
        .await
        .expect("woken");
    });
    assert_eq!(index.entries(Kind::Blob).unwrap().len(), 1);
    assert_eq!(
        index.remove(Kind::Blob, &a).unwrap().map(|e| e.size),
        Some(6)
    );
    assert_eq!(index.remove(Kind::Blob, &a).unwrap(), None);
    assert_eq!(index.total_bytes(), 6);
    assert!(index.entries(Kind::Blob).unwrap().is_empty());
}

#[test]
fn a_locked_index_is_reported_not_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index");
    let _held = Index::open(&path).unwrap();
    // sled takes an flock on its own open file, so a second open, even
    // in this process, finds the lock held.
    match Index::open(&path) {
        Err(IndexError::Locked(_)) => {}
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("opened a held index"),
    }
    let aside = crate::cache::storage::fs::names_in(dir.path())
        .iter()
        .filter(|n| n.contains("corrupt"))
        .count();
    assert_eq!(aside, 0, "a held index is never moved aside");
}

#[test]
fn tags_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(&dir.path().join("index")).unwrap();
    let e = TagEntry {
        digest: Digest::sha256_of(b"x"),
        media_type: "m".into(),
        size: 3,
        checked_at: 9,
        max_age_ms: None,
        unshared: false,
    };
    index
        .set_tag("docker.io", "library/alpine", "3", &e)
        .unwrap();
    assert_eq!(
        index.tag("docker.io", "library/alpine", "3").unwrap(),
        Some(e.clone())
    );
    assert_eq!(index.tag("docker.io", "library/alpine", "4").unwrap(), None);
    // Records written before max_age_ms existed still read; it is left out
    // of records that have none.
    let old = r#"{"digest":"sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881","media_type":"m","size":3,"checked_at":9}"#;
    assert_eq!(serde_json::from_str::<TagEntry>(old).unwrap(), e);
    assert_eq!(serde_json::to_string(&e).unwrap(), old);
    let all = index.all_tags().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(
        (
            all[0].upstream.as_str(),
            all[0].repo.as_str(),
            all[0].tag.as_str()
        ),
        ("docker.io", "library/alpine", "3")
    );
    assert!(index
        .remove_tag("docker.io", "library/alpine", "3")
        .unwrap());
    assert!(!index
        .remove_tag("docker.io", "library/alpine", "3")
        .unwrap());
    assert!(index.all_tags().unwrap().is_empty());
}

#[test]
fn a_failed_index_reopens_in_place_with_what_it_had_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(&dir.path().join("index")).unwrap();
    let d = Digest::sha256_of(b"kept");
    index.record(Kind::Blob, &d, 4, None).unwrap();
    index.flush().unwrap();
    // Not failed: nothing to do.
    assert!(!index.recover().unwrap());
    index.fail_for_test();
    assert!(index.failed());
    // A call in flight holds the database: the reopen waits for the next try.
    let held = index.trees().unwrap();
    assert!(matches!(index.recover(), Err(IndexError::Reopening)));
    assert!(index.failed());
    drop(held);
    // Reopening needs sled's file lock back, so this proves the old
    // database was closed first.
    assert!(index.recover().unwrap());
    assert!(!index.failed());
    assert_eq!(index.get(Kind::Blob, &d).unwrap().map(|e| e.size), Some(4));
    index
        .record(Kind::Blob, &Digest::sha256_of(b"new"), 3, None)
        .unwrap();
}
