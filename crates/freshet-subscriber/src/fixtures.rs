//! Snapshot values for unit tests.

use freshet_core::ModelSpec;
use freshet_core::snapshot::{SnapshotHeader, SnapshotKind, SnapshotMetrics, Watermark};

/// A header of model `m` counting `rows` (per table) and `tombstones`.
pub fn header(version: u64, kind: SnapshotKind, spec: ModelSpec, rows: [u64; 3], tombstones: u64) -> SnapshotHeader {
    SnapshotHeader {
        model: "m".to_owned(),
        version,
        kind,
        created_ms: 0,
        watermark: Watermark::default(),
        spec,
        globals: [3.0, 0.0],
        session_gap_ms: 3_600_000,
        rows,
        tombstones,
        chain_start_offset: None,
        metrics: SnapshotMetrics::default(),
        rollback_to: None,
        shard: 0,
    }
}
