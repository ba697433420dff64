//! A duration in the `metav1.Duration` format ("15m", "168h", "1h30m"), written
//! back in its largest whole unit so defaults read as people write them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration as StdDuration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(StdDuration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(StdDuration::from_secs(secs))
    }

    pub const fn as_secs(self) -> u64 {
        self.0.as_secs()
    }
}

impl From<Duration> for StdDuration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secs, millis) = (self.0.as_secs(), self.0.subsec_millis());
        match (secs, millis) {
            (0, 0) => f.write_str("0s"),
            (s, 0) if s % 3600 == 0 => write!(f, "{}h", s / 3600),
            (s, 0) if s % 60 == 0 => write!(f, "{}m", s / 60),
            (s, 0) => write!(f, "{s}s"),
            (s, ms) => write!(f, "{}ms", s * 1000 + u64::from(ms)),
        }
    }
}

/// Why a duration did not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid duration {0:?}: use a positive Go duration such as 90s, 15m, 168h or 1h30m")]
pub struct ParseDurationError(String);

impl FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match kube::core::Duration::from_str(s) {
            Ok(d) if !d.is_negative() && !s.is_empty() => Ok(Self(d.into())),
            _ => Err(ParseDurationError(s.to_owned())),
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    /// A plain string: the format "duration" would mean ISO 8601 to an API
    /// server. Fields add a CEL `duration(self)` rule that rejects bad values.
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "maxLength": 32 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_the_largest_whole_unit() {
        for (input, secs, shown) in [
            ("15m", 900, "15m"),
            ("900s", 900, "15m"),
            ("168h", 604_800, "168h"),
            ("1h30m", 5400, "90m"),
            ("45s", 45, "45s"),
            ("0s", 0, "0s"),
        ] {
            let d: Duration = input.parse().unwrap();
            assert_eq!(d.as_secs(), secs, "{input}");
            assert_eq!(d.to_string(), shown, "{input}");
        }
        assert_eq!("1500ms".parse::<Duration>().unwrap().to_string(), "1500ms");
    }

    #[test]
    fn rejects_what_go_would_not_parse_and_negatives() {
        for bad in ["7d", "15", "", "-5m", "1x", "m"] {
            let err = bad.parse::<Duration>().unwrap_err().to_string();
            assert!(err.contains("invalid duration"), "{bad}: {err}");
        }
    }
}
