//! Allow/deny lists of repository globs: per upstream, and per user.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::config::Config;
use crate::registry::RepoName;

/// A glob that does not compile.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    #[error("bad pattern {pattern:?}: {source}")]
    Bad {
        pattern: String,
        source: globset::Error,
    },
    #[error("{0}")]
    Set(#[source] globset::Error),
}

/// A user's access list that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("auth.access.{user}: {source}")]
pub struct AccessListError {
    pub user: String,
    pub source: PatternError,
}

/// Why a pull is refused; the text names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("denied by the rule deny = {pattern:?}")]
    Denied { pattern: String },
    #[error("not matched by any allow rule ({})", allow.join(", "))]
    NotAllowed { allow: Vec<String> },
    #[error("user {user} may pull only {}", patterns.join(", "))]
    User { user: String, patterns: Vec<String> },
}

/// Globs with `*` stopping at `/` and `**` crossing it, so `library/*`
/// means official images and not everything below them.
fn glob(pattern: &str) -> Result<Glob, PatternError> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|source| PatternError::Bad {
            pattern: pattern.to_owned(),
            source,
        })
}

pub(super) fn glob_set(patterns: &[String]) -> Result<GlobSet, PatternError> {
    let mut builder = GlobSetBuilder::new();
    for p in patterns {
        builder.add(glob(p)?);
    }
    builder.build().map_err(PatternError::Set)
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
    pub fn new(allow: &[String], deny: &[String]) -> Result<RepoRules, PatternError> {
        Ok(RepoRules {
            allow: glob_set(allow)?,
            allow_patterns: allow.to_vec(),
            deny: glob_set(deny)?,
            deny_patterns: deny.to_vec(),
        })
    }

    /// `Err` names the rule that refused `repo`.
    pub fn check(&self, repo: &str) -> Result<(), Refused> {
        if let Some(i) = self.deny.matches(repo).first() {
            return Err(Refused::Denied {
                pattern: self.deny_patterns[*i].clone(),
            });
        }
        if !self.allow_patterns.is_empty() && !self.allow.is_match(repo) {
            return Err(Refused::NotAllowed {
                allow: self.allow_patterns.clone(),
            });
        }
        Ok(())
    }
}

/// An upstream's rules that do not compile, with the key that holds them.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {source}")]
pub struct RulesError {
    pub key: String,
    pub source: PatternError,
}

/// Every upstream's `allow`/`deny` rules, by upstream name. Kept with the
/// client policy rather than in the upstream client: whether a repository
/// may be pulled is decided where the request is authorised.
#[derive(Default)]
pub struct UpstreamRules {
    by_upstream: HashMap<String, Arc<RepoRules>>,
}

impl UpstreamRules {
    pub fn from_config(config: &Config) -> Result<UpstreamRules, RulesError> {
        let mut by_upstream = HashMap::new();
        for (i, u) in config.upstreams().iter().enumerate() {
            let rules = RepoRules::new(&u.allow, &u.deny).map_err(|source| RulesError {
                key: format!("upstreams[{i}] ({}).allow/deny", u.name),
                source,
            })?;
            by_upstream.insert(u.name.clone(), Arc::new(rules));
        }
        Ok(UpstreamRules { by_upstream })
    }

    /// Whether `upstream`'s rules let `repo` (as the client names it) be
    /// pulled. An upstream without rules allows everything.
    pub fn check(&self, upstream: &str, repo: &RepoName) -> Result<(), Refused> {
        match self.by_upstream.get(upstream) {
            Some(rules) => rules.check(repo.as_str()),
            None => Ok(()),
        }
    }

    /// Keeps `previous`'s rules for upstreams this generation no longer
    /// names: a removed upstream serves until the restart it needs, under
    /// the rules it had.
    pub fn inherit(&mut self, previous: &UpstreamRules) {
        for (name, rules) in &previous.by_upstream {
            self.by_upstream
                .entry(name.clone())
                .or_insert_with(|| rules.clone());
        }
    }
}

/// Per-user access lists, globs over `<upstream>/<repository>`.
pub struct UserAccess {
    by_user: HashMap<String, (GlobSet, Vec<String>)>,
}

impl UserAccess {
    pub fn new(lists: &BTreeMap<String, Vec<String>>) -> Result<UserAccess, AccessListError> {
        let mut by_user = HashMap::new();
        for (user, patterns) in lists {
            let set = glob_set(patterns).map_err(|source| AccessListError {
                user: user.clone(),
                source,
            })?;
            by_user.insert(user.clone(), (set, patterns.clone()));
        }
        Ok(UserAccess { by_user })
    }

    /// Users without a list may pull whatever the upstream rules allow.
    pub fn check(&self, user: &str, upstream: &str, repo: &str) -> Result<(), Refused> {
        match self.by_user.get(user) {
            None => Ok(()),
            Some((set, _)) if set.is_match(format!("{upstream}/{repo}")) => Ok(()),
            Some((_, patterns)) => Err(Refused::User {
                user: user.to_owned(),
                patterns: patterns.clone(),
            }),
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
            .to_string()
            .contains("library/evil"));
        assert!(r.check("library/a/b").is_err(), "* does not cross /");
        assert!(r
            .check("other/app")
            .unwrap_err()
            .to_string()
            .contains("allow"));
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
            .to_string()
            .contains("ci"));
        assert!(a.check("ci", "ghcr.io", "library/alpine").is_err());
        assert!(a.check("admin", "ghcr.io", "anything").is_ok());
    }

    #[test]
    fn rules_by_upstream_name_with_the_key_in_errors() {
        let mut config = Config::default();
        let mut local = crate::config::UpstreamConfig::new("local", "http://127.0.0.1:1");
        local.deny = vec!["secret/*".into()];
        config.upstreams = Some(vec![local.clone()]);
        let rules = UpstreamRules::from_config(&config).unwrap();
        let repo = |r: &str| RepoName::parse(r).unwrap();
        assert_eq!(
            rules
                .check("local", &repo("secret/app"))
                .unwrap_err()
                .to_string(),
            "denied by the rule deny = \"secret/*\""
        );
        assert!(rules.check("local", &repo("public/app")).is_ok());

        // A later generation without `local` keeps its rules.
        let other = Config {
            upstreams: Some(vec![crate::config::UpstreamConfig::new(
                "other",
                "http://127.0.0.1:2",
            )]),
            ..Config::default()
        };
        let mut next = UpstreamRules::from_config(&other).unwrap();
        next.inherit(&rules);
        assert!(next.check("local", &repo("secret/app")).is_err());

        local.allow = vec!["a[".into()];
        config.upstreams = Some(vec![local]);
        let e = UpstreamRules::from_config(&config)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("upstreams[0] (local).allow/deny: bad pattern"),
            "{e}"
        );
    }
}
