//! Topic partitions and the offsets freshet keeps for them: the source
//! acknowledges them, the checkpoint stores them with the state they
//! produced, snapshots carry them as their watermark.

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

/// [`NextOffsets`] as a list of `{topic, partition, next_offset}` records,
/// sorted (for `#[serde(with = ...)]`): the snapshot header's watermark on
/// the wire (bincode: a count, then per partition its topic, number and next
/// offset) and in JSON, where a map could not have structured keys.
pub mod as_list {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{NextOffsets, TopicPartition};

    #[derive(Serialize)]
    struct Entry<'a> {
        topic: &'a str,
        partition: i32,
        next_offset: i64,
    }

    #[derive(Deserialize)]
    struct OwnedEntry {
        topic: String,
        partition: i32,
        next_offset: i64,
    }

    /// Writes the offsets as a sequence of records.
    pub fn serialize<S: Serializer>(offsets: &NextOffsets, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(offsets.iter().map(|(tp, &next_offset)| Entry {
            topic: &tp.topic,
            partition: tp.partition,
            next_offset,
        }))
    }

    /// Reads a sequence of records (a partition listed twice: the later wins).
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<NextOffsets, D::Error> {
        let entries = Vec::<OwnedEntry>::deserialize(deserializer)?;
        Ok(entries.into_iter().map(|e| (TopicPartition::new(e.topic, e.partition), e.next_offset)).collect())
    }
}

/// Offsets keyed by `topic/partition`, the shape JSON output (`inspect`,
/// `/version`) gives them.
pub fn by_name(offsets: &NextOffsets) -> BTreeMap<String, i64> {
    offsets.iter().map(|(tp, next)| (tp.to_string(), *next)).collect()
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
