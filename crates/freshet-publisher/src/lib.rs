//! freshet's snapshot publisher: after each durable checkpoint, the rows
//! changed since the last published version go out as a delta snapshot (a
//! full snapshot at start, every N deltas and every T seconds), chunked, in
//! ONE Kafka transaction per snapshot under a transactional id per model.
//! A quality gate holds publishes while progressive metrics degrade.
//!
//! **Architecture invariant:** the publisher never mutates the model; it
//! receives copies ([`Outgoing`]) from the trainer's thread and never makes
//! it wait. It depends on `freshet-core` and `freshet-kafka` only: what it
//! is handed is core's snapshot content ([`freshet_core::snapshot::ModelParams`],
//! [`freshet_core::snapshot::ParamsDelta`]), never trainer types. It does
//! not decide what is durable: it commits version N's transaction only
//! after the trainer loop says checkpoint N is committed (a version handed
//! over with [`PublisherHandle::submit`], or declared with
//! [`PublisherHandle::durable`] after [`PublisherHandle::submit_ahead`]).
//!
//! Hand-offs that wait (publisher busy, publish held) merge into one:
//!
//! ```
//! use freshet_core::snapshot::{ModelParams, ParamsDelta, SnapshotRow, Watermark};
//! use freshet_core::{ModelSpec, TableKind};
//! use freshet_publisher::{Content, Outgoing};
//!
//! let row = |key, value| SnapshotRow { table: TableKind::User, key, id: None, updated_ms: 0, values: vec![value; 12] };
//! let full = ModelParams { spec: ModelSpec { dim: 8, ..ModelSpec::default() }, globals: [3.5, 0.0], session_gap_ms: 0, rows: vec![row(1, 0.1)] };
//! let delta = ParamsDelta { globals: [3.6, 0.0], session_gap_ms: 0, rows: vec![row(2, 0.2)], tombstones: vec![] };
//! let v1 = Outgoing::full(1, full, Watermark::default(), Default::default());
//! let v2 = Outgoing::delta(1, 2, delta, Watermark::default(), Default::default());
//! // Version 1 was not published yet: version 2 goes out in full instead.
//! let merged = v1.merge(v2)?;
//! assert_eq!((merged.version, merged.globals[0]), (2, 3.6));
//! assert!(matches!(&merged.content, Content::Full(rows) if rows.len() == 2));
//! # Ok::<(), freshet_publisher::ChainGap>(())
//! ```

mod config;
mod encode;
mod gate;
mod outgoing;
mod producer;
mod worker;

pub use config::{PublisherConfig, default_snapshot_topic};
/// How a snapshot is split into messages, for tests that forge damaged,
/// torn or aborted snapshots (feature `testing`).
#[cfg(feature = "testing")]
pub use encode::{EncodedSnapshot, HeaderContext, encode};
pub use gate::{Hold, QualityGate};
pub use outgoing::{ChainGap, Content, Outgoing};
pub use producer::{PublishError, Published, SnapshotProducer};
pub use worker::{FullPolicy, PublisherEvent, PublisherHandle, PublisherStats};
