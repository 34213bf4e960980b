//! freshet's subscriber, for serving processes: reads a model's snapshot
//! topic (read_committed), starts from the newest full snapshot, applies the
//! deltas after it in order, applies a snapshot only when its commit record
//! arrived with a matching checksum and counts, and hot-swaps the served
//! model atomically (readers never block and never see a half model).
//!
//! It serves with the trainer's own scoring function
//! ([`freshet_core::score`]): a served score equals the trainer's
//! prediction bit for bit at the same version, context features and the
//! user's session included.
//!
//! A model sharded over S trainers is followed the same way, one chain per
//! partition of the topic (shard k publishes on partition k), and served as
//! the union of the shards' rows once every shard's first full snapshot has
//! applied ([`ServingModel::missing_shards`], [`VersionInfo::shards`]).
//!
//! **API boundary:** [`Subscriber`], [`ServingModel`] (score, rank, top-k,
//! version, watermark), [`Builder`] (a model from snapshot chunks, for
//! readers with their own transport) and the HTTP endpoint ([`http::router`])
//! are what serving processes build on.
//!
//! **Architecture invariant:** the subscriber never trains and does not
//! depend on the trainer; it knows the model only through `freshet-core`'s
//! snapshot format and scoring function. Versions share memory
//! copy-on-write: serving holds one copy of the model plus the pages the
//! newest snapshot changed, never two copies.
//!
//! ```
//! use std::collections::HashSet;
//! use freshet_core::snapshot::{SnapshotChunk, SnapshotHeader, SnapshotKind, SnapshotRow, Watermark};
//! use freshet_core::{ScoreContext, Head, ModelSpec, TableKind, hash_id};
//! use freshet_subscriber::{Builder, DEFAULT_CANDIDATES};
//!
//! let spec = ModelSpec { dim: 8, ..ModelSpec::default() };
//! let item = SnapshotRow { table: TableKind::Item, key: hash_id("i1"), id: Some("i1".into()), updated_ms: 0, values: vec![0.5; 10] };
//! let header = SnapshotHeader {
//!     model: "m".into(), version: 1, kind: SnapshotKind::Full, created_ms: 0, watermark: Watermark::default(),
//!     spec, globals: [3.0, 0.0], session_gap_ms: 3_600_000, rows: [0, 1, 0], tombstones: 0,
//!     chain_start_offset: None, metrics: Default::default(), rollback_to: None, shard: 0,
//! };
//! let mut builder = Builder::full(&header, None, DEFAULT_CANDIDATES)?;
//! builder.apply(&SnapshotChunk { version: 1, index: 0, rows: vec![item], tombstones: vec![] })?;
//! let model = builder.finish(0);
//! assert_eq!(model.score(Head::Rating, "new user", "i1", &ScoreContext::none()), 3.5);
//! assert_eq!(model.top_k(Head::Rating, "new user", 10, &ScoreContext::none(), &HashSet::new())[0].item, "i1");
//! # Ok::<(), freshet_subscriber::ApplyError>(())
//! ```

mod assemble;
mod chain;
#[cfg(test)]
mod fixtures;
mod follow;
pub mod http;
mod inflight;
mod model;
mod pages;
mod read_ahead;
mod replica;
mod scan;
mod store;
mod swap;

pub use assemble::AssemblyError;
pub use follow::{
    SubscribeError, Subscriber, SubscriberConfig, SubscriberEvent, SubscriberStats, SubscriberView, SwapKind,
    SwapReport,
};
pub use inflight::Answering;
pub use model::{ApplyError, Builder, DEFAULT_CANDIDATES, Recommendation, ServingModel, ShardVersion, VersionInfo};
pub use replica::{ReplicaDelta, ReplicaDeltas};
pub use swap::{LiveModel, Retired};
