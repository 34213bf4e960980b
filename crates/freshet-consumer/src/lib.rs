//! freshet's Kafka source: consumer-group membership with explicit offsets
//! (never auto-committed), decode + validate, a dead-letter topic for rejected
//! messages, and bounded micro-batches that carry the offset range per
//! partition they cover. It knows nothing of the model.

mod batch;
mod config;
pub mod dlq;
mod error;
mod partition;
mod send;
mod source;
mod topics;

pub use batch::MicroBatch;
pub use config::{
    ConsumerConfig, DEFAULT_CLICKS_TOPIC, DEFAULT_DLQ_TOPIC, DEFAULT_RATINGS_TOPIC, StartFrom, client_config,
};
pub use error::ConsumerError;
pub use partition::{NextOffsets, OffsetRange, TopicPartition};
pub use send::send_waiting_for_room;
pub use source::{Acknowledger, Revocation, Source, SourceEvent};
pub use topics::{TopicSpec, check_connection, ensure_topics};
