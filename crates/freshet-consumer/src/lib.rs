//! freshet's Kafka source: consumer-group membership with explicit offsets
//! (never auto-committed), decode + validate, a dead-letter topic for rejected
//! messages, and bounded micro-batches that carry the offset range per
//! partition they cover.
//!
//! **Architecture invariant:** it knows nothing of the model and never
//! decides what is durable: the reader acknowledges offsets
//! ([`Source::acknowledge`]) once the state they produced is checkpointed,
//! and a restart starts from the offsets the reader passes in.
//!
//! ```no_run
//! use freshet_consumer::{ConsumerConfig, Source, SourceEvent};
//! use freshet_core::{Decoder, NextOffsets};
//! use freshet_kafka::KafkaConfig;
//!
//! # async fn run() -> Result<(), freshet_consumer::ConsumerError> {
//! let kafka = KafkaConfig::new("127.0.0.1:9092");
//! let (source, mut events) = Source::start(&kafka, &ConsumerConfig::default(), Decoder::default(), NextOffsets::new())?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         SourceEvent::Assigned(partitions) => println!("reading {partitions:?}"),
//!         SourceEvent::Batch(batch) => {
//!             // ...train on batch.events, make the result durable, then:
//!             source.acknowledge(&batch.next_offsets());
//!         }
//!         SourceEvent::Revoked(revocation) => revocation.acknowledge(),
//!         SourceEvent::Rewound => {} // only after Acknowledger::rewind, which this reader never calls
//!     }
//! }
//! source.stop()
//! # }
//! ```

mod batch;
mod config;
pub mod dlq;
mod error;
mod source;

pub use batch::{MicroBatch, Received};
pub use config::{ConsumerConfig, DEFAULT_CLICKS_TOPIC, DEFAULT_DLQ_TOPIC, DEFAULT_RATINGS_TOPIC, StartFrom};
pub use error::ConsumerError;
pub use source::{Acknowledger, ExchangeTopics, ReadPlan, Revocation, Source, SourceEvent};
