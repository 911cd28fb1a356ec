//! What references what among the cached manifests: each manifest's child
//! manifests and blobs, and the reverse (which manifests reach a blob, which
//! indexes list a manifest). Read from the store and kept in memory,
//! re-read (only the manifests not seen before) when the index's count of
//! manifests moves. Used to refuse what only blocked images reach and to
//! find the reviewed manifests of a blob asked for directly.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::cache::content_view::ManifestSource;
use crate::cache::Cache;
use crate::registry::{references, Descriptor, Digest};

#[derive(Default)]
pub struct Graph {
    state: parking_lot::Mutex<State>,
    /// One re-read at a time; the others wait for it and find it done.
    refreshing: tokio::sync::Mutex<()>,
}

#[derive(Default, Clone)]
struct Edges {
    manifests: Vec<Digest>,
    blobs: Vec<Digest>,
}

#[derive(Default)]
struct State {
    /// The manifest count the edges were read at.
    count: Option<u64>,
    edges: HashMap<Digest, Edges>,
    blob_parents: HashMap<Digest, Vec<Digest>>,
    manifest_parents: HashMap<Digest, Vec<Digest>>,
}

impl Graph {
    /// Brings the graph up to date with the store when its manifest count
    /// moved. A store that cannot be read leaves the graph as it was (with
    /// a warning): the checks then go by what is known.
    pub async fn refresh(&self, cache: &Cache) {
        let count = cache.manifest_count();
        if self.state.lock().count == Some(count) {
            return;
        }
        let _one = self.refreshing.lock().await;
        if self.state.lock().count == Some(count) {
            return;
        }
        let known: HashSet<Digest> = self.state.lock().edges.keys().cloned().collect();
        let source = cache.manifest_source();
        let read = tokio::task::spawn_blocking(move || read_new(&source, &known)).await;
        let read = read
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match read {
            Ok((present, new)) => self.state.lock().update(count, &present, new),
            Err(error) => {
                tracing::warn!(%error, "reading the cached manifests for the policy gate failed")
            }
        }
    }

    /// The cached manifests that reference `blob`.
    pub fn blob_parents(&self, blob: &Digest) -> Vec<Digest> {
        self.state
            .lock()
            .blob_parents
            .get(blob)
            .cloned()
            .unwrap_or_default()
    }

    /// The cached indexes that list `manifest`.
    pub fn manifest_parents(&self, manifest: &Digest) -> Vec<Digest> {
        self.state
            .lock()
            .manifest_parents
            .get(manifest)
            .cloned()
            .unwrap_or_default()
    }

    /// Every manifest reachable from `roots` (roots included), each with
    /// the root it was reached from.
    pub fn closure<'a>(
        &self,
        roots: impl IntoIterator<Item = &'a Digest>,
    ) -> HashMap<Digest, Digest> {
        let state = self.state.lock();
        let mut out = HashMap::new();
        for root in roots {
            let mut queue = VecDeque::from([root.clone()]);
            while let Some(d) = queue.pop_front() {
                if out.contains_key(&d) {
                    continue;
                }
                if let Some(e) = state.edges.get(&d) {
                    queue.extend(e.manifests.iter().cloned());
                }
                out.insert(d, root.clone());
            }
        }
        out
    }
}

type Read = (HashSet<Digest>, Vec<(Digest, Edges)>);

fn read_new(
    source: &ManifestSource,
    known: &HashSet<Digest>,
) -> Result<Read, crate::cache::CacheError> {
    let present: HashSet<Digest> = source.digests()?.into_iter().collect();
    let mut new = Vec::new();
    for d in present.iter().filter(|d| !known.contains(*d)) {
        // A manifest evicted since the listing, or unreadable: skipped.
        let Ok(Some(bytes)) = source.read(d) else {
            continue;
        };
        let edges = match references(&bytes) {
            Ok(r) => Edges {
                manifests: r.manifests.iter().filter_map(Descriptor::digest).collect(),
                blobs: r.blobs.iter().filter_map(Descriptor::digest).collect(),
            },
            Err(_) => Edges::default(),
        };
        new.push((d.clone(), edges));
    }
    Ok((present, new))
}

impl State {
    fn update(&mut self, count: u64, present: &HashSet<Digest>, new: Vec<(Digest, Edges)>) {
        self.edges.retain(|d, _| present.contains(d));
        self.edges.extend(new);
        self.blob_parents.clear();
        self.manifest_parents.clear();
        for (parent, e) in &self.edges {
            for b in &e.blobs {
                self.blob_parents
                    .entry(b.clone())
                    .or_default()
                    .push(parent.clone());
            }
            for m in &e.manifests {
                self.manifest_parents
                    .entry(m.clone())
                    .or_default()
                    .push(parent.clone());
            }
        }
        self.count = Some(count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        format!("sha256:{}", hex::encode([n; 32])).parse().unwrap()
    }

    #[test]
    fn parents_and_closure() {
        let mut s = State::default();
        let present: HashSet<Digest> = [d(1), d(2), d(3)].into_iter().collect();
        s.update(
            3,
            &present,
            vec![
                (
                    d(1),
                    Edges {
                        manifests: vec![d(2)],
                        blobs: vec![],
                    },
                ),
                (
                    d(2),
                    Edges {
                        manifests: vec![],
                        blobs: vec![d(10), d(11)],
                    },
                ),
                (
                    d(3),
                    Edges {
                        manifests: vec![],
                        blobs: vec![d(11)],
                    },
                ),
            ],
        );
        let g = Graph {
            state: parking_lot::Mutex::new(s),
            refreshing: Default::default(),
        };
        assert_eq!(g.blob_parents(&d(10)), vec![d(2)]);
        let mut shared = g.blob_parents(&d(11));
        shared.sort_by(|a, b| a.hex().cmp(b.hex()));
        assert_eq!(shared, vec![d(2), d(3)]);
        assert_eq!(g.manifest_parents(&d(2)), vec![d(1)]);
        let c = g.closure([&d(1)]);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&d(2)), Some(&d(1)));
        // A manifest gone from the store takes its edges with it.
        let present: HashSet<Digest> = [d(3)].into_iter().collect();
        g.state.lock().update(1, &present, vec![]);
        assert_eq!(g.blob_parents(&d(11)), vec![d(3)]);
        assert!(g.blob_parents(&d(10)).is_empty());
    }
}
