//! freshet's durable model: a RocksDB store where each checkpoint (changed
//! rows with their optimizer state and counters, tombstones, the source
//! offsets they reflect, the dense state and the version) is ONE atomic
//! `WriteBatch`. It restores a trainer, refuses a checkpoint of another model
//! spec, backs itself up, and can be inspected while its writer runs.
//!
//! **Architecture invariant:** this crate knows nothing of Kafka: offsets are
//! core's [`freshet_core::NextOffsets`], stored with the state they produced.
//! It does not decide when to checkpoint (the trainer loop does) and never
//! publishes.
//!
//! ```
//! use freshet_checkpoint::CheckpointStore;
//! use freshet_core::{Feedback, Features, ModelSpec, NextOffsets, Rating, TopicPartition};
//! use freshet_trainer::{Trainer, TrainerConfig};
//!
//! let dir = tempfile::tempdir()?;
//! let spec = ModelSpec { dim: 8, ..ModelSpec::default() };
//! let mut trainer = Trainer::new(spec.clone(), TrainerConfig::default())?;
//! let rating = Rating { user: "u1".into(), item: "i1".into(), rating: 4.0, ts: 1, features: Features::new() };
//! trainer.train_batch(&[Feedback::Rating(rating)]);
//!
//! let mut store = CheckpointStore::open(dir.path(), false)?;
//! let offsets = NextOffsets::from([(TopicPartition::new("freshet.ratings", 0), 1)]);
//! let stats = store.commit(&spec, &trainer.drain_dirty(), &offsets)?;
//! assert_eq!(stats.version, 1);
//! drop(store);
//!
//! let store = CheckpointStore::open(dir.path(), false)?;
//! let resumed = store.restore(&spec, TrainerConfig::default())?.expect("a checkpoint");
//! assert_eq!((resumed.version, resumed.offsets), (1, offsets));
//! assert_eq!(resumed.trainer.counters(), trainer.counters());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod codec;
mod error;
mod inspect;
mod retain;
mod rollback;
mod store;

pub use error::CheckpointError;
pub use inspect::{Inspection, inspect};
pub use retain::{RetainPolicy, RetainedDisk, RetainedVersion, default_target, flush_ahead_due, retain_due, to_prune};
pub use rollback::{RollbackMode, RollbackRecord, SkippedRange};
pub use store::{CheckpointStore, CommitStats, ExchangeCommit, Resumed, SavedState, StoreMemory};
