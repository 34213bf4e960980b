//! The snapshot wire format: how a model version travels from the publisher
//! to serving processes over one Kafka topic. See docs/snapshots.md, which
//! describes every byte for readers in other languages.
//!
//! A snapshot is one [`SnapshotHeader`], then [`SnapshotChunk`]s, then one
//! [`SnapshotCommit`], all produced in one Kafka transaction. Every message
//! value is [`MAGIC`], the format version (u16, little-endian) and the
//! bincode form (fixed-width little-endian integers) of a [`SnapshotMessage`].
//! The commit's checksum covers the header's and the chunks' message values
//! in order, so a reader applies a snapshot only when all of it arrived intact.

use serde::{Deserialize, Serialize};
use thiserror::Error;
use xxhash_rust::xxh3::Xxh3;

use crate::model::{ModelSpec, TableKind};

/// First bytes of every snapshot message.
pub const MAGIC: [u8; 4] = *b"FSNP";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 3;
/// Default largest chunk message, safely under Kafka's default 1 MiB limit.
pub const DEFAULT_CHUNK_BYTES: usize = 512 * 1024;
/// Decoding never claims more than this many bytes, whatever a corrupt length says.
const DECODE_LIMIT: usize = 64 * 1024 * 1024;
/// Bytes before the bincode body: magic and format version.
const PREFIX_LEN: usize = MAGIC.len() + 2;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_fixed_int_encoding().with_little_endian().with_limit::<DECODE_LIMIT>()
}

/// One message of the snapshot topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SnapshotMessage {
    /// Opens a snapshot.
    Header(SnapshotHeader),
    /// Rows and tombstones of the open snapshot.
    Chunk(SnapshotChunk),
    /// Closes the snapshot: chunk count and checksum.
    Commit(SnapshotCommit),
}

/// Full or incremental.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotKind {
    /// Every row of the model: replaces whatever the reader holds.
    Full,
    /// The rows changed and removed since `base_version`, which it applies to.
    Delta {
        /// The version this delta applies to.
        base_version: u64,
    },
}

/// The next offset to read of one source partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffset {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Every event before this offset is in the snapshot.
    pub next_offset: i64,
}

/// What the snapshot covers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Watermark {
    /// Per source partition, the offset up to which events are applied.
    pub offsets: Vec<PartitionOffset>,
    /// The newest event time applied (ms since the epoch; 0 before any event).
    pub newest_event_ms: i64,
}

impl Watermark {
    /// Whether the event at `offset` of `topic`/`partition` is covered.
    pub fn covers(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.offsets.iter().any(|p| p.topic == topic && p.partition == partition && offset < p.next_offset)
    }
}

/// Progressive metrics when the snapshot was taken (sliding window per head).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct SnapshotMetrics {
    /// Rating events scored in total.
    pub rating_events: u64,
    /// Windowed RMSE of the rating head, if it saw events.
    pub rating_rmse: Option<f64>,
    /// Windowed MAE of the rating head.
    pub rating_mae: Option<f64>,
    /// Click events scored in total.
    pub click_events: u64,
    /// Windowed log loss of the click head, if it saw events.
    pub click_logloss: Option<f64>,
    /// Windowed AUC of the click head, if it saw both classes.
    pub click_auc: Option<f64>,
}

/// First message of a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// The model's name.
    pub model: String,
    /// The version: the checkpoint version it reflects. Strictly increases
    /// across snapshots of one model, except that a version may be sent again.
    pub version: u64,
    /// Full, or delta and its base.
    pub kind: SnapshotKind,
    /// When the publisher built it (ms since the epoch).
    pub created_ms: i64,
    /// The source offsets and event time it covers.
    pub watermark: Watermark,
    /// The model's shape.
    pub spec: ModelSpec,
    /// Global bias per head (rating, click) at this version.
    pub globals: [f32; 2],
    /// The trainer's session gap (ms): a user's session offset applies to a
    /// request at most this long after the user's row was last updated
    /// ([`crate::score::session_active`]).
    pub session_gap_ms: i64,
    /// Rows in the chunks, per table (in [`TableKind::index`] order), so a
    /// reader can size its tables before the rows arrive.
    pub rows: [u64; 3],
    /// Tombstones in the chunks.
    pub tombstones: u64,
    /// Topic offset of the header of the full snapshot this delta's chain
    /// starts from; `None` in a full snapshot, which starts its own chain.
    pub chain_start_offset: Option<i64>,
    /// Progressive metrics at this version.
    pub metrics: SnapshotMetrics,
}

/// One row's parameters, laid out as [`crate::RowLayout`] says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRow {
    /// The row's table.
    pub table: TableKind,
    /// The row's key (`hash_id` of the id, or `hash_feature`).
    pub key: u64,
    /// The original id string (items only).
    pub id: Option<String>,
    /// The trainer clock (event time, ms) at the row's last update: the
    /// session rule compares a request's time with it.
    pub updated_ms: i64,
    /// [`ModelSpec::row_width`] of its table (see [`crate::RowLayout`]).
    pub values: Vec<f32>,
}

/// A row removed since the base version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotTombstone {
    /// The row's table.
    pub table: TableKind,
    /// The row's key.
    pub key: u64,
}

/// A part of a snapshot's rows and tombstones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// The snapshot's version.
    pub version: u64,
    /// Position of the chunk, from 0.
    pub index: u32,
    /// Rows set by this snapshot.
    pub rows: Vec<SnapshotRow>,
    /// Rows removed by this snapshot.
    pub tombstones: Vec<SnapshotTombstone>,
}

/// Last message of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCommit {
    /// The snapshot's version.
    pub version: u64,
    /// How many chunks came before.
    pub chunks: u32,
    /// [`SnapshotChecksum`] over the header's and the chunks' message values.
    pub checksum: u64,
    /// Topic offset of the header of the full snapshot its chain starts from
    /// (a full snapshot's own header offset).
    pub chain_start_offset: i64,
}

/// Why bytes are not a snapshot message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SnapshotFormatError {
    /// Too short or not starting with [`MAGIC`].
    #[error("not a freshet snapshot message (no magic)")]
    NoMagic,
    /// A format version this code does not read.
    #[error("snapshot format version {0} is not supported (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion(u16),
    /// The body does not decode.
    #[error("malformed snapshot message: {0}")]
    Malformed(String),
    /// Bytes left after the body.
    #[error("{0} trailing bytes after the snapshot message")]
    TrailingBytes(usize),
}

/// Encodes a message value: magic, format version, body.
pub fn encode_message(message: &SnapshotMessage) -> Vec<u8> {
    encode_with_prefix(message, 64)
}

/// Encodes a chunk message from borrowed rows: the same bytes as
/// [`encode_message`] of the equal [`SnapshotMessage::Chunk`], without copying rows.
pub fn encode_chunk(version: u64, index: u32, rows: &[&SnapshotRow], tombstones: &[SnapshotTombstone]) -> Vec<u8> {
    /// Mirrors [`SnapshotMessage`] up to its chunk variant, by reference.
    #[derive(Serialize)]
    enum MessageRef<'a> {
        _Header,
        Chunk { version: u64, index: u32, rows: &'a [&'a SnapshotRow], tombstones: &'a [SnapshotTombstone] },
    }
    let size = EMPTY_CHUNK_LEN
        + rows.iter().map(|row| encoded_row_len(row)).sum::<usize>()
        + tombstones.len() * ENCODED_TOMBSTONE_LEN;
    encode_with_prefix(&MessageRef::Chunk { version, index, rows, tombstones }, size)
}

fn encode_with_prefix(body: &impl Serialize, capacity: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(capacity);
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    // Encoding into a Vec fails only for types serde cannot represent, which these are not.
    bincode::serde::encode_into_std_write(body, &mut bytes, bincode_config()).expect("snapshot messages always encode");
    bytes
}

/// Decodes a message value written by [`encode_message`].
pub fn decode_message(bytes: &[u8]) -> Result<SnapshotMessage, SnapshotFormatError> {
    if bytes.len() < PREFIX_LEN || bytes[..MAGIC.len()] != MAGIC {
        return Err(SnapshotFormatError::NoMagic);
    }
    let version = u16::from_le_bytes([bytes[MAGIC.len()], bytes[MAGIC.len() + 1]]);
    if version != FORMAT_VERSION {
        return Err(SnapshotFormatError::UnsupportedVersion(version));
    }
    let body = &bytes[PREFIX_LEN..];
    let (message, used) = bincode::serde::decode_from_slice(body, bincode_config())
        .map_err(|error| SnapshotFormatError::Malformed(error.to_string()))?;
    match body.len() - used {
        0 => Ok(message),
        extra => Err(SnapshotFormatError::TrailingBytes(extra)),
    }
}

/// The commit record in `bytes`, if they hold one. Other messages are
/// recognised by their variant index and not decoded, so scanning a topic for
/// commit records does not decode its chunks.
pub fn decode_commit(bytes: &[u8]) -> Option<SnapshotCommit> {
    /// Variant index of [`SnapshotMessage::Commit`].
    const COMMIT_VARIANT: u32 = 2;
    let variant = bytes.get(PREFIX_LEN..PREFIX_LEN + 4)?;
    if u32::from_le_bytes(variant.try_into().ok()?) != COMMIT_VARIANT {
        return None;
    }
    match decode_message(bytes) {
        Ok(SnapshotMessage::Commit(commit)) => Some(commit),
        _ => None,
    }
}

/// The version and index of the chunk in `bytes`, if they hold one, read
/// without decoding its rows (for checking the sequence of a snapshot that
/// is not applied).
pub fn decode_chunk_position(bytes: &[u8]) -> Option<(u64, u32)> {
    /// Variant index of [`SnapshotMessage::Chunk`].
    const CHUNK_VARIANT: u32 = 1;
    if bytes.len() < PREFIX_LEN || bytes[..MAGIC.len()] != MAGIC {
        return None;
    }
    if u16::from_le_bytes([bytes[MAGIC.len()], bytes[MAGIC.len() + 1]]) != FORMAT_VERSION {
        return None;
    }
    let field = |at: usize, len: usize| bytes.get(PREFIX_LEN + at..PREFIX_LEN + at + len);
    if u32::from_le_bytes(field(0, 4)?.try_into().ok()?) != CHUNK_VARIANT {
        return None;
    }
    let version = u64::from_le_bytes(field(4, 8)?.try_into().ok()?);
    let index = u32::from_le_bytes(field(12, 4)?.try_into().ok()?);
    Some((version, index))
}

/// Bytes a row adds to an encoded chunk.
pub fn encoded_row_len(row: &SnapshotRow) -> usize {
    // table (u32) + key (u64) + option tag + [len (u64) + id] + updated (i64) + len (u64) + floats
    4 + 8 + 1 + row.id.as_ref().map_or(0, |id| 8 + id.len()) + 8 + 8 + 4 * row.values.len()
}

/// Bytes a tombstone adds to an encoded chunk.
pub const ENCODED_TOMBSTONE_LEN: usize = 4 + 8;

/// Bytes of an encoded chunk message with no rows and no tombstones.
pub const EMPTY_CHUNK_LEN: usize = PREFIX_LEN + 4 + 8 + 4 + 8 + 8;

/// The commit checksum: XXH3-64 (seed 0) over the header's message value
/// followed by every chunk's message value, in chunk order.
#[derive(Clone, Default)]
pub struct SnapshotChecksum(Xxh3);

impl SnapshotChecksum {
    /// An empty checksum.
    pub fn new() -> Self {
        SnapshotChecksum(Xxh3::new())
    }

    /// Adds one message value.
    pub fn update(&mut self, message_value: &[u8]) {
        self.0.update(message_value);
    }

    /// The checksum so far.
    pub fn digest(&self) -> u64 {
        self.0.digest()
    }
}

impl std::fmt::Debug for SnapshotChecksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SnapshotChecksum({:#018x})", self.digest())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(table: TableKind, key: u64, id: Option<&str>) -> SnapshotRow {
        SnapshotRow { table, key, id: id.map(str::to_owned), updated_ms: 17, values: vec![0.5, -1.0, 0.25, 2.0] }
    }

    fn chunk() -> SnapshotChunk {
        SnapshotChunk {
            version: 7,
            index: 3,
            rows: vec![row(TableKind::User, 1, None), row(TableKind::Item, u64::MAX, Some("item-é"))],
            tombstones: vec![SnapshotTombstone { table: TableKind::Feature, key: 9 }],
        }
    }

    #[test]
    fn messages_round_trip() {
        let header = SnapshotHeader {
            model: "m".to_owned(),
            version: 7,
            kind: SnapshotKind::Delta { base_version: 6 },
            created_ms: 1_700_000_000_000,
            watermark: Watermark {
                offsets: vec![PartitionOffset { topic: "t".to_owned(), partition: 2, next_offset: 42 }],
                newest_event_ms: 5,
            },
            spec: ModelSpec::default(),
            globals: [3.5, -2.0],
            session_gap_ms: 3_600_000,
            rows: [1, 1, 0],
            tombstones: 1,
            chain_start_offset: Some(11),
            metrics: SnapshotMetrics { rating_events: 4, rating_rmse: Some(0.9), ..SnapshotMetrics::default() },
        };
        let commit = SnapshotCommit { version: 7, chunks: 1, checksum: 99, chain_start_offset: 11 };
        for message in
            [SnapshotMessage::Header(header), SnapshotMessage::Chunk(chunk()), SnapshotMessage::Commit(commit)]
        {
            assert_eq!(decode_message(&encode_message(&message)), Ok(message));
        }
    }

    #[test]
    fn the_encoded_chunk_length_is_predicted_exactly() {
        let chunk = chunk();
        let predicted = EMPTY_CHUNK_LEN
            + chunk.rows.iter().map(encoded_row_len).sum::<usize>()
            + chunk.tombstones.len() * ENCODED_TOMBSTONE_LEN;
        assert_eq!(encode_message(&SnapshotMessage::Chunk(chunk)).len(), predicted);
    }

    #[test]
    fn commit_records_are_found_without_decoding_other_messages() {
        let commit = SnapshotCommit { version: 4, chunks: 1, checksum: 9, chain_start_offset: 3 };
        assert_eq!(decode_commit(&encode_message(&SnapshotMessage::Commit(commit))), Some(commit));
        assert_eq!(decode_commit(&encode_message(&SnapshotMessage::Chunk(chunk()))), None);
        assert_eq!(decode_commit(b"FSNP"), None);
    }

    #[test]
    fn chunk_positions_are_read_without_decoding_rows() {
        let chunk = chunk();
        assert_eq!(decode_chunk_position(&encode_message(&SnapshotMessage::Chunk(chunk))), Some((7, 3)));
        let commit = SnapshotCommit { version: 4, chunks: 1, checksum: 9, chain_start_offset: 3 };
        assert_eq!(decode_chunk_position(&encode_message(&SnapshotMessage::Commit(commit))), None);
        assert_eq!(decode_chunk_position(b"FSNP\x03\x00\x01"), None);
    }

    #[test]
    fn borrowed_chunks_encode_like_owned_ones() {
        let chunk = chunk();
        let rows: Vec<&SnapshotRow> = chunk.rows.iter().collect();
        let borrowed = encode_chunk(chunk.version, chunk.index, &rows, &chunk.tombstones);
        assert_eq!(borrowed, encode_message(&SnapshotMessage::Chunk(chunk)));
    }

    #[test]
    fn the_layout_is_fixed_width_little_endian() {
        let commit = SnapshotCommit { version: 1, chunks: 2, checksum: 3, chain_start_offset: -1 };
        let bytes = encode_message(&SnapshotMessage::Commit(commit));
        let mut expected = b"FSNP".to_vec();
        expected.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        expected.extend_from_slice(&2u32.to_le_bytes()); // variant Commit
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.extend_from_slice(&2u32.to_le_bytes());
        expected.extend_from_slice(&3u64.to_le_bytes());
        expected.extend_from_slice(&(-1i64).to_le_bytes());
        assert_eq!(bytes, expected);
    }

    #[test]
    fn foreign_and_damaged_bytes_are_errors() {
        assert_eq!(decode_message(b"{}"), Err(SnapshotFormatError::NoMagic));
        let mut future = encode_message(&SnapshotMessage::Chunk(chunk()));
        future[4] = 9;
        assert_eq!(decode_message(&future), Err(SnapshotFormatError::UnsupportedVersion(9)));
        let whole = encode_message(&SnapshotMessage::Chunk(chunk()));
        assert!(matches!(decode_message(&whole[..whole.len() - 3]), Err(SnapshotFormatError::Malformed(_))));
        let mut longer = whole.clone();
        longer.push(0);
        assert_eq!(decode_message(&longer), Err(SnapshotFormatError::TrailingBytes(1)));
        let mut huge_length = whole;
        huge_length[PREFIX_LEN + 4 + 8 + 4..PREFIX_LEN + 4 + 8 + 4 + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(decode_message(&huge_length), Err(SnapshotFormatError::Malformed(_))));
    }

    #[test]
    fn the_checksum_depends_on_every_byte_and_the_order() {
        let mut a = SnapshotChecksum::new();
        a.update(b"header");
        a.update(b"chunk0");
        let mut b = SnapshotChecksum::new();
        b.update(b"chunk0");
        b.update(b"header");
        assert_ne!(a.digest(), b.digest());
        assert_eq!(a.digest(), xxhash_rust::xxh3::xxh3_64(b"headerchunk0"));
    }
}
