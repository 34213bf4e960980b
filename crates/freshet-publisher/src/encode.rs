//! Turns a hand-off into snapshot messages: the header, chunks under the
//! configured size, and (once the chain's start offset is known) the commit.

use freshet_core::snapshot::{
    EMPTY_CHUNK_LEN, ENCODED_TOMBSTONE_LEN, SnapshotChecksum, SnapshotCommit, SnapshotHeader, SnapshotKind,
    SnapshotMessage, SnapshotRow, SnapshotTombstone, ValueEncoding, encode_chunk, encode_message, encoded_row_len,
};
use freshet_core::{ModelSpec, TableKind};

use crate::outgoing::{Content, Outgoing};

/// A snapshot's header and chunk message values, and their checksum.
#[derive(Debug)]
pub struct EncodedSnapshot {
    /// The decoded header.
    pub header: SnapshotHeader,
    /// The header's message value.
    pub header_value: Vec<u8>,
    /// The chunks' message values, in order.
    pub chunks: Vec<Vec<u8>>,
    /// Checksum over the header and the chunks.
    pub checksum: u64,
}

impl EncodedSnapshot {
    /// The commit message value closing this snapshot.
    pub fn commit_value(&self, chain_start_offset: i64) -> Vec<u8> {
        encode_message(&SnapshotMessage::Commit(SnapshotCommit {
            version: self.header.version,
            chunks: self.chunks.len() as u32,
            checksum: self.checksum,
            chain_start_offset,
        }))
    }

    /// Bytes of the header and the chunks.
    pub fn bytes(&self) -> usize {
        self.header_value.len() + self.chunks.iter().map(Vec::len).sum::<usize>()
    }
}

/// What the header says besides the hand-off itself.
#[derive(Debug, Clone, Copy)]
pub struct HeaderContext<'a> {
    /// The model's name.
    pub model: &'a str,
    /// The model's shape.
    pub spec: &'a ModelSpec,
    /// The shard whose rows these are (0 for an unsharded model).
    pub shard: u32,
    /// When the snapshot is built (ms since the epoch).
    pub created_ms: i64,
    /// The full snapshot a delta chains from (`None` for a full snapshot).
    pub chain_start_offset: Option<i64>,
    /// How the chunks hold parameter values.
    pub value_encoding: ValueEncoding,
}

/// Encodes `outgoing` into chunks of at most `chunk_bytes` each (a chunk
/// always holds at least one entry, so one oversized row still travels).
/// A full snapshot whose rows are not built yet is built first (a copy:
/// the publisher builds it when it takes the hand-off, [`Outgoing::build`]).
pub fn encode(outgoing: &Outgoing, context: HeaderContext<'_>, chunk_bytes: usize) -> EncodedSnapshot {
    let built;
    let outgoing = match outgoing.content {
        Content::Columns { .. } => {
            built = outgoing.clone().build();
            &built
        }
        _ => outgoing,
    };
    let (kind, rows, tombstones): (SnapshotKind, Vec<&SnapshotRow>, Vec<SnapshotTombstone>) = match &outgoing.content {
        Content::Full(rows) => (SnapshotKind::Full, rows.iter().collect(), Vec::new()),
        Content::Columns { .. } => unreachable!("built above"),
        Content::Delta { base_version, changes } => {
            let rows = changes.values().flatten().collect();
            let tombstones = changes
                .iter()
                .filter(|(_, row)| row.is_none())
                .map(|(&(table, key), _)| SnapshotTombstone { table, key })
                .collect();
            (SnapshotKind::Delta { base_version: *base_version }, rows, tombstones)
        }
    };
    let header = SnapshotHeader {
        model: context.model.to_owned(),
        version: outgoing.version,
        kind,
        created_ms: context.created_ms,
        watermark: outgoing.watermark.clone(),
        spec: context.spec.clone(),
        globals: outgoing.globals,
        session_gap_ms: outgoing.session_gap_ms,
        rows: TableKind::ALL.map(|table| rows.iter().filter(|row| row.table == table).count() as u64),
        tombstones: tombstones.len() as u64,
        chain_start_offset: context.chain_start_offset,
        metrics: outgoing.metrics,
        rollback_to: outgoing.rollback_to,
        shard: context.shard,
    };
    let header_value = encode_message(&SnapshotMessage::Header(Box::new(header.clone())));
    let mut checksum = SnapshotChecksum::new();
    checksum.update(&header_value);
    let mut chunks = Vec::new();
    let mut push = |rows: &[&SnapshotRow], tombstones: &[SnapshotTombstone]| {
        let value = encode_chunk(outgoing.version, chunks.len() as u32, rows, tombstones, context.value_encoding);
        checksum.update(&value);
        chunks.push(value);
    };
    let (mut start, mut size) = (0, EMPTY_CHUNK_LEN);
    for (at, row) in rows.iter().enumerate() {
        let len = encoded_row_len(row, context.value_encoding);
        if at > start && size + len > chunk_bytes {
            push(&rows[start..at], &[]);
            (start, size) = (at, EMPTY_CHUNK_LEN);
        }
        size += len;
    }
    let per_chunk = (chunk_bytes.saturating_sub(EMPTY_CHUNK_LEN) / ENCODED_TOMBSTONE_LEN).max(1);
    let mut tombstone_chunks = tombstones.chunks(per_chunk).peekable();
    // The last row chunk takes the first tombstones that still fit beside it.
    let room = chunk_bytes.saturating_sub(size) / ENCODED_TOMBSTONE_LEN;
    if start < rows.len() || tombstones.is_empty() {
        let (beside, rest) = tombstones.split_at(room.min(tombstones.len()));
        push(&rows[start..], beside);
        tombstone_chunks = rest.chunks(per_chunk).peekable();
    }
    for part in tombstone_chunks {
        push(&[], part);
    }
    EncodedSnapshot { header, header_value, chunks, checksum: checksum.digest() }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use freshet_core::snapshot::{SnapshotMetrics, Watermark, decode_message};

    use super::*;

    fn outgoing(content: Content) -> Outgoing {
        Outgoing {
            version: 3,
            globals: [1.0, 2.0],
            session_gap_ms: 1,
            content,
            watermark: Watermark::default(),
            metrics: SnapshotMetrics::default(),
            rollback_to: None,
        }
    }

    fn rows(count: u64) -> Vec<SnapshotRow> {
        (0..count)
            .map(|key| SnapshotRow {
                table: TableKind::Item,
                key,
                id: Some(format!("i{key}")),
                updated_ms: 0,
                values: vec![0.5; 34],
            })
            .collect()
    }

    fn context(spec: &ModelSpec) -> HeaderContext<'_> {
        HeaderContext {
            model: "m",
            spec,
            shard: 0,
            created_ms: 0,
            chain_start_offset: None,
            value_encoding: ValueEncoding::F32,
        }
    }

    /// Decodes every chunk, checking size, index and checksum.
    fn decoded(encoded: &EncodedSnapshot, chunk_bytes: usize) -> (Vec<SnapshotRow>, Vec<SnapshotTombstone>) {
        let mut checksum = SnapshotChecksum::new();
        checksum.update(&encoded.header_value);
        let (mut rows, mut tombstones) = (Vec::new(), Vec::new());
        for (index, value) in encoded.chunks.iter().enumerate() {
            assert!(value.len() <= chunk_bytes, "chunk of {} bytes", value.len());
            checksum.update(value);
            let Ok(SnapshotMessage::Chunk(chunk)) = decode_message(value) else { panic!("not a chunk") };
            assert_eq!((chunk.index as usize, chunk.version), (index, 3));
            rows.extend(chunk.rows);
            tombstones.extend(chunk.tombstones);
        }
        assert_eq!(checksum.digest(), encoded.checksum);
        (rows, tombstones)
    }

    #[test]
    fn a_full_snapshot_splits_into_chunks_under_the_limit() {
        let spec = ModelSpec::default();
        let all = rows(1000);
        let encoded = encode(&outgoing(Content::Full(all.clone())), context(&spec), 16 * 1024);
        assert!(encoded.chunks.len() > 5, "{} chunks", encoded.chunks.len());
        assert_eq!(decoded(&encoded, 16 * 1024), (all, vec![]));
        assert_eq!((encoded.header.rows, encoded.header.kind), ([0, 1000, 0], SnapshotKind::Full));
    }

    #[test]
    fn a_delta_carries_rows_and_tombstones_within_the_limit() {
        let spec = ModelSpec::default();
        let mut changes = BTreeMap::new();
        for row in rows(300) {
            changes.insert((row.table, row.key), Some(row));
        }
        for key in 0..5000 {
            changes.insert((TableKind::User, key), None);
        }
        let encoded =
            encode(&outgoing(Content::Delta { base_version: 2, changes: changes.clone() }), context(&spec), 8 * 1024);
        let (rows_seen, tombstones_seen) = decoded(&encoded, 8 * 1024);
        assert_eq!(rows_seen.len(), 300);
        assert_eq!(tombstones_seen.len(), 5000);
        assert_eq!((encoded.header.rows, encoded.header.tombstones), ([0, 300, 0], 5000));
        assert_eq!(encoded.header.kind, SnapshotKind::Delta { base_version: 2 });
    }

    #[test]
    fn an_empty_delta_is_one_empty_chunk() {
        let spec = ModelSpec::default();
        let encoded =
            encode(&outgoing(Content::Delta { base_version: 2, changes: BTreeMap::new() }), context(&spec), 1024);
        assert_eq!(encoded.chunks.len(), 1);
        assert_eq!(decoded(&encoded, 1024), (vec![], vec![]));
    }
}
