//! Topic partitions and the offsets freshet keeps for them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// One partition of one topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
}

impl TopicPartition {
    /// A partition of `topic`.
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        TopicPartition { topic: topic.into(), partition }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// A comma-separated list of partitions, for logs.
pub fn describe(partitions: &[TopicPartition]) -> String {
    partitions.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// The next offset to read per partition (Kafka's committed-offset
/// convention: one past the last message consumed).
pub type NextOffsets = BTreeMap<TopicPartition, i64>;

/// The offsets of the messages one micro-batch holds from one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetRange {
    /// Offset of the first message.
    pub first: i64,
    /// Offset of the last (highest) message.
    pub last: i64,
}

impl OffsetRange {
    /// The offset to resume from once this range is consumed.
    pub fn next(&self) -> i64 {
        self.last + 1
    }
}
