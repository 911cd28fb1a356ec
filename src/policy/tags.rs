//! Immutable tags: per upstream, globs over `repository:tag` whose first
//! digest seen is the one served, whatever the upstream later says.

use std::sync::Arc;

use globset::GlobSet;

use super::access::{glob_set, PatternError};

/// An upstream's `immutable_tags`, compiled. `*` stops at `/`, `**/`
/// stands for any number of path components: `library/*:3.*` is every
/// official image's 3.x tags, `team/**/*:v*` every `v` tag below `team/`.
/// Cheap to clone: upstream settings are cloned per request.
#[derive(Clone)]
pub struct ImmutableTags {
    set: Arc<GlobSet>,
    patterns: Arc<[String]>,
}

impl ImmutableTags {
    pub fn new(patterns: &[String]) -> Result<ImmutableTags, PatternError> {
        Ok(ImmutableTags {
            set: Arc::new(glob_set(patterns)?),
            patterns: patterns.into(),
        })
    }

    /// The first pattern that makes `repository:tag` immutable, if any.
    pub fn matching(&self, repository: &str, tag: &str) -> Option<&str> {
        if self.patterns.is_empty() {
            return None;
        }
        let subject = format!("{repository}:{tag}");
        self.set
            .matches(&subject)
            .first()
            .map(|&i| self.patterns[i].as_str())
    }
}

impl std::fmt::Debug for ImmutableTags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.patterns.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(p: &[&str]) -> ImmutableTags {
        ImmutableTags::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn globs_match_repository_colon_tag() {
        let t = tags(&["library/*:3.*", "team/*:v*"]);
        assert_eq!(t.matching("library/alpine", "3.20"), Some("library/*:3.*"));
        assert_eq!(t.matching("library/alpine", "latest"), None);
        assert_eq!(t.matching("library/alpine", "13.0"), None);
        assert_eq!(t.matching("team/app", "v1.2"), Some("team/*:v*"));
        // `*` stops at `/`: a nested repository is not matched by `team/*`.
        assert_eq!(t.matching("team/sub/app", "v1"), None);
        assert_eq!(t.matching("other/app", "v1"), None);
        let deep = tags(&["team/**/*:v*"]);
        assert_eq!(deep.matching("team/sub/app", "v1"), Some("team/**/*:v*"));
        assert_eq!(deep.matching("team/app", "v1"), Some("team/**/*:v*"));
        assert_eq!(deep.matching("team/sub/app", "latest"), None);
        assert_eq!(tags(&[]).matching("team/app", "v1"), None);
        assert!(ImmutableTags::new(&["a[".to_string()]).is_err());
    }
}
