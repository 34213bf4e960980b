//! Another shard's snapshot chain read as parameter deltas, for the
//! read-only replicas a shard trainer keeps of the item and feature rows
//! other shards own (docs/scaling.md): every snapshot that completes intact
//! (header, every chunk, a matching commit) gives its item and feature rows
//! and tombstones, as [`freshet_core::snapshot::ParamsDelta`]; user rows are
//! dropped as they are read (a replica never holds them). A full snapshot
//! gives all of its shard's rows, a delta the changed ones: applied in
//! order, the replica follows the chain.

use freshet_core::TableKind;
use freshet_core::snapshot::ParamsDelta;

use crate::assemble::{Assembler, AssemblyError, Fed};

/// A completed snapshot of another shard's chain, its user rows left out.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaDelta {
    /// The shard whose chain it is (its header's).
    pub shard: u32,
    /// Its version.
    pub version: u64,
    /// Its item and feature rows and tombstones, and the global biases.
    pub delta: ParamsDelta,
}

/// Reads one shard's chain, message by message, in offset order.
#[derive(Debug, Default)]
pub struct ReplicaDeltas {
    assembler: Assembler,
    open: Option<ReplicaDelta>,
}

impl ReplicaDeltas {
    /// A reader with nothing open.
    pub fn new() -> Self {
        ReplicaDeltas::default()
    }

    /// Takes the message at `offset`; a snapshot it completes comes back.
    /// An error discards the open snapshot (the next header starts again).
    pub fn feed(&mut self, offset: i64, value: &[u8]) -> Result<Option<ReplicaDelta>, AssemblyError> {
        let fed = match self.assembler.feed(offset, value) {
            Ok(fed) => fed,
            Err(error) => {
                self.open = None;
                return Err(error);
            }
        };
        match fed {
            Fed::Header(header) => {
                let delta = ParamsDelta {
                    globals: header.globals,
                    session_gap_ms: header.session_gap_ms,
                    rows: Vec::new(),
                    tombstones: Vec::new(),
                };
                self.open = Some(ReplicaDelta { shard: header.shard, version: header.version, delta });
            }
            Fed::Chunk(chunk) => {
                if let Some(open) = &mut self.open {
                    let rows = chunk.rows().filter(|row| row.table != TableKind::User);
                    open.delta.rows.extend(rows.map(|row| row.to_owned_row()));
                    let tombstones = chunk.tombstones().filter(|t| t.table != TableKind::User);
                    open.delta.tombstones.extend(tombstones);
                }
            }
            Fed::Skipped => {}
            Fed::Complete(done) => {
                return Ok(self.open.take().filter(|open| open.version == done.header.version));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use freshet_core::snapshot::{
        SnapshotChecksum, SnapshotChunk, SnapshotCommit, SnapshotKind, SnapshotMessage, SnapshotRow, SnapshotTombstone,
        encode_message,
    };
    use freshet_core::{ModelSpec, TableKind};

    use super::*;
    use crate::fixtures::header;

    fn row(table: TableKind, key: u64) -> SnapshotRow {
        let spec = ModelSpec::default();
        SnapshotRow { table, key, id: None, updated_ms: 0, values: vec![key as f32; spec.row_width(table)] }
    }

    /// The messages of snapshot `version` of shard 1 with two chunks.
    fn snapshot(version: u64) -> Vec<Vec<u8>> {
        let mut header = header(
            version,
            SnapshotKind::Delta { base_version: version - 1 },
            ModelSpec { shards: 2, ..ModelSpec::default() },
            [1, 1, 1],
            2,
        );
        header.shard = 1;
        let mut values = vec![encode_message(&SnapshotMessage::Header(Box::new(header)))];
        let first = SnapshotChunk {
            version,
            index: 0,
            rows: vec![row(TableKind::User, 1), row(TableKind::Item, 2)],
            tombstones: vec![SnapshotTombstone { table: TableKind::User, key: 9 }],
        };
        let second = SnapshotChunk {
            version,
            index: 1,
            rows: vec![row(TableKind::Feature, 3)],
            tombstones: vec![SnapshotTombstone { table: TableKind::Item, key: 8 }],
        };
        values.push(encode_message(&SnapshotMessage::Chunk(first)));
        values.push(encode_message(&SnapshotMessage::Chunk(second)));
        let mut checksum = SnapshotChecksum::new();
        values.iter().for_each(|value| checksum.update(value));
        let commit = SnapshotCommit { version, chunks: 2, checksum: checksum.digest(), chain_start_offset: 0 };
        values.push(encode_message(&SnapshotMessage::Commit(commit)));
        values
    }

    #[test]
    fn a_completed_snapshot_gives_its_item_and_feature_rows_and_nothing_before() {
        let mut deltas = ReplicaDeltas::new();
        let values = snapshot(4);
        let fed: Vec<_> = (0..4).map(|i| deltas.feed(i, &values[i as usize]).expect("fed")).collect();
        assert!(fed[..3].iter().all(Option::is_none), "nothing before the commit");
        let done = fed[3].clone().expect("complete");
        assert_eq!((done.shard, done.version), (1, 4));
        assert_eq!(done.delta.rows, vec![row(TableKind::Item, 2), row(TableKind::Feature, 3)], "no user rows");
        assert_eq!(done.delta.tombstones, vec![SnapshotTombstone { table: TableKind::Item, key: 8 }]);
        assert_eq!(done.delta.globals, [3.0, 0.0]);
    }

    #[test]
    fn a_damaged_snapshot_gives_nothing_and_the_next_one_is_read() {
        let mut deltas = ReplicaDeltas::new();
        let mut damaged = snapshot(4);
        let last = damaged[2].len() - 1;
        damaged[2][last] ^= 1;
        let results: Vec<_> = (0..4).map(|i| deltas.feed(i, &damaged[i as usize])).collect();
        assert!(results[3].is_err(), "{results:?}");
        let values = snapshot(5);
        let done = (0..4).filter_map(|i| deltas.feed(10 + i, &values[i as usize]).expect("fed")).next();
        assert_eq!(done.map(|d| d.version), Some(5));
    }
}
