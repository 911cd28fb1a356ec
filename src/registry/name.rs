use std::fmt;

/// A repository name, validated against the distribution grammar:
/// components of `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` joined by `/`,
/// at most 255 characters in all.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

pub const MAX_NAME_LEN: usize = 255;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("repository name is empty")]
    Empty,
    #[error("repository name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("repository name component {0:?} is invalid")]
    BadComponent(String),
}

impl RepoName {
    pub fn parse(s: &str) -> Result<RepoName, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        for component in s.split('/') {
            if !valid_component(component) {
                return Err(NameError::BadComponent(
                    component.chars().take(64).collect(),
                ));
            }
        }
        Ok(RepoName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn components(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    /// The name without its first component, if it has more than one.
    pub fn without_first_component(&self) -> Option<RepoName> {
        self.0
            .split_once('/')
            .map(|(_, rest)| RepoName(rest.to_owned()))
    }

    /// Docker Hub keeps official images under `library/`; clients that name
    /// `alpine` mean `library/alpine`.
    pub fn with_library_prefix(&self) -> RepoName {
        if self.0.contains('/') {
            self.clone()
        } else {
            RepoName(format!("library/{}", self.0))
        }
    }
}

/// Shaped like a registry host rather than a repository component: it has
/// a dot or a port, or is `localhost` (Docker Hub namespaces cannot
/// contain dots).
pub fn looks_like_host(segment: &str) -> bool {
    segment.contains('.') || segment.contains(':') || segment == "localhost"
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        let sep = bytes[i];
        while i < bytes.len() && bytes[i] == sep {
            i += 1;
        }
        let run = i - start;
        let ok = match sep {
            b'.' => run == 1,
            b'_' => run <= 2,
            b'-' => true,
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_spec_names() {
        for ok in [
            "alpine",
            "library/alpine",
            "ghcr.io/owner/app",
            "a/b/c/d",
            "my_app",
            "my__app",
            "my---app",
            "x.y",
            "blobs/manifests",
            "0",
        ] {
            assert!(RepoName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "",
            "Alpine",
            "a//b",
            "/a",
            "a/",
            "a..b",
            "a___b",
            "-a",
            "a-",
            "a/../b",
            "..",
            "host:5000/x",
            "a b",
            "a%2fb",
        ] {
            assert!(RepoName::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(RepoName::parse(&"a".repeat(256)), Err(NameError::TooLong));
    }

    #[test]
    fn library_prefix_only_for_single_component() {
        let one = RepoName::parse("alpine").unwrap();
        assert_eq!(one.with_library_prefix().as_str(), "library/alpine");
        let two = RepoName::parse("bitnami/redis").unwrap();
        assert_eq!(two.with_library_prefix().as_str(), "bitnami/redis");
    }
}
