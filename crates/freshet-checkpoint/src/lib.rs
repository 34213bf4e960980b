//! freshet's durable model: a RocksDB store where each checkpoint (changed
//! rows with their optimizer state and counters, tombstones, the source
//! offsets they reflect, the dense state and the version) is ONE atomic
//! `WriteBatch`. It restores a trainer, refuses a checkpoint of another model
//! spec, backs itself up, and can be inspected while its writer runs.
//!
//! **Architecture invariant:** this crate knows nothing of Kafka: offsets are
//! plain (topic, partition) → next-offset pairs.

mod codec;
mod error;
mod inspect;
mod store;

pub use error::CheckpointError;
pub use inspect::{Inspection, inspect};
pub use store::{CheckpointStore, CommitStats, Restored, Resumed, SourceOffsets};
