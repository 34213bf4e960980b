//! Why a message was rejected: one typed error per validation rule, each with
//! a stable reason code used in dead-letter headers and metric labels.

use thiserror::Error;

/// A message that did not become a feedback event.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum Rejection {
    /// The payload is larger than the configured limit.
    #[error("message is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// Payload size in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The `content-type` header names a format freshet does not read.
    #[error("unsupported content-type {found:?}")]
    UnsupportedContentType {
        /// The header value.
        found: String,
    },
    /// A JSON payload is not valid UTF-8.
    #[error("payload is not valid UTF-8 (valid up to byte {valid_up_to})")]
    InvalidUtf8 {
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
    /// A JSON payload does not parse or has a field of the wrong type.
    #[error("malformed JSON: {message}")]
    MalformedJson {
        /// The parser's message.
        message: String,
    },
    /// A bincode payload does not decode.
    #[error("malformed bincode: {message}")]
    MalformedBincode {
        /// The decoder's message.
        message: String,
    },
    /// The `type` field is absent or names no known event kind.
    #[error("unknown event type {found:?}")]
    UnknownType {
        /// The value found (empty when absent).
        found: String,
    },
    /// A user or item id is absent or empty.
    #[error("missing or empty id field {field:?}")]
    MissingId {
        /// `user` or `item`.
        field: &'static str,
    },
    /// A user or item id is longer than the limit.
    #[error("id field {field:?} is {len} bytes, over the limit of {limit}")]
    IdTooLong {
        /// `user` or `item`.
        field: &'static str,
        /// The id's length in bytes.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A field the event kind needs (`clicked`, `rating`) is absent.
    #[error("missing field {field:?}")]
    MissingField {
        /// The absent field.
        field: &'static str,
    },
    /// A number is NaN or infinite.
    #[error("field {field:?} is not a finite number")]
    NonFinite {
        /// The offending field.
        field: &'static str,
    },
    /// A rating lies outside the configured range.
    #[error("rating {value} is outside [{min}, {max}]")]
    RatingOutOfRange {
        /// The rating found.
        value: f64,
        /// Range start.
        min: f32,
        /// Range end.
        max: f32,
    },
    /// The `ts` field is absent.
    #[error("missing timestamp field \"ts\"")]
    MissingTimestamp,
    /// The timestamp is not positive, too far in the future or too old.
    #[error("timestamp {ts} is outside the accepted window [{earliest}, {latest}]")]
    TimestampOutOfRange {
        /// The event time found (epoch ms).
        ts: i64,
        /// Oldest accepted time.
        earliest: i64,
        /// Newest accepted time.
        latest: i64,
    },
    /// More context features than the limit.
    #[error("{count} features, over the limit of {limit}")]
    TooManyFeatures {
        /// Number of features found.
        count: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A feature name or value is empty, too long, or the name contains `=`.
    #[error("invalid feature {name:?}: {problem}")]
    InvalidFeature {
        /// The feature's name (truncated to 64 bytes).
        name: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A message on a shard exchange topic (`freshet.route.<model>`,
    /// `freshet.grads.<model>`) without the sender's tag, or a gradient
    /// message that does not decode.
    #[error("malformed exchange message: {message}")]
    MalformedExchange {
        /// What is wrong with it.
        message: String,
    },
}

/// The stable, machine-readable code of a [`Rejection`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RejectReason {
    /// See [`Rejection::TooLarge`].
    TooLarge,
    /// See [`Rejection::UnsupportedContentType`].
    UnsupportedContentType,
    /// See [`Rejection::InvalidUtf8`].
    InvalidUtf8,
    /// See [`Rejection::MalformedJson`].
    MalformedJson,
    /// See [`Rejection::MalformedBincode`].
    MalformedBincode,
    /// See [`Rejection::UnknownType`].
    UnknownType,
    /// See [`Rejection::MissingId`].
    MissingId,
    /// See [`Rejection::IdTooLong`].
    IdTooLong,
    /// See [`Rejection::MissingField`].
    MissingField,
    /// See [`Rejection::NonFinite`].
    NonFinite,
    /// See [`Rejection::RatingOutOfRange`].
    RatingOutOfRange,
    /// See [`Rejection::MissingTimestamp`].
    MissingTimestamp,
    /// See [`Rejection::TimestampOutOfRange`].
    TimestampOutOfRange,
    /// See [`Rejection::TooManyFeatures`].
    TooManyFeatures,
    /// See [`Rejection::InvalidFeature`].
    InvalidFeature,
    /// See [`Rejection::MalformedExchange`].
    MalformedExchange,
}

impl RejectReason {
    /// Every reason an input event's message can have (all but
    /// [`RejectReason::MalformedExchange`]), in a fixed order.
    pub const OF_EVENTS: [RejectReason; 15] = [
        RejectReason::TooLarge,
        RejectReason::UnsupportedContentType,
        RejectReason::InvalidUtf8,
        RejectReason::MalformedJson,
        RejectReason::MalformedBincode,
        RejectReason::UnknownType,
        RejectReason::MissingId,
        RejectReason::IdTooLong,
        RejectReason::MissingField,
        RejectReason::NonFinite,
        RejectReason::RatingOutOfRange,
        RejectReason::MissingTimestamp,
        RejectReason::TimestampOutOfRange,
        RejectReason::TooManyFeatures,
        RejectReason::InvalidFeature,
    ];

    /// Every reason, in a fixed order: [`Self::OF_EVENTS`], then the exchange's.
    pub const ALL: [RejectReason; 16] = {
        let mut all = [RejectReason::MalformedExchange; 16];
        let mut i = 0;
        while i < RejectReason::OF_EVENTS.len() {
            all[i] = RejectReason::OF_EVENTS[i];
            i += 1;
        }
        all
    };

    /// The code written to the dead-letter `reason` header and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::TooLarge => "message_too_large",
            RejectReason::UnsupportedContentType => "unsupported_content_type",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::MalformedJson => "malformed_json",
            RejectReason::MalformedBincode => "malformed_bincode",
            RejectReason::UnknownType => "unknown_type",
            RejectReason::MissingId => "missing_id",
            RejectReason::IdTooLong => "id_too_long",
            RejectReason::MissingField => "missing_field",
            RejectReason::NonFinite => "non_finite_value",
            RejectReason::RatingOutOfRange => "rating_out_of_range",
            RejectReason::MissingTimestamp => "missing_timestamp",
            RejectReason::TimestampOutOfRange => "timestamp_out_of_range",
            RejectReason::TooManyFeatures => "too_many_features",
            RejectReason::InvalidFeature => "invalid_feature",
            RejectReason::MalformedExchange => "malformed_exchange",
        }
    }

    /// Parses a code written by [`RejectReason::as_str`].
    pub fn parse(code: &str) -> Option<RejectReason> {
        RejectReason::ALL.into_iter().find(|r| r.as_str() == code)
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Rejection {
    /// The rule this rejection broke.
    pub fn reason(&self) -> RejectReason {
        match self {
            Rejection::TooLarge { .. } => RejectReason::TooLarge,
            Rejection::UnsupportedContentType { .. } => RejectReason::UnsupportedContentType,
            Rejection::InvalidUtf8 { .. } => RejectReason::InvalidUtf8,
            Rejection::MalformedJson { .. } => RejectReason::MalformedJson,
            Rejection::MalformedBincode { .. } => RejectReason::MalformedBincode,
            Rejection::UnknownType { .. } => RejectReason::UnknownType,
            Rejection::MissingId { .. } => RejectReason::MissingId,
            Rejection::IdTooLong { .. } => RejectReason::IdTooLong,
            Rejection::MissingField { .. } => RejectReason::MissingField,
            Rejection::NonFinite { .. } => RejectReason::NonFinite,
            Rejection::RatingOutOfRange { .. } => RejectReason::RatingOutOfRange,
            Rejection::MissingTimestamp => RejectReason::MissingTimestamp,
            Rejection::TimestampOutOfRange { .. } => RejectReason::TimestampOutOfRange,
            Rejection::TooManyFeatures { .. } => RejectReason::TooManyFeatures,
            Rejection::InvalidFeature { .. } => RejectReason::InvalidFeature,
            Rejection::MalformedExchange { .. } => RejectReason::MalformedExchange,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_round_trip_and_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for reason in RejectReason::ALL {
            assert_eq!(RejectReason::parse(reason.as_str()), Some(reason));
            assert!(seen.insert(reason.as_str()), "duplicate code {reason}");
        }
        assert_eq!(RejectReason::parse("nope"), None);
    }
}
