//! `[[notifications]]`: receivers of events (a tag moved, a move refused,
//! an upstream down), each POSTed as JSON off the request path.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::HumanDuration;

/// The event names a receiver may ask for, as they appear in the JSON.
pub const EVENT_NAMES: [&str; 8] = [
    "tag_moved",
    "tag_move_refused",
    "blocked",
    "admission_denied",
    "signature_invalid",
    "digest_mismatch",
    "upstream_down",
    "upstream_up",
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NotificationConfig {
    /// Where events are POSTed (`http://` or `https://`). Redirects to
    /// another host are not followed.
    pub url: String,
    /// The events this receiver gets; empty (the default) means all of them.
    #[serde(default)]
    pub events: Vec<String>,
    /// One delivery attempt may take this long.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Attempts after the first when delivery fails (connection error,
    /// timeout, 5xx, 408, 429; not another 4xx or a redirect elsewhere);
    /// then the event is counted `failed`.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Events waiting for this receiver; when full, the oldest is dropped
    /// (and counted `dropped`).
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

fn default_retries() -> u32 {
    3
}

fn default_queue() -> usize {
    1000
}

impl NotificationConfig {
    pub fn new(url: &str) -> NotificationConfig {
        NotificationConfig {
            url: url.into(),
            events: Vec::new(),
            timeout: default_timeout(),
            retries: default_retries(),
            queue: default_queue(),
        }
    }

    /// Whether this receiver asked for the event `name`.
    pub fn wants(&self, name: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == name)
    }

    /// Why this entry is unusable, if it is.
    pub(super) fn problem(&self) -> Option<String> {
        match url::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => {
                return Some(format!(
                    "url {:?} must be an http:// or https:// URL with a host",
                    self.url
                ))
            }
        }
        if let Some(e) = self
            .events
            .iter()
            .find(|e| !EVENT_NAMES.contains(&e.as_str()))
        {
            return Some(format!(
                "events: {e:?} is not an event (one of {})",
                EVENT_NAMES.join(", ")
            ));
        }
        if self.timeout.0.is_zero() || self.queue == 0 {
            return Some("timeout and queue must be greater than zero".into());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_must_be_known_and_empty_means_all() {
        let mut n = NotificationConfig::new("http://hooks.example/in");
        assert_eq!(n.problem(), None);
        assert!(n.wants("tag_moved") && n.wants("upstream_up"));
        n.events = vec!["tag_moved".into()];
        assert!(n.wants("tag_moved") && !n.wants("upstream_up"));
        n.events = vec!["tag_move".into()];
        assert!(n.problem().unwrap().contains("\"tag_move\""));
        let n = NotificationConfig::new("ftp://hooks.example/in");
        assert!(n.problem().is_some());
    }
}
