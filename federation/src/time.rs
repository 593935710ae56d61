//! Clock helpers shared by issuing and verifying.

use chrono::{DateTime, SecondsFormat, Utc};

/// Clock skew tolerated between participants when checking validity periods.
pub(crate) const DEFAULT_SKEW_SECS: i64 = 60;

/// RFC 3339 with second precision and `Z`, the form used in every credential.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Parses an RFC 3339 date-time (any offset) into UTC.
pub fn parse(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}
