//! The blocked digests: `[policy] blocked_digests_file`, one digest a line
//! with an optional reason after whitespace; blank lines and lines
//! starting with `#` are skipped. A file with a bad line is refused whole
//! (the running list stays), naming the line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::registry::Digest;

/// The reason given when a line names none.
const DEFAULT_REASON: &str = "blocked by policy";

#[derive(Debug, Clone, Default)]
pub struct BlockedList {
    entries: HashMap<Digest, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BlockedListError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} line {line}: {message}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

impl BlockedList {
    pub fn load(path: &Path) -> Result<BlockedList, BlockedListError> {
        let text = std::fs::read_to_string(path).map_err(|source| BlockedListError::Read {
            path: path.to_owned(),
            source,
        })?;
        BlockedList::parse(&text).map_err(|(line, message)| BlockedListError::Line {
            path: path.to_owned(),
            line,
            message,
        })
    }

    /// The list in `text`, or the first bad line (1-based) and what is
    /// wrong with it.
    pub fn parse(text: &str) -> Result<BlockedList, (usize, String)> {
        let mut entries = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (digest, reason) = match line.split_once(char::is_whitespace) {
                Some((d, r)) => (d, r.trim()),
                None => (line, ""),
            };
            let digest: Digest = digest.parse().map_err(|e| (i + 1, format!("{e}")))?;
            let reason = if reason.is_empty() {
                DEFAULT_REASON
            } else {
                reason
            };
            entries.insert(digest, reason.to_owned());
        }
        Ok(BlockedList { entries })
    }

    pub fn reason(&self, digest: &Digest) -> Option<&str> {
        self.entries.get(digest).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn digests(&self) -> impl Iterator<Item = &Digest> {
        self.entries.keys()
    }

    /// Every entry, sorted by digest (for the admin API).
    pub fn entries(&self) -> Vec<(Digest, String)> {
        let mut all: Vec<_> = self
            .entries
            .iter()
            .map(|(d, r)| (d.clone(), r.clone()))
            .collect();
        all.sort_by(|a, b| a.0.hex().cmp(b.0.hex()));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    #[test]
    fn lines_comments_and_reasons() {
        let text = format!(
            "# known bad\n\n{}   CVE-2024-0001: remote code execution \n  {}\n",
            d(1),
            d(2)
        );
        let list = BlockedList::parse(&text).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(
            list.reason(&d(1).parse().unwrap()),
            Some("CVE-2024-0001: remote code execution")
        );
        assert_eq!(list.reason(&d(2).parse().unwrap()), Some(DEFAULT_REASON));
        assert_eq!(list.reason(&d(3).parse().unwrap()), None);
    }

    #[test]
    fn a_bad_line_is_named_and_refuses_the_file() {
        let text = format!("{}\nsha256:nothex reason\n", d(1));
        let (line, message) = BlockedList::parse(&text).unwrap_err();
        assert_eq!(line, 2);
        assert!(!message.is_empty());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blocked");
        std::fs::write(&path, text).unwrap();
        let e = BlockedList::load(&path).unwrap_err().to_string();
        assert!(e.contains("blocked line 2: "), "{e}");
        assert!(BlockedList::load(&dir.path().join("absent")).is_err());
    }
}
