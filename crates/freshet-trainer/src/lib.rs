//! freshet's learning core: a dynamic embedding model trained online with
//! micro-batch sparse Adam (or SGD / AdaGrad), scored progressively.
//!
//! **Architecture invariant:** pure and deterministic. No I/O, no Kafka, no
//! RocksDB, no wall clock: time is the largest event time seen, and the same
//! micro-batches always give bit-identical parameters.
//!
//! - The model ([`freshet_core::ModelSpec`]): user, item and context-feature tables whose
//!   rows are laid out as [`freshet_core::RowLayout`] says (a bias per
//!   head, in user rows a rating scale and a session offset, then the
//!   factors), keyed by the 64-bit id hashes of `freshet-core`, plus a
//!   global bias per [`freshet_core::Head`]. Events are scored with
//!   [`freshet_core::score`], the function serving uses too: the heads share
//!   the factors and keep their own biases.
//! - Learning ([`Trainer::train_batch`], [`TrainerConfig`]): per step,
//!   gradients are summed per touched row and each row takes one step, with
//!   Adam's bias correction from the row's own step count. Non-finite steps
//!   are skipped and counted. Ids get rows after `min_count` sightings; rows
//!   expire after a TTL and are evicted past a row budget.
//! - Hand-off ([`Trainer::drain_dirty`], [`Trainer::export_state`],
//!   [`Trainer::restore`], [`Restorer`], [`Trainer::export_params`]): changed
//!   rows and tombstones for incremental checkpoints and snapshots, the full
//!   state for restore (or a stream of borrowed rows, for a large model),
//!   parameters alone for snapshots.
//! - Progressive metrics ([`MetricsReading`]): every event is scored before
//!   its step trains on it.
//!
//! It deliberately does not read Kafka, write files or publish: the binary's
//! trainer loop feeds it micro-batches and hands what it exports to the
//! checkpoint and the publisher.
//!
//! ```
//! use freshet_core::{Feedback, Features, Head, ModelSpec, Rating, ScoreContext};
//! use freshet_trainer::{Trainer, TrainerConfig};
//!
//! let spec = ModelSpec { dim: 8, ..ModelSpec::default() };
//! let mut trainer = Trainer::new(spec, TrainerConfig::default())?;
//! let rating = |ts| {
//!     Feedback::Rating(Rating { user: "u1".into(), item: "i1".into(), rating: 4.5, ts, features: Features::new() })
//! };
//! for ts in 1..=200 {
//!     trainer.train_batch(&[rating(ts)]);
//! }
//! let predicted = trainer.predict(Head::Rating, "u1", "i1", &ScoreContext::none());
//! assert!((predicted - 4.5).abs() < 0.5, "{predicted}");
//! // What changed since the last drain, for an incremental checkpoint.
//! let changes = trainer.drain_dirty();
//! assert_eq!(changes.rows.len(), 2); // the user's row and the item's
//! assert!(trainer.drain_dirty().is_empty());
//! # Ok::<(), freshet_core::ConfigError>(())
//! ```

mod admission;
mod arena;
mod bitset;
mod config;
mod heads;
mod init;
mod keymap;
mod lr_schedule;
mod metrics;
mod optimizer;
pub mod report;
mod restore;
mod row_index;
mod simulation;
mod state;
mod table;
mod trainer;

pub use config::{Algorithm, LrScheduleConfig, TrainerConfig};
pub use lr_schedule::PlateauSchedule;
pub use metrics::{ClickStats, MetricsReading, ProgressiveMetrics, RatingStats, cumulative_of};
pub use report::{BatchReport, Counters, TableCounters};
pub use restore::Restorer;
pub use simulation::{ShardSimulation, SimulationTraffic};
pub use state::{
    DenseState, GlobalParams, PendingAdmission, Removal, RowRef, RowState, StateChanges, StateError, Tombstone,
    TrainerState,
};
pub use trainer::{GradientsError, ReplicaError, Trainer};
