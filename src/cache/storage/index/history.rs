//! Each tag's history: its recent moves (followed, refused, accepted), at
//! most [`HISTORY_LEN`], when it was last flagged for moving too often, and
//! since when the upstream has answered 404 for it. Only in the index: a
//! rebuilt index starts every history again.

use serde::{Deserialize, Serialize};

use super::{Index, IndexError};
use crate::registry::Digest;

/// Moves kept per tag; older ones are forgotten.
pub const HISTORY_LEN: usize = 20;

/// What became of a move the upstream made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveAction {
    /// The tag now points at the new digest.
    Followed,
    /// An immutable tag: the old digest is still served.
    Refused,
    /// An operator accepted a refused move (`regcache tags accept`).
    Accepted,
    /// The upstream moved an immutable tag back to the digest served: the
    /// refused move before it is no longer waiting.
    Withdrawn,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagMove {
    /// Unix milliseconds.
    pub at: u64,
    pub old_digest: Digest,
    pub new_digest: Digest,
    pub action: MoveAction,
    /// The new manifest's media type and size, as the upstream announced
    /// them: what an accepted move records as the tag.
    pub media_type: String,
    pub size: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TagHistory {
    /// Oldest first.
    pub moves: Vec<TagMove>,
    /// When the tag was last flagged for churn, unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flagged_at: Option<u64>,
    /// Since when the upstream answers 404 for the tag while it is still
    /// served (`keep_deleted`), unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<u64>,
}

impl TagHistory {
    /// Appends a move, forgetting the oldest beyond [`HISTORY_LEN`].
    pub fn push(&mut self, m: TagMove) {
        self.moves.push(m);
        if self.moves.len() > HISTORY_LEN {
            let extra = self.moves.len() - HISTORY_LEN;
            self.moves.drain(..extra);
        }
    }

    /// The upstream's moves (followed or refused) at or after `since`.
    pub fn moves_since(&self, since: u64) -> usize {
        self.moves
            .iter()
            .filter(|m| m.at >= since && m.action != MoveAction::Accepted)
            .count()
    }

    /// The refused move waiting to be accepted: the last move, if refused.
    pub fn pending(&self) -> Option<&TagMove> {
        self.moves
            .last()
            .filter(|m| m.action == MoveAction::Refused)
    }

    /// Whether a move just recorded at `now` flags the tag: more than
    /// `limit` moves within `window_ms`, and not flagged already within it.
    /// Notes the flag when it does.
    pub fn flag_churn(&mut self, now: u64, limit: u32, window_ms: u64) -> bool {
        let since = now.saturating_sub(window_ms);
        if self.moves_since(since) <= limit as usize || self.flagged_at.is_some_and(|f| f >= since)
        {
            return false;
        }
        self.flagged_at = Some(now);
        true
    }
}

impl Index {
    /// A tag's history; empty when it never moved.
    pub fn tag_history(
        &self,
        upstream: &str,
        repo: &str,
        tag: &str,
    ) -> Result<TagHistory, IndexError> {
        let t = self.trees()?;
        Ok(self
            .sled(t.tag_history.get(Self::tag_key(upstream, repo, tag)))?
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or_default())
    }

    pub fn set_tag_history(
        &self,
        upstream: &str,
        repo: &str,
        tag: &str,
        history: &TagHistory,
    ) -> Result<(), IndexError> {
        let value = serde_json::to_vec(history).unwrap_or_default();
        let t = self.trees()?;
        self.sled(
            t.tag_history
                .insert(Self::tag_key(upstream, repo, tag), value),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    fn moved(at: u64, n: u8, action: MoveAction) -> TagMove {
        TagMove {
            at,
            old_digest: digest(n),
            new_digest: digest(n + 1),
            action,
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: 1,
        }
    }

    #[test]
    fn the_history_keeps_the_last_twenty_moves() {
        let mut h = TagHistory::default();
        for i in 0..25u8 {
            h.push(moved(u64::from(i), i, MoveAction::Followed));
        }
        assert_eq!(h.moves.len(), HISTORY_LEN);
        assert_eq!(h.moves[0].at, 5, "the oldest five are forgotten");
        assert_eq!(h.moves[19].at, 24);
    }

    #[test]
    fn only_a_last_refused_move_is_pending() {
        let mut h = TagHistory::default();
        assert!(h.pending().is_none());
        h.push(moved(1, 1, MoveAction::Refused));
        assert_eq!(h.pending().map(|m| m.at), Some(1));
        h.push(moved(2, 1, MoveAction::Accepted));
        assert!(h.pending().is_none());
        h.push(moved(3, 2, MoveAction::Refused));
        h.push(moved(4, 3, MoveAction::Withdrawn));
        assert!(h.pending().is_none(), "the upstream moved back");
    }

    #[test]
    fn churn_is_flagged_once_per_window_past_the_limit() {
        let mut h = TagHistory::default();
        let (limit, window) = (2, 100);
        for at in [10, 20] {
            h.push(moved(at, 1, MoveAction::Followed));
            assert!(!h.flag_churn(at, limit, window));
        }
        h.push(moved(30, 1, MoveAction::Refused));
        assert!(
            h.flag_churn(30, limit, window),
            "a third move in the window"
        );
        h.push(moved(40, 1, MoveAction::Followed));
        assert!(!h.flag_churn(40, limit, window), "flagged already");
        // An accepted move is the operator's, not the upstream's.
        h.push(moved(45, 1, MoveAction::Accepted));
        assert_eq!(h.moves_since(0), 4);
        for at in [200, 210] {
            h.push(moved(at, 1, MoveAction::Followed));
            assert!(!h.flag_churn(at, limit, window));
        }
        h.push(moved(220, 1, MoveAction::Followed));
        assert!(h.flag_churn(220, limit, window), "a new window");
    }

    #[test]
    fn histories_are_stored_per_tag() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index")).unwrap();
        assert_eq!(
            index.tag_history("up", "a/b", "v1").unwrap(),
            TagHistory::default()
        );
        let mut h = TagHistory::default();
        h.push(moved(1, 1, MoveAction::Followed));
        index.set_tag_history("up", "a/b", "v1", &h).unwrap();
        assert_eq!(index.tag_history("up", "a/b", "v1").unwrap(), h);
        assert!(index
            .tag_history("up", "a/b", "v2")
            .unwrap()
            .moves
            .is_empty());
    }
}
