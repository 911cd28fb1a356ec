//! The events, and their JSON: `{"event": "<name>", "time": "<RFC 3339>",
//! ...fields}`.

use serde::Serialize;

/// Something a receiver may want to hear about. Digests are strings
/// (`sha256:...`) as they appear in the JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Revalidation found the tag at a new digest, and followed it.
    TagMoved {
        upstream: String,
        repository: String,
        tag: String,
        old_digest: String,
        new_digest: String,
    },
    /// The upstream moved an immutable tag; the old digest is still served.
    TagMoveRefused {
        upstream: String,
        repository: String,
        tag: String,
        old_digest: String,
        new_digest: String,
        /// The `immutable_tags` pattern that matched.
        pattern: String,
    },
    /// A blocked digest was asked for and refused.
    Blocked {
        upstream: String,
        repository: String,
        digest: String,
        reason: String,
    },
    /// The admission webhook denied a manifest.
    AdmissionDenied {
        upstream: String,
        repository: String,
        digest: String,
        reason: String,
    },
    /// A manifest's signature is missing or does not verify.
    SignatureInvalid {
        upstream: String,
        repository: String,
        digest: String,
        reason: String,
    },
    /// Upstream content did not hash to the digest it was fetched for.
    DigestMismatch {
        upstream: String,
        repository: String,
        expected: String,
        actual: String,
    },
    /// The upstream stopped answering (unreachable, timing out, or its
    /// circuit breaker opened).
    UpstreamDown { upstream: String, reason: String },
    /// It answers again.
    UpstreamUp { upstream: String },
}

impl Event {
    /// The name receivers list in `events` (one of
    /// [`crate::config::EVENT_NAMES`]).
    pub fn name(&self) -> &'static str {
        match self {
            Event::TagMoved { .. } => "tag_moved",
            Event::TagMoveRefused { .. } => "tag_move_refused",
            Event::Blocked { .. } => "blocked",
            Event::AdmissionDenied { .. } => "admission_denied",
            Event::SignatureInvalid { .. } => "signature_invalid",
            Event::DigestMismatch { .. } => "digest_mismatch",
            Event::UpstreamDown { .. } => "upstream_down",
            Event::UpstreamUp { .. } => "upstream_up",
        }
    }

    /// The JSON a receiver gets (and the audit log's line), stamped `at`.
    pub fn to_json(&self, at: std::time::SystemTime) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert(
                "time".into(),
                humantime::format_rfc3339_millis(at).to_string().into(),
            );
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EVENT_NAMES;

    #[test]
    fn every_event_is_named_as_the_config_names_it_and_carries_its_fields() {
        let s = String::new;
        let events = [
            Event::TagMoved {
                upstream: s(),
                repository: s(),
                tag: s(),
                old_digest: s(),
                new_digest: s(),
            },
            Event::TagMoveRefused {
                upstream: s(),
                repository: s(),
                tag: s(),
                old_digest: s(),
                new_digest: s(),
                pattern: s(),
            },
            Event::Blocked {
                upstream: s(),
                repository: s(),
                digest: s(),
                reason: s(),
            },
            Event::AdmissionDenied {
                upstream: s(),
                repository: s(),
                digest: s(),
                reason: s(),
            },
            Event::SignatureInvalid {
                upstream: s(),
                repository: s(),
                digest: s(),
                reason: s(),
            },
            Event::DigestMismatch {
                upstream: s(),
                repository: s(),
                expected: s(),
                actual: s(),
            },
            Event::UpstreamDown {
                upstream: s(),
                reason: s(),
            },
            Event::UpstreamUp { upstream: s() },
        ];
        let names: Vec<&str> = events.iter().map(Event::name).collect();
        assert_eq!(names, EVENT_NAMES);
        for e in &events {
            let v = e.to_json(std::time::UNIX_EPOCH);
            assert_eq!(v["event"], e.name());
            assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
            assert!(v["upstream"].is_string());
        }
        let blocked = events[2].to_json(std::time::UNIX_EPOCH);
        for field in ["repository", "digest", "reason"] {
            assert!(blocked[field].is_string(), "{field}");
        }
    }
}
