//! Allow/deny lists of repository globs.

use std::collections::HashMap;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

/// Globs with `*` stopping at `/` and `**` crossing it, so `library/*`
/// means official images and not everything below them.
fn glob(pattern: &str) -> Result<Glob, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("bad pattern {pattern:?}: {e}"))
}

fn glob_set(patterns: &[String]) -> Result<GlobSet, String> {
    let mut builder = GlobSetBuilder::new();
    for p in patterns {
        builder.add(glob(p)?);
    }
    builder.build().map_err(|e| e.to_string())
}

/// An upstream's `allow`/`deny` lists. `deny` wins; an empty `allow`
/// allows everything not denied.
pub struct RepoRules {
    allow: GlobSet,
    allow_patterns: Vec<String>,
    deny: GlobSet,
    deny_patterns: Vec<String>,
}

impl RepoRules {
    pub fn new(allow: &[String], deny: &[String]) -> Result<RepoRules, String> {
        Ok(RepoRules {
            allow: glob_set(allow)?,
            allow_patterns: allow.to_vec(),
            deny: glob_set(deny)?,
            deny_patterns: deny.to_vec(),
        })
    }

    /// `Err` names the rule that refused `repo`.
    pub fn check(&self, repo: &str) -> Result<(), String> {
        if let Some(i) = self.deny.matches(repo).first() {
            return Err(format!(
                "denied by the rule deny = {:?}",
                self.deny_patterns[*i]
            ));
        }
        if !self.allow_patterns.is_empty() && !self.allow.is_match(repo) {
            return Err(format!(
                "not matched by any allow rule ({})",
                self.allow_patterns.join(", ")
            ));
        }
        Ok(())
    }
}

/// Per-user access lists, globs over `<upstream>/<repository>`.
pub struct UserAccess {
    by_user: HashMap<String, (GlobSet, Vec<String>)>,
}

impl UserAccess {
    pub fn new(
        lists: &std::collections::BTreeMap<String, Vec<String>>,
    ) -> Result<UserAccess, String> {
        let mut by_user = HashMap::new();
        for (user, patterns) in lists {
            let set = glob_set(patterns).map_err(|e| format!("auth.access.{user}: {e}"))?;
            by_user.insert(user.clone(), (set, patterns.clone()));
        }
        Ok(UserAccess { by_user })
    }

    /// Users without a list may pull whatever the upstream rules allow.
    pub fn check(&self, user: &str, upstream: &str, repo: &str) -> Result<(), String> {
        match self.by_user.get(user) {
            None => Ok(()),
            Some((set, _)) if set.is_match(format!("{upstream}/{repo}")) => Ok(()),
            Some((_, patterns)) => {
                Err(format!("user {user} may pull only {}", patterns.join(", ")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str]) -> RepoRules {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        RepoRules::new(&v(allow), &v(deny)).unwrap()
    }

    #[test]
    fn deny_wins_and_single_star_stays_in_one_component() {
        let r = rules(&["library/*", "myorg/**"], &["library/evil"]);
        assert!(r.check("library/alpine").is_ok());
        assert!(r.check("myorg/team/app").is_ok());
        assert!(r
            .check("library/evil")
            .unwrap_err()
            .contains("library/evil"));
        assert!(r.check("library/a/b").is_err(), "* does not cross /");
        assert!(r.check("other/app").unwrap_err().contains("allow"));
        assert!(rules(&[], &[]).check("anything/at/all").is_ok());
        assert!(rules(&[], &["**"]).check("x").is_err());
        assert!(RepoRules::new(&["a[".into()], &[]).is_err());
    }

    #[test]
    fn user_lists() {
        let mut lists = std::collections::BTreeMap::new();
        lists.insert("ci".to_string(), vec!["docker.io/library/*".to_string()]);
        let a = UserAccess::new(&lists).unwrap();
        assert!(a.check("ci", "docker.io", "library/alpine").is_ok());
        assert!(a
            .check("ci", "docker.io", "myorg/app")
            .unwrap_err()
            .contains("ci"));
        assert!(a.check("ci", "ghcr.io", "library/alpine").is_err());
        assert!(a.check("admin", "ghcr.io", "anything").is_ok());
    }
}
