//! `Range: bytes=...` for blob requests (RFC 9110 §14).

/// What a Range header asks of a blob of known size.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No range, another unit, several ranges, or an invalid one (`5-2`,
    /// `oops`): send the whole blob. RFC 9110 §14.2 lets a server ignore
    /// Range; a 416 is only for a valid range the blob cannot satisfy.
    Full,
    /// Bytes `[start, end)`, within the blob.
    Partial { start: u64, end: u64 },
    /// Syntactically valid but outside the blob: 416.
    Unsatisfiable,
}

/// A `Range` header that is not a valid `bytes` range-spec.
struct Invalid;

pub fn parse_range(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    parse_spec(spec, size).unwrap_or(RangeRequest::Full)
}

fn parse_spec(spec: &str, size: u64) -> Result<RangeRequest, Invalid> {
    let (first, last) = spec.trim().split_once('-').ok_or(Invalid)?;
    let number = |s: &str| -> Result<Option<u64>, Invalid> {
        let s = s.trim();
        if s.is_empty() {
            Ok(None)
        } else if s.bytes().all(|b| b.is_ascii_digit()) {
            // All digits, so only overflow fails: a position past any blob.
            Ok(Some(s.parse().unwrap_or(u64::MAX)))
        } else {
            Err(Invalid)
        }
    };
    match (number(first)?, number(last)?) {
        (Some(start), last) => {
            // RFC 9110 §14.1.1: a last-pos below the first-pos is invalid.
            if last.is_some_and(|l| l < start) {
                return Err(Invalid);
            }
            if start >= size {
                return Ok(RangeRequest::Unsatisfiable);
            }
            let end = last.map_or(size, |l| l.saturating_add(1).min(size));
            Ok(RangeRequest::Partial { start, end })
        }
        (None, Some(suffix)) => {
            if suffix == 0 || size == 0 {
                return Ok(RangeRequest::Unsatisfiable);
            }
            Ok(RangeRequest::Partial {
                start: size.saturating_sub(suffix),
                end: size,
            })
        }
        (None, None) => Err(Invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeRequest::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), Full);
        assert_eq!(
            parse_range(Some("bytes=0-"), 10),
            Partial { start: 0, end: 10 }
        );
        assert_eq!(
            parse_range(Some("bytes=2-4"), 10),
            Partial { start: 2, end: 5 }
        );
        assert_eq!(
            parse_range(Some("bytes=2-400"), 10),
            Partial { start: 2, end: 10 }
        );
        assert_eq!(
            parse_range(Some("bytes=-3"), 10),
            Partial { start: 7, end: 10 }
        );
        assert_eq!(
            parse_range(Some("bytes=-30"), 10),
            Partial { start: 0, end: 10 }
        );
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), Full);
        assert_eq!(parse_range(Some("bytes=999999999-"), 10), Unsatisfiable);
        assert_eq!(
            parse_range(Some("bytes=99999999999999999999999-"), 10),
            Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=2-99999999999999999999999"), 10),
            Partial { start: 2, end: 10 }
        );
        // Invalid specs are ignored: the whole blob, not a 416.
        for invalid in ["bytes=5-2", "bytes=abc", "bytes=-", "bytes=+1-2"] {
            assert_eq!(parse_range(Some(invalid), 10), Full, "{invalid}");
        }
    }
}
