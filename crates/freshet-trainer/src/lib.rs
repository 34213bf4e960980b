//! freshet's learning core: a dynamic embedding model trained online with
//! micro-batch sparse Adam (or SGD / AdaGrad), scored progressively.
//!
//! **Architecture invariant:** pure and deterministic. No I/O, no Kafka, no
//! RocksDB, no wall clock: time is the largest event time seen, and the same
//! micro-batches always give bit-identical parameters.
//!
//! - The model ([`ModelSpec`]): user, item and context-feature tables whose
//!   rows are laid out as [`freshet_core::RowLayout`] says (a bias per
//!   head, in user rows a rating scale and a session offset, then the
//!   factors), keyed by the 64-bit id hashes of `freshet-core`, plus a
//!   global bias per [`Head`]. Events are scored with
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
//! - Progressive metrics ([`MetricsSnapshot`]): every event is scored before
//!   its step trains on it.

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
mod state;
mod table;
mod trainer;

pub use config::{Algorithm, LrScheduleConfig, TrainerConfig};
pub use freshet_core::{MAX_DIM, MIN_DIM, ModelSpec, TableKind};
pub use heads::{Head, HeadLoss};
pub use lr_schedule::PlateauSchedule;
pub use metrics::{AUC_BINS, AUC_LOGIT_RANGE, ClickStats, MetricsSnapshot, ProgressiveMetrics, RatingStats};
pub use report::{BatchReport, Counters, TableCounters};
pub use restore::Restorer;
pub use state::{
    Delta, DenseState, GlobalParams, ModelParams, ParamsDelta, PendingRow, RowRef, RowState, StateError, Tombstone,
    TrainerState,
};
pub use table::Removal;
pub use trainer::Trainer;
