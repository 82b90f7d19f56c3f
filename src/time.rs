//! Timestamps: the one text format of every log and data file (RFC 3339, UTC, milliseconds) and
//! the conversions to and from protobuf's `Timestamp`.

use chrono::{DateTime, SecondsFormat, Utc};

/// `2026-11-23T10:15:02.123Z`.
pub fn format(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Now, formatted.
pub fn now() -> String {
    format(Utc::now())
}

/// Parses the format written by [`format()`] (any RFC 3339 time is accepted).
pub fn parse(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Converts to the protobuf well-known type.
pub fn to_proto(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// Converts from the protobuf well-known type; `None` when out of range.
pub fn from_proto(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_is_rfc3339_utc_with_milliseconds() {
        let t = DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap();
        assert_eq!(format(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(
            parse("2023-11-14T22:13:20.123Z").map(format).as_deref(),
            Some("2023-11-14T22:13:20.123Z")
        );
    }

    #[test]
    fn proto_round_trip() {
        let t = DateTime::from_timestamp(1_700_000_000, 5_000_000).unwrap();
        assert_eq!(from_proto(&to_proto(t)), Some(t));
    }
}
