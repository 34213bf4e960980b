//! Settings of the publisher, deserialised from the `[publisher]` table.

use std::collections::BTreeMap;

use freshet_core::ConfigError;
use freshet_core::snapshot::{DEFAULT_CHUNK_BYTES, ValueEncoding};
use freshet_kafka::TopicSpec;
use serde::{Deserialize, Serialize};

use crate::gate::QualityGate;

/// Smallest chunk size accepted (a dim-256 row is about 1 KiB).
const MIN_CHUNK_BYTES: usize = 16 * 1024;

/// Publisher settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublisherConfig {
    /// Whether `freshet run` publishes snapshots at all.
    pub enabled: bool,
    /// The snapshot topic; by default `freshet.snapshots.<model name>`.
    pub topic: Option<String>,
    /// Largest chunk message in bytes (Kafka's default limit is 1 MiB).
    pub chunk_bytes: usize,
    /// How chunks hold parameter values: `f32` (exact, the default) or `f16`
    /// (about half the bytes; served scores within about 1e-3 of f32's).
    /// Checkpoints always keep f32.
    pub value_encoding: ValueEncoding,
    /// Publish a full snapshot after this many deltas...
    pub full_every_deltas: u32,
    /// ...or when the last full snapshot is this old (ms), even while idle,
    /// so the topic's retention never removes the newest full snapshot.
    pub full_interval_ms: u64,
    /// Kafka transaction timeout (ms).
    pub transaction_timeout_ms: u64,
    /// `retention.ms` of the snapshot topic when freshet creates it; must be
    /// well above `full_interval_ms` (see docs/snapshots.md).
    pub topic_retention_ms: u64,
    /// Hold publishes while metrics degrade.
    pub quality_gate: QualityGate,
    /// Extra librdkafka producer settings (`compression.type`, ...).
    pub kafka: BTreeMap<String, String>,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            enabled: true,
            topic: None,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            value_encoding: ValueEncoding::F32,
            full_every_deltas: 600,
            full_interval_ms: 600_000,
            transaction_timeout_ms: 60_000,
            topic_retention_ms: 7 * 24 * 3_600_000,
            quality_gate: QualityGate::default(),
            kafka: BTreeMap::new(),
        }
    }
}

pub use freshet_core::snapshot::default_snapshot_topic;

impl PublisherConfig {
    /// The snapshot topic for `model`.
    pub fn topic_for(&self, model: &str) -> String {
        self.topic.clone().unwrap_or_else(|| default_snapshot_topic(model))
    }

    /// The snapshot topic's specification: a partition per shard (each a
    /// total order of one shard's snapshots; one for an unsharded model),
    /// deletion by time only, records up to 2 MiB.
    pub fn topic_spec(&self, model: &str, shards: u32) -> TopicSpec {
        let mut spec = TopicSpec::new(self.topic_for(model), shards as i32);
        spec.configs = BTreeMap::from([
            ("cleanup.policy".to_owned(), "delete".to_owned()),
            ("retention.ms".to_owned(), self.topic_retention_ms.to_string()),
            ("retention.bytes".to_owned(), "-1".to_owned()),
            ("max.message.bytes".to_owned(), (2 * 1024 * 1024).to_string()),
        ]);
        spec
    }

    /// Checks the settings, naming the offending key.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.topic.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::new("publisher.topic", "must not be empty"));
        }
        if !(MIN_CHUNK_BYTES..=(1024 * 1024 - 1024)).contains(&self.chunk_bytes) {
            return Err(ConfigError::new(
                "publisher.chunk_bytes",
                format!("must be between {MIN_CHUNK_BYTES} and {} bytes", 1024 * 1024 - 1024),
            ));
        }
        if self.full_every_deltas == 0 {
            return Err(ConfigError::new("publisher.full_every_deltas", "must be positive"));
        }
        if self.full_interval_ms == 0 {
            return Err(ConfigError::new("publisher.full_interval_ms", "must be positive"));
        }
        if self.transaction_timeout_ms < 1_000 {
            return Err(ConfigError::new("publisher.transaction_timeout_ms", "must be at least 1000"));
        }
        if self.topic_retention_ms < 4 * self.full_interval_ms {
            return Err(ConfigError::new(
                "publisher.topic_retention_ms",
                "must be at least 4 × full_interval_ms, or the newest full snapshot may be deleted",
            ));
        }
        if let Some(key) = self.kafka.keys().find(|key| OWNED_PRODUCER_KEYS.contains(&key.as_str())) {
            return Err(ConfigError::new(format!("publisher.kafka.{key}"), "is set by freshet"));
        }
        self.quality_gate.check()
    }
}

/// Producer settings freshet sets itself.
const OWNED_PRODUCER_KEYS: [&str; 4] =
    ["bootstrap.servers", "transactional.id", "enable.idempotence", "transaction.timeout.ms"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_errors_name_the_key() {
        assert_eq!(PublisherConfig::default().check(), Ok(()));
        let key_of = |config: PublisherConfig| config.check().expect_err("invalid").key;
        assert_eq!(key_of(PublisherConfig { chunk_bytes: 10, ..Default::default() }), "publisher.chunk_bytes");
        assert_eq!(
            key_of(PublisherConfig { topic_retention_ms: 1000, ..Default::default() }),
            "publisher.topic_retention_ms"
        );
        let owned = BTreeMap::from([("transactional.id".to_owned(), "x".to_owned())]);
        assert_eq!(key_of(PublisherConfig { kafka: owned, ..Default::default() }), "publisher.kafka.transactional.id");
    }

    #[test]
    fn the_topic_defaults_to_the_model_name() {
        assert_eq!(PublisherConfig::default().topic_for("m1"), "freshet.snapshots.m1");
        let spec = PublisherConfig::default().topic_spec("m1", 1);
        assert_eq!((spec.partitions, spec.configs["cleanup.policy"].as_str()), (1, "delete"));
        assert_eq!(PublisherConfig::default().topic_spec("m1", 3).partitions, 3, "a partition per shard");
    }
}
