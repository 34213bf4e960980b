//! What every Kafka client of freshet shares, in one place: the `[kafka]`
//! settings of a process (bootstrap servers and librdkafka settings passed
//! through, secrets redacted for display), the topics freshet creates and
//! how, producing without dropping (a full local queue means wait:
//! [`send_threaded`], [`send_future`]), and whether the cluster answers
//! ([`ClusterProbe`], for readiness).
//!
//! The consumer (the source and its dead-letter producer), the publisher's
//! transactional producer and the subscriber's snapshot reader all build
//! their clients from [`KafkaConfig::client`], so a security setting given
//! once reaches every connection a process makes.
//!
//! **Architecture invariant:** this crate knows no freshet message format and
//! no consumer-group or transaction policy. Each client crate sets its own
//! keys (group, isolation, transactional id) on top of the shared settings,
//! and [`KafkaConfig::check`] refuses a pass-through value for any of them
//! (or for `bootstrap.servers`, which is `bootstrap`).
//!
//! ```
//! use freshet_kafka::{KafkaConfig, TopicSpec};
//!
//! let mut kafka = KafkaConfig::new("127.0.0.1:9092");
//! kafka.settings.insert("security.protocol".into(), "SASL_SSL".into());
//! kafka.settings.insert("sasl.password".into(), "s3cret".into());
//! kafka.check().expect("valid");
//! // An rdkafka ClientConfig, ready for `.create()`.
//! let client = kafka.client();
//! assert_eq!(client.get("bootstrap.servers"), Some("127.0.0.1:9092"));
//! assert_eq!(client.get("security.protocol"), Some("SASL_SSL"));
//! // Safe to print.
//! assert_eq!(kafka.redacted().settings["sasl.password"], freshet_kafka::REDACTED);
//! let topic = TopicSpec::new("freshet.clicks", 4);
//! assert_eq!((topic.partitions, topic.replication), (4, 1));
//! ```

mod config;
mod error;
mod probe;
mod send;
mod topics;

pub use config::{FETCH_QUEUE_BACKOFF_MS, KafkaConfig, REDACTED, redact};
pub use error::{KafkaSetupError, is_fenced};
pub use probe::{ClusterProbe, ClusterStatus};
pub use send::{send_future, send_threaded};
pub use topics::{TopicSpec, ensure_topics, partition_counts};
