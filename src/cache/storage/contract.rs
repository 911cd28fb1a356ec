//! What every backend promises, checked against each of them.

use std::sync::Arc;

use super::*;

fn backends() -> Vec<(&'static str, Arc<dyn ContentStore>, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let fs: Arc<dyn ContentStore> = Arc::new(FsStore::open(dir.path()).unwrap());
    let memory: Arc<dyn ContentStore> = Arc::new(MemoryStore::new());
    vec![
        ("fs", fs, dir),
        ("memory", memory, tempfile::tempdir().unwrap()),
    ]
}

#[test]
fn a_staged_write_is_invisible_until_committed_and_gone_if_dropped() {
    for (name, store, _dir) in backends() {
        let d = Digest::sha256_of(b"hello world");
        let mut staged = store.begin().unwrap();
        staged.append(b"hello ").unwrap();
        assert_eq!(store.stat(Kind::Blob, &d).unwrap(), None, "{name}");
        if store.reads_while_staged() {
            let reader = staged.reader().unwrap();
            let mut buf = [0u8; 5];
            reader.read_exact_at(&mut buf, 0).unwrap();
            assert_eq!(&buf, b"hello", "{name}");
            staged.append(b"world").unwrap();
            let mut rest = [0u8; 5];
            reader.read_exact_at(&mut rest, 6).unwrap();
            assert_eq!(&rest, b"world", "{name}: the reader follows the write");
            staged.commit(Kind::Blob, &d).unwrap();
            let mut again = [0u8; 11];
            reader.read_exact_at(&mut again, 0).unwrap();
            assert_eq!(&again, b"hello world", "{name}: valid after commit");
        } else {
            staged.append(b"world").unwrap();
            staged.commit(Kind::Blob, &d).unwrap();
        }
        assert_eq!(store.stat(Kind::Blob, &d).unwrap(), Some(11), "{name}");
        assert_eq!(store.stat(Kind::Manifest, &d).unwrap(), None, "{name}");
        assert_eq!(
            store.read_whole(Kind::Blob, &d).unwrap().unwrap(),
            b"hello world",
            "{name}"
        );

        let other = Digest::sha256_of(b"dropped");
        {
            let mut staged = store.begin().unwrap();
            staged.append(b"dropped").unwrap();
        }
        assert_eq!(store.stat(Kind::Blob, &other).unwrap(), None, "{name}");
        assert_eq!(store.objects(Kind::Blob).unwrap(), vec![(d.clone(), 11)]);
    }
}

#[test]
fn an_open_object_outlives_its_removal_and_reads_are_bounded() {
    for (name, store, _dir) in backends() {
        let d = Digest::sha256_of(b"abc");
        store.write_whole(Kind::Blob, &d, b"abc").unwrap();
        let object = store.open(Kind::Blob, &d).unwrap().unwrap();
        store.remove(Kind::Blob, &d).unwrap();
        store.remove(Kind::Blob, &d).unwrap();
        assert!(store.open(Kind::Blob, &d).unwrap().is_none(), "{name}");
        let mut buf = [0u8; 3];
        object.reader.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"abc", "{name}");
        let mut past = [0u8; 2];
        assert!(object.reader.read_exact_at(&mut past, 2).is_err(), "{name}");
    }
}

#[test]
fn a_quarantined_object_is_kept_aside_out_of_the_store_and_still_readable() {
    for (name, store, dir) in backends() {
        let d = Digest::sha256_of(b"abc");
        store.write_whole(Kind::Blob, &d, b"abx").unwrap();
        let object = store.open(Kind::Blob, &d).unwrap().unwrap();
        let aside = store.quarantine(Kind::Blob, &d).unwrap().unwrap();
        assert!(aside.contains(d.hex()), "{name}: {aside}");
        assert_eq!(store.stat(Kind::Blob, &d).unwrap(), None, "{name}");
        assert!(store.objects(Kind::Blob).unwrap().is_empty(), "{name}");
        assert_eq!(store.quarantine(Kind::Blob, &d).unwrap(), None, "{name}");
        let mut buf = [0u8; 3];
        object.reader.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"abx", "{name}: an open handle keeps reading");
        if name == "fs" {
            let kept = dir
                .path()
                .join("quarantine")
                .join(format!("blob-{}", d.hex()));
            assert_eq!(aside, kept.display().to_string());
            assert_eq!(
                std::fs::read(kept).unwrap(),
                b"abx",
                "kept for a post-mortem"
            );
        }
        // A fill of the same digest afterwards is an ordinary commit.
        store.write_whole(Kind::Blob, &d, b"abc").unwrap();
        assert_eq!(
            store.read_whole(Kind::Blob, &d).unwrap().unwrap(),
            b"abc",
            "{name}"
        );
    }
}

#[test]
fn tag_records_replace_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let stores: Vec<Arc<dyn TagStore>> = vec![
        Arc::new(FsStore::open(dir.path()).unwrap()),
        Arc::new(MemoryStore::new()),
    ];
    for store in stores {
        let record = |tag: &str, n: u64| TagRecord {
            upstream: "up".into(),
            repo: "team/app".into(),
            tag: tag.into(),
            entry: TagEntry {
                digest: Digest::sha256_of(&n.to_be_bytes()),
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                size: n,
                checked_at: n,
                max_age_ms: None,
                unshared: false,
            },
        };
        store.put_tag(&record("v1", 1)).unwrap();
        store.put_tag(&record("v1", 2)).unwrap();
        assert_eq!(store.tag_records().unwrap(), vec![record("v1", 2)]);
        store.delete_tag("up", "team/app", "v1").unwrap();
        store.delete_tag("up", "team/app", "v1").unwrap();
        assert!(store.tag_records().unwrap().is_empty());
    }
}
