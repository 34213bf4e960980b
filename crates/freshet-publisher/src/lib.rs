//! freshet's snapshot publisher: after each durable checkpoint, the rows
//! changed since the last published version go out as a delta snapshot (a
//! full snapshot at start, every N deltas and every T seconds), chunked, in
//! ONE Kafka transaction per snapshot under a transactional id per model.
//! A quality gate holds publishes while progressive metrics degrade.
//!
//! **Architecture invariant:** the publisher never mutates the model; it
//! receives copies ([`Outgoing`]) from the trainer's thread and never makes
//! it wait.

mod config;
mod encode;
mod gate;
mod outgoing;
mod producer;
mod worker;

pub use config::{PublisherConfig, default_snapshot_topic};
pub use encode::{EncodedSnapshot, HeaderContext, encode};
pub use gate::{Hold, QualityGate};
pub use outgoing::{ChainGap, Content, Outgoing};
pub use producer::{PublishError, Published, SnapshotProducer};
pub use worker::{FullPolicy, PublisherHandle, PublisherStats};
