//! Snapshot values for unit tests.

use freshet_core::snapshot::{
    SnapshotChecksum, SnapshotChunk, SnapshotCommit, SnapshotHeader, SnapshotKind, SnapshotMessage, SnapshotMetrics,
    SnapshotRow, Watermark, encode_message,
};
use freshet_core::{ModelSpec, RowLayout, TableKind, hash_id};

use crate::assemble::{Assembler, Fed};
use crate::model::{Builder, DEFAULT_CANDIDATES, ServingModel};

/// The factor count of [`user_snapshot`]'s model.
const USER_DIM: usize = 8;

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

/// The message values (header, one chunk per user, commit) of a snapshot of
/// a dim-8 model setting each user's every value to the number beside it.
pub fn user_snapshot(version: u64, kind: SnapshotKind, users: &[(&str, f32)]) -> Vec<Vec<u8>> {
    let spec = ModelSpec { dim: USER_DIM, ..ModelSpec::default() };
    let header = header(version, kind, spec, [users.len() as u64, 0, 0], 0);
    let mut values = vec![encode_message(&SnapshotMessage::Header(Box::new(header)))];
    for (index, &(id, value)) in (0..).zip(users) {
        let values_of_row = vec![value; RowLayout::new(TableKind::User, USER_DIM).width()];
        let row =
            SnapshotRow { table: TableKind::User, key: hash_id(id), id: None, updated_ms: 0, values: values_of_row };
        let chunk = SnapshotChunk { version, index, rows: vec![row], tombstones: vec![] };
        values.push(encode_message(&SnapshotMessage::Chunk(chunk)));
    }
    let mut checksum = SnapshotChecksum::new();
    values.iter().for_each(|value| checksum.update(value));
    let chunks = users.len() as u32;
    let commit = SnapshotCommit { version, chunks, checksum: checksum.digest(), chain_start_offset: 0 };
    values.push(encode_message(&SnapshotMessage::Commit(commit)));
    values
}

/// Version 1 of [`user_snapshot`]'s model, built from a full snapshot of `users`.
pub fn served_users(users: &[(&str, f32)]) -> ServingModel {
    let mut assembler = Assembler::new();
    let values = user_snapshot(1, SnapshotKind::Full, users);
    let Ok(Fed::Header(header)) = assembler.feed(0, &values[0]) else { panic!("a header") };
    let mut builder = Builder::full(&header, None, DEFAULT_CANDIDATES).expect("a valid full snapshot");
    for (offset, value) in (1..).zip(&values[1..=users.len()]) {
        let Ok(Fed::Chunk(chunk)) = assembler.feed(offset, value) else { panic!("a chunk") };
        builder.apply_view(&chunk).expect("applies");
    }
    builder.finish(0)
}
