//! A duration as users write it: `"300s"`, `"5m"`, `"1h 30m"` (humantime syntax), or a bare integer
//! number of seconds.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A configuration duration. Deserializes from a humantime string or an integer of seconds and
/// serializes back to the humantime string, so `validate` prints what a user would write.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DurationValue(pub Duration);

impl DurationValue {
    pub const fn secs(s: u64) -> Self {
        DurationValue(Duration::from_secs(s))
    }
}

impl fmt::Debug for DurationValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl fmt::Display for DurationValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for DurationValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"300s\", \"5m\" or \"1h 30m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                humantime::parse_duration(v.trim())
                    .map(DurationValue)
                    .map_err(|e| {
                        E::custom(format!(
                        "invalid duration {v:?} ({e}); write it like \"300s\", \"5m\" or \"1h 30m\""
                    ))
                    })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(DurationValue(Duration::from_secs(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(|s| DurationValue(Duration::from_secs(s)))
                    .map_err(|_| E::custom(format!("invalid duration {v}: must not be negative")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                if v.is_finite() && v >= 0.0 {
                    Ok(DurationValue(Duration::from_secs_f64(v)))
                } else {
                    Err(E::custom(format!("invalid duration {v}")))
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl std::str::FromStr for DurationValue {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim())
            .map(DurationValue)
            .map_err(|e| format!("invalid duration {s:?} ({e}); write it like \"300s\" or \"5m\""))
    }
}
