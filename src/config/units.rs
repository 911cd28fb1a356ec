//! Units written the way people write them: sizes and durations.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A size written as "50GiB", "512MiB", "1TB", "1.5GiB" (or a number of
/// bytes). Binary units (KiB, MiB, GiB, TiB) are powers of 1024; decimal
/// ones (KB, MB, GB, TB; K, M, G, T) powers of 1000.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

const SIZE_UNITS: [(&str, u64); 13] = [
    ("tib", 1 << 40),
    ("gib", 1 << 30),
    ("mib", 1 << 20),
    ("kib", 1 << 10),
    ("tb", 1_000_000_000_000),
    ("gb", 1_000_000_000),
    ("mb", 1_000_000),
    ("kb", 1_000),
    ("t", 1_000_000_000_000),
    ("g", 1_000_000_000),
    ("m", 1_000_000),
    ("k", 1_000),
    ("b", 1),
];

/// Why a size does not parse; the text names the value as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("invalid size {input:?}: unknown unit {unit:?} (use e.g. 512MiB, 50GiB, 1TB)")]
    UnknownUnit { input: String, unit: String },
    #[error("invalid size {input:?}: expected a number and a unit, e.g. 50GiB")]
    NotANumber { input: String },
    #[error("invalid size {input:?}")]
    OutOfRange { input: String },
}

impl std::str::FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let unit = unit.trim();
        let multiplier = if unit.is_empty() {
            1
        } else {
            SIZE_UNITS
                .iter()
                .find(|(u, _)| *u == unit)
                .map(|(_, m)| *m)
                .ok_or_else(|| SizeError::UnknownUnit {
                    input: s.to_owned(),
                    unit: unit.to_owned(),
                })?
        };
        let value: f64 = number.parse().map_err(|_| SizeError::NotANumber {
            input: s.to_owned(),
        })?;
        let bytes = value * multiplier as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(SizeError::OutOfRange {
                input: s.to_owned(),
            });
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    /// The unit, binary or decimal, that states the size exactly with the
    /// smallest number: "50GB" prints as written (not 48828125KiB), and the
    /// printed form reads back to the same number.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (number, unit) = [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
            ("TB", 1_000_000_000_000),
            ("GB", 1_000_000_000),
            ("MB", 1_000_000),
            ("KB", 1_000),
        ]
        .into_iter()
        .filter(|(_, m)| self.0 >= *m && self.0 % m == 0)
        .map(|(unit, m)| (self.0 / m, unit))
        .min()
        .unwrap_or((self.0, "B"));
        write!(f, "{number}{unit}")
    }
}

impl ByteSize {
    /// For people, not for config files: one decimal in the largest binary
    /// unit that fits ("1.5 GiB", "512 B").
    pub fn approx(self) -> String {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut v = self.0 as f64;
        let mut unit = 0;
        while v >= 1024.0 && unit < UNITS.len() - 1 {
            v /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            format!("{} B", self.0)
        } else {
            format!("{v:.1} {}", UNITS[unit])
        }
    }
}

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// A size written as text ("50GiB"), or as a bare number of bytes.
fn text_or_bytes<'de, D, T>(d: D, bytes: impl FnOnce(u64) -> T) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Bytes(u64),
    }
    match Raw::deserialize(d)? {
        Raw::Bytes(b) => Ok(bytes(b)),
        Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        text_or_bytes(d, ByteSize)
    }
}

/// Free space to keep: a size ("1GiB") or a share of the filesystem
/// ("5%").
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FreeSpace {
    Bytes(ByteSize),
    /// Percent of the filesystem's size, 0 to 100.
    Percent(f64),
}

impl std::str::FromStr for FreeSpace {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().strip_suffix('%') {
            Some(number) => match number.trim().parse::<f64>() {
                Ok(p) if (0.0..=100.0).contains(&p) => Ok(FreeSpace::Percent(p)),
                Ok(_) => Err(SizeError::OutOfRange {
                    input: s.to_owned(),
                }),
                Err(_) => Err(SizeError::NotANumber {
                    input: s.to_owned(),
                }),
            },
            None => s.parse().map(FreeSpace::Bytes),
        }
    }
}

impl fmt::Display for FreeSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FreeSpace::Bytes(b) => b.fmt(f),
            FreeSpace::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for FreeSpace {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for FreeSpace {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        text_or_bytes(d, |b| FreeSpace::Bytes(ByteSize(b)))
    }
}

/// A duration written as "5m", "30s", "7d". A bare number is refused:
/// `7` could mean seconds or milliseconds, and `"7"` is refused by the
/// parser, so both say to write the unit.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(serde_json::Number),
        }
        match Raw::deserialize(d)? {
            // Zero is zero in every unit ("0" turns the scrub off).
            Raw::Number(n) if n.as_u64() == Some(0) => Ok(HumanDuration(Duration::ZERO)),
            Raw::Number(n) => Err(serde::de::Error::custom(needs_a_unit(&n.to_string()))),
            Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
        }
    }
}

fn needs_a_unit(n: &str) -> String {
    let example = if n.chars().all(|c| c.is_ascii_digit()) {
        format!("{n}s")
    } else {
        "7s".into()
    };
    format!(
        "invalid duration {n}: a number needs a unit, write \"{example}\" (or 500ms, 5m, 1h, 7d)"
    )
}

/// "7" says nothing about its unit either: the same advice as for 7.
fn parse_duration(t: &str) -> Result<HumanDuration, String> {
    let t = t.trim();
    if !t.is_empty() && t.chars().all(|c| c == '0') {
        return Ok(HumanDuration(Duration::ZERO));
    }
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(needs_a_unit(t));
    }
    humantime::parse_duration(t)
        .map(HumanDuration)
        .map_err(|e| format!("invalid duration {t:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        #[derive(Deserialize)]
        struct T {
            d: HumanDuration,
        }
        let parse = |v: &str| toml::from_str::<T>(&format!("d = {v}")).map(|t| t.d.get());
        assert_eq!(parse("\"7s\"").unwrap(), Duration::from_secs(7));
        assert_eq!(parse("\"1h 30m\"").unwrap(), Duration::from_secs(5400));
        for bare in ["7", "\"7\""] {
            let e = parse(bare).unwrap_err().to_string();
            assert!(e.contains("write \"7s\""), "{bare}: {e}");
        }
        let e = parse("7.5").unwrap_err().to_string();
        assert!(e.contains("needs a unit"), "{e}");
        // Zero needs no unit.
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
        assert_eq!(parse("\"0\"").unwrap(), Duration::ZERO);
        assert!(parse("\"soon\"").is_err());
    }

    #[test]
    fn sizes_parse_and_print_back() {
        let p = |s: &str| s.parse::<ByteSize>().map(|b| b.0);
        assert_eq!(p("512MiB"), Ok(512 << 20));
        assert_eq!(p("50GiB"), Ok(50 << 30));
        assert_eq!(p("1TB"), Ok(1_000_000_000_000));
        assert_eq!(p("1.5 GiB"), Ok(3 << 29));
        assert_eq!(p("4096"), Ok(4096));
        assert_eq!(p("10m"), Ok(10_000_000));
        assert!(p("ten GiB").is_err());
        assert!(p("5 parsecs").is_err());
        for b in [ByteSize(50 << 30), ByteSize(12345), ByteSize(3 << 29)] {
            assert_eq!(b.to_string().parse::<ByteSize>(), Ok(b));
        }
        assert_eq!(ByteSize(50 << 30).to_string(), "50GiB");
        for written in ["50GB", "1TB", "512MiB", "1500KB", "4KiB", "12345B"] {
            assert_eq!(written.parse::<ByteSize>().unwrap().to_string(), written);
        }
    }

    #[test]
    fn free_space_is_a_size_or_a_percentage() {
        let p = |s: &str| s.parse::<FreeSpace>();
        assert_eq!(p("1GiB"), Ok(FreeSpace::Bytes(ByteSize(1 << 30))));
        assert_eq!(p("5%"), Ok(FreeSpace::Percent(5.0)));
        assert_eq!(p(" 2.5 %"), Ok(FreeSpace::Percent(2.5)));
        assert!(p("150%").is_err());
        assert!(p("lots%").is_err());
        for v in [FreeSpace::Percent(5.0), FreeSpace::Bytes(ByteSize(1 << 30))] {
            assert_eq!(v.to_string().parse::<FreeSpace>(), Ok(v));
        }
    }
}
