//! Settings of the Kafka source, deserialised from the `[consumer]` table.

use std::time::Duration;

use freshet_core::ConfigError;
use serde::{Deserialize, Serialize};

/// Default input topic for clicks.
pub const DEFAULT_CLICKS_TOPIC: &str = "freshet.clicks";
/// Default input topic for ratings (and forget requests).
pub const DEFAULT_RATINGS_TOPIC: &str = "freshet.ratings";
/// Default dead-letter topic.
pub const DEFAULT_DLQ_TOPIC: &str = "freshet.dlq";

/// Where to start reading a partition that has no explicit offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    /// The consumer group's committed offset, else the earliest offset.
    Committed,
    /// The earliest offset, ignoring the group.
    Earliest,
    /// The end of the partition, ignoring the group.
    Latest,
}

/// Kafka source settings. The connection (bootstrap servers, security) is
/// the process's shared [`freshet_kafka::KafkaConfig`], given next to these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Consumer group id.
    pub group_id: String,
    /// Static group membership (`group.instance.id`): a restarted member gets
    /// its partitions back at once. `freshet run` uses `freshet-<name>` when unset.
    pub group_instance_id: Option<String>,
    /// Input topics.
    pub topics: Vec<String>,
    /// Dead-letter topic for rejected messages.
    pub dlq_topic: String,
    /// Where to start partitions without an explicit offset. The default,
    /// `earliest`, suits `freshet run`, whose checkpoint holds the offsets of
    /// every partition it ever read: one it lacks was never read.
    pub start_from: StartFrom,
    /// A micro-batch closes after this many messages...
    pub batch_max_messages: usize,
    /// ...or this many milliseconds after its first message.
    pub batch_max_ms: u64,
    /// Batches in flight between the consumer thread and its reader: enough
    /// that reading goes on while the reader writes a checkpoint (a checkpoint
    /// of a second's changes takes ~150 ms, or ~60 full batches at 400k
    /// events/s; the default holds a few tens of MB at most).
    pub channel_capacity: usize,
    /// How long a revocation waits for the reader to acknowledge it.
    pub revoke_timeout_ms: u64,
    /// How long shutdown may take before the consumer thread is abandoned.
    pub shutdown_timeout_ms: u64,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            group_id: "freshet".to_owned(),
            group_instance_id: None,
            topics: vec![DEFAULT_CLICKS_TOPIC.to_owned(), DEFAULT_RATINGS_TOPIC.to_owned()],
            dlq_topic: DEFAULT_DLQ_TOPIC.to_owned(),
            start_from: StartFrom::Earliest,
            batch_max_messages: 1024,
            batch_max_ms: 20,
            channel_capacity: 64,
            revoke_timeout_ms: 30_000,
            shutdown_timeout_ms: 10_000,
        }
    }
}

impl ConsumerConfig {
    /// Checks every setting, naming the offending key.
    pub fn check(&self) -> Result<(), ConfigError> {
        let non_empty = |key: &str, value: &str| {
            if value.trim().is_empty() { Err(ConfigError::new(key, "must not be empty")) } else { Ok(()) }
        };
        non_empty("consumer.group_id", &self.group_id)?;
        non_empty("consumer.dlq_topic", &self.dlq_topic)?;
        if self.topics.is_empty() || self.topics.iter().any(|t| t.trim().is_empty()) {
            return Err(ConfigError::new("consumer.topics", "must list at least one non-empty topic"));
        }
        if self.topics.contains(&self.dlq_topic) {
            return Err(ConfigError::new("consumer.dlq_topic", "must not be one of the input topics"));
        }
        let positive = |key: &str, value: u64| {
            if value == 0 { Err(ConfigError::new(key, "must be positive")) } else { Ok(()) }
        };
        positive("consumer.batch_max_messages", self.batch_max_messages as u64)?;
        positive("consumer.batch_max_ms", self.batch_max_ms)?;
        positive("consumer.channel_capacity", self.channel_capacity as u64)?;
        positive("consumer.revoke_timeout_ms", self.revoke_timeout_ms)?;
        positive("consumer.shutdown_timeout_ms", self.shutdown_timeout_ms)?;
        Ok(())
    }

    /// The micro-batch age limit.
    pub fn batch_max_age(&self) -> Duration {
        Duration::from_millis(self.batch_max_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(ConsumerConfig::default().check(), Ok(()));
    }

    #[test]
    fn errors_name_the_key() {
        let key_of = |config: ConsumerConfig| config.check().expect_err("invalid").key;
        assert_eq!(key_of(ConsumerConfig { topics: vec![], ..Default::default() }), "consumer.topics");
        assert_eq!(key_of(ConsumerConfig { batch_max_ms: 0, ..Default::default() }), "consumer.batch_max_ms");
        assert_eq!(
            key_of(ConsumerConfig { dlq_topic: DEFAULT_CLICKS_TOPIC.into(), ..Default::default() }),
            "consumer.dlq_topic"
        );
    }
}
