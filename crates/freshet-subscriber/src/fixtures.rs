//! Snapshot values for unit tests.

use freshet_core::ModelSpec;
use freshet_core::snapshot::{
    SnapshotHeader, SnapshotKind, SnapshotMetrics, SnapshotRow, SnapshotTombstone, Watermark,
};

use crate::assemble::AssembledSnapshot;

/// A header of model `m` counting `rows` and `tombstones`.
pub fn header(version: u64, kind: SnapshotKind, spec: ModelSpec, rows: usize, tombstones: usize) -> SnapshotHeader {
    SnapshotHeader {
        model: "m".to_owned(),
        version,
        kind,
        created_ms: 0,
        watermark: Watermark::default(),
        spec,
        globals: [3.0, 0.0],
        rows: rows as u64,
        tombstones: tombstones as u64,
        chain_start_offset: None,
        metrics: SnapshotMetrics::default(),
    }
}

/// A snapshot as the assembler hands it over.
pub fn assembled(
    version: u64,
    kind: SnapshotKind,
    spec: ModelSpec,
    rows: Vec<SnapshotRow>,
    tombstones: Vec<SnapshotTombstone>,
) -> AssembledSnapshot {
    AssembledSnapshot {
        header: header(version, kind, spec, rows.len(), tombstones.len()),
        header_offset: 0,
        chain_start_offset: 0,
        rows,
        tombstones,
        bytes: 0,
    }
}
