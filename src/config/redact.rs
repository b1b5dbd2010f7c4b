//! How secrets serialize wherever settings are shown (`validate`, the admin API): as
//! `[REDACTED]`, whatever their value. A leaf: sink types use it for their own secrets.

use secrecy::SecretString;
use serde::Serializer;

/// Serializes a secret as `[REDACTED]`.
pub fn redact<S: Serializer>(_: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("[REDACTED]")
}

/// Serializes a present secret as `[REDACTED]`, an absent one as null.
pub fn redact_opt<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("[REDACTED]"),
        None => s.serialize_none(),
    }
}
