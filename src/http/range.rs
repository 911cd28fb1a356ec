//! `Range: bytes=...` for blob requests (RFC 9110 §14).

/// What a Range header asks of a blob of known size.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No range, another unit, or several ranges: send the whole blob
    /// (RFC 9110 lets a server ignore Range).
    Full,
    /// Bytes `[start, end)`, within the blob.
    Partial { start: u64, end: u64 },
    /// Syntactically valid but outside the blob: 416.
    Unsatisfiable,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed Range header {0:?}")]
pub struct RangeError(pub String);

pub fn parse_range(header: Option<&str>, size: u64) -> Result<RangeRequest, RangeError> {
    let Some(header) = header else {
        return Ok(RangeRequest::Full);
    };
    let malformed = || RangeError(header.chars().take(100).collect());
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Ok(RangeRequest::Full);
    };
    if spec.contains(',') {
        return Ok(RangeRequest::Full);
    }
    let (first, last) = spec.trim().split_once('-').ok_or_else(malformed)?;
    let number = |s: &str| -> Result<Option<u64>, RangeError> {
        let s = s.trim();
        if s.is_empty() {
            Ok(None)
        } else if s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse().map(Some).map_err(|_| malformed())
        } else {
            Err(malformed())
        }
    };
    match (number(first)?, number(last)?) {
        (Some(start), last) => {
            if last.is_some_and(|l| l < start) {
                return Err(malformed());
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
        (None, None) => Err(malformed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeRequest::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), Ok(Full));
        assert_eq!(
            parse_range(Some("bytes=0-"), 10),
            Ok(Partial { start: 0, end: 10 })
        );
        assert_eq!(
            parse_range(Some("bytes=2-4"), 10),
            Ok(Partial { start: 2, end: 5 })
        );
        assert_eq!(
            parse_range(Some("bytes=2-400"), 10),
            Ok(Partial { start: 2, end: 10 })
        );
        assert_eq!(
            parse_range(Some("bytes=-3"), 10),
            Ok(Partial { start: 7, end: 10 })
        );
        assert_eq!(
            parse_range(Some("bytes=-30"), 10),
            Ok(Partial { start: 0, end: 10 })
        );
        assert_eq!(parse_range(Some("bytes=10-"), 10), Ok(Unsatisfiable));
        assert_eq!(parse_range(Some("bytes=-0"), 10), Ok(Unsatisfiable));
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), Ok(Full));
        assert_eq!(parse_range(Some("items=0-1"), 10), Ok(Full));
        assert!(parse_range(Some("bytes=abc"), 10).is_err());
        assert!(parse_range(Some("bytes=5-2"), 10).is_err());
        assert!(parse_range(Some("bytes=-"), 10).is_err());
        assert!(parse_range(Some("bytes=+1-2"), 10).is_err());
        assert!(parse_range(Some("bytes=99999999999999999999999-"), 10).is_err());
    }
}
