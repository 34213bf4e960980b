//! Errors of the checkpoint store.

use std::path::PathBuf;

use freshet_core::ModelSpec;
use freshet_trainer::StateError;
use thiserror::Error;

/// Why a checkpoint could not be opened, read or written.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// Another process holds the directory (one active trainer per model).
    #[error("checkpoint directory {dir} is in use by another process (one trainer per model): {message}")]
    InUse {
        /// The directory.
        dir: PathBuf,
        /// RocksDB's message.
        message: String,
    },
    /// RocksDB refused to open the directory.
    #[error("cannot open checkpoint directory {dir}: {message}")]
    Open {
        /// The directory.
        dir: PathBuf,
        /// RocksDB's message.
        message: String,
    },
    /// A read or write failed.
    #[error("checkpoint {operation} failed: {source}")]
    Rocks {
        /// What was being done.
        operation: &'static str,
        /// RocksDB's error.
        #[source]
        source: rocksdb::Error,
    },
    /// The store was written with another layout version than this build
    /// reads: not damage, an older or newer release's data.
    #[error(
        "checkpoint layout version {found}; this build reads layout version {supported}: open it with the \
         freshet release that wrote it, or start a new checkpoint directory"
    )]
    Layout {
        /// The store's layout version.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// Stored bytes do not decode: the checkpoint is damaged.
    #[error("corrupt checkpoint: {0}")]
    Corrupt(String),
    /// The checkpoint was trained under another model spec than the configured one.
    #[error(
        "checkpoint model spec differs from the configuration (refusing to load it): stored {stored:?}, configured {configured:?}"
    )]
    SpecMismatch {
        /// The spec in the checkpoint.
        stored: Box<ModelSpec>,
        /// The spec in the configuration.
        configured: Box<ModelSpec>,
    },
    /// The checkpoint is of a model sharded differently from the
    /// configuration: its rows belong to other shards than configured.
    #[error(
        "the checkpoint holds a model of {stored} shard(s) but model.shards = {configured}: the shard count is fixed \
         when a model is created (see docs/scaling.md, Resharding); configure {stored}, or start a new checkpoint directory"
    )]
    ShardsChanged {
        /// The shard count in the checkpoint.
        stored: u32,
        /// The configured shard count.
        configured: u32,
    },
    /// A trainer of another shard than the one whose rows the store holds.
    #[error(
        "the checkpoint directory holds shard {stored}'s rows and this trainer is shard {trainer}: every shard has a \
         checkpoint directory of its own"
    )]
    OtherShard {
        /// The store's shard.
        stored: u32,
        /// The trainer's shard.
        trainer: u32,
    },
    /// The stored state does not form a valid model.
    #[error("checkpoint state is invalid: {0}")]
    InvalidState(#[from] StateError),
    /// A rollback to a version no copy is retained of.
    #[error("version {version} is not retained (retained: {retained:?})")]
    NotRetained {
        /// The version asked for.
        version: u64,
        /// The versions retained.
        retained: Vec<u64>,
    },
    /// A rollback the store's state does not allow.
    #[error("rollback refused: {0}")]
    Rollback(String),
    /// A file-system operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl CheckpointError {
    pub(crate) fn rocks(operation: &'static str) -> impl FnOnce(rocksdb::Error) -> CheckpointError {
        move |source| CheckpointError::Rocks { operation, source }
    }
}

impl From<freshet_core::record::RecordError> for CheckpointError {
    fn from(error: freshet_core::record::RecordError) -> Self {
        CheckpointError::Corrupt(error.to_string())
    }
}
