//! The snapshot wire format: how a model version travels from the publisher
//! to serving processes over one Kafka topic. See docs/snapshots.md, which
//! describes every byte for readers in other languages.
//!
//! A snapshot is one [`SnapshotHeader`], then [`SnapshotChunk`]s, then one
//! [`SnapshotCommit`], all produced in one Kafka transaction. Every message
//! value is [`MAGIC`], the format version (u16, little-endian) and a body:
//! for a header or a commit the bincode form (fixed-width little-endian
//! integers) of a [`SnapshotMessage`]; for a chunk (formats 4 to 6) a compact row
//! layout with values as f32 or, optionally, f16 ([`ValueEncoding`]).
//! Format 6 adds [`ModelSpec::shards`] and [`SnapshotHeader::shard`];
//! format 5 (without them, read as shard 0 of 1), format 4 (without
//! [`SnapshotHeader::rollback_to`] too) and format 3 (chunks as bincode
//! too, values f32) are still read.
//! The commit's checksum covers the header's and the chunks' message values
//! in order, so a reader applies a snapshot only when all of it arrived intact.

use serde::{Deserialize, Serialize};
use thiserror::Error;
use xxhash_rust::xxh3::Xxh3;

use crate::model::{ModelSpec, TableKind};
use crate::offsets::{NextOffsets, TopicPartition};

/// First bytes of every snapshot message.
pub const MAGIC: [u8; 4] = *b"FSNP";
/// The format version this code writes.
pub const FORMAT_VERSION: u16 = 6;
/// The format versions this code reads: 3 (bincode chunks), 4 (headers
/// without [`SnapshotHeader::rollback_to`]), 5 (headers without
/// [`SnapshotHeader::shard`] and specs without [`ModelSpec::shards`]) and 6.
pub const READABLE_VERSIONS: [u16; 4] = [3, 4, 5, 6];

/// The snapshot topic of a model unless its `[publisher] topic` names
/// another: the one name publishers and subscribers in any language agree on.
pub fn default_snapshot_topic(model: &str) -> String {
    format!("freshet.snapshots.{model}")
}

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
    /// Opens a snapshot (boxed: the other messages are far smaller; the
    /// same bytes on the wire).
    Header(Box<SnapshotHeader>),
    /// Rows and tombstones of the open snapshot.
    Chunk(SnapshotChunk),
    /// Closes the snapshot: chunk count and checksum.
    Commit(SnapshotCommit),
}

/// How a chunk holds parameter values: f32 (exact, the default) or f16
/// (half the bytes; every value rounded to the nearest f16, a relative error
/// of at most 2^-11, and a row with a value beyond f16's range sent in f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueEncoding {
    /// 4 bytes a value, bit for bit the trainer's.
    #[default]
    F32,
    /// 2 bytes a value (IEEE 754 binary16, round to nearest even).
    F16,
}

impl ValueEncoding {
    /// The chunk byte that names it.
    fn tag(self) -> u8 {
        match self {
            ValueEncoding::F32 => 0,
            ValueEncoding::F16 => 1,
        }
    }
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

/// What the snapshot covers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Watermark {
    /// Per source partition, the offset up to which events are applied
    /// (every event before it is in the snapshot). On the wire and in JSON:
    /// a list of `{topic, partition, next_offset}`, sorted
    /// ([`crate::offsets::as_list`]).
    #[serde(with = "crate::offsets::as_list")]
    pub offsets: NextOffsets,
    /// The newest event time applied (ms since the epoch; 0 before any event).
    pub newest_event_ms: i64,
}

impl Watermark {
    /// Whether the event at `offset` of `topic`/`partition` is covered.
    pub fn covers(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.offsets.get(&TopicPartition::new(topic, partition)).is_some_and(|&next| offset < next)
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
    /// For a full snapshot a rollback published: the version whose
    /// parameters it holds again (its own version is new and higher, so
    /// versions never go down). `None` otherwise, and in formats 3 and 4.
    pub rollback_to: Option<u64>,
    /// The shard whose rows this snapshot holds (each shard of a sharded
    /// model publishes its own chain; docs/scaling.md), below
    /// `spec.shards`; 0 for an unsharded model, and in formats 3 to 5.
    pub shard: u32,
}

/// A model spec of formats 3 to 5: a [`ModelSpec`] without `shards` (so of
/// an unsharded model).
#[derive(Deserialize)]
struct SpecBeforeShards {
    dim: usize,
    rating_min: f32,
    rating_max: f32,
    context_features: bool,
}

impl From<SpecBeforeShards> for ModelSpec {
    fn from(old: SpecBeforeShards) -> Self {
        let SpecBeforeShards { dim, rating_min, rating_max, context_features } = old;
        ModelSpec { dim, rating_min, rating_max, context_features, shards: 1 }
    }
}

/// A header of formats 3 to 5: a [`SnapshotHeader`] whose spec has no
/// `shards`, without `shard`, and whose `rollback_to` is `()` (formats 3
/// and 4, which have none: bincode reads a unit from no bytes) or
/// `Option<u64>` (format 5).
#[derive(Deserialize)]
struct HeaderBeforeShards<RollbackTo> {
    model: String,
    version: u64,
    kind: SnapshotKind,
    created_ms: i64,
    watermark: Watermark,
    spec: SpecBeforeShards,
    globals: [f32; 2],
    session_gap_ms: i64,
    rows: [u64; 3],
    tombstones: u64,
    chain_start_offset: Option<i64>,
    metrics: SnapshotMetrics,
    rollback_to: RollbackTo,
}

/// The `rollback_to` of an old header: none before format 5.
trait OldRollbackTo {
    fn version(self) -> Option<u64>;
}

impl OldRollbackTo for () {
    fn version(self) -> Option<u64> {
        None
    }
}

impl OldRollbackTo for Option<u64> {
    fn version(self) -> Option<u64> {
        self
    }
}

impl<R: OldRollbackTo> From<HeaderBeforeShards<R>> for SnapshotHeader {
    fn from(old: HeaderBeforeShards<R>) -> Self {
        let HeaderBeforeShards {
            model,
            version,
            kind,
            created_ms,
            watermark,
            spec,
            globals,
            session_gap_ms,
            rows,
            tombstones,
            chain_start_offset,
            metrics,
            rollback_to,
        } = old;
        SnapshotHeader {
            model,
            version,
            kind,
            created_ms,
            watermark,
            spec: spec.into(),
            globals,
            session_gap_ms,
            rows,
            tombstones,
            chain_start_offset,
            metrics,
            rollback_to: rollback_to.version(),
            shard: 0,
        }
    }
}

/// A message of formats 3 to 5, as their bincode bodies hold it.
#[derive(Deserialize)]
enum MessageBeforeShards<RollbackTo> {
    Header(HeaderBeforeShards<RollbackTo>),
    Chunk(SnapshotChunk),
    Commit(SnapshotCommit),
}

impl<R: OldRollbackTo> From<MessageBeforeShards<R>> for SnapshotMessage {
    fn from(old: MessageBeforeShards<R>) -> Self {
        match old {
            MessageBeforeShards::Header(header) => SnapshotMessage::Header(Box::new(header.into())),
            MessageBeforeShards::Chunk(chunk) => SnapshotMessage::Chunk(chunk),
            MessageBeforeShards::Commit(commit) => SnapshotMessage::Commit(commit),
        }
    }
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

/// A model's parameters at one version: what a full snapshot carries. The
/// trainer exports it; the publisher encodes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelParams {
    /// The model's shape.
    pub spec: ModelSpec,
    /// Global bias per head (indexed by [`crate::Head::index`]).
    pub globals: [f32; 2],
    /// The session gap trained under (ms; see [`crate::score::session_active`]).
    pub session_gap_ms: i64,
    /// Every row, sorted by (table, key).
    pub rows: Vec<SnapshotRow>,
}

/// A model's parameters at one version in columns, one set per table: what
/// the trainer copies out for a full snapshot in a few bulk copies, so the
/// rows of [`ModelParams`] ([`ParamColumns::into_params`]: an allocation
/// and a sort per row) are built on the publisher's thread, not the
/// trainer's.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamColumns {
    /// The model's shape.
    pub spec: ModelSpec,
    /// Global bias per head (indexed by [`crate::Head::index`]).
    pub globals: [f32; 2],
    /// The session gap trained under (ms).
    pub session_gap_ms: i64,
    /// One per table, in [`TableKind::ALL`] order.
    pub tables: Vec<TableColumns>,
}

/// One table's rows as columns, in the trainer's own row order.
#[derive(Debug, Clone, PartialEq)]
pub struct TableColumns {
    /// The table.
    pub table: TableKind,
    /// Floats per row ([`ModelSpec::row_width`] of the table).
    pub width: usize,
    /// Each row's key.
    pub keys: Vec<u64>,
    /// Each row's last update (trainer clock, ms).
    pub updated_ms: Vec<i64>,
    /// Each row's original id, for a table that keeps them (items); empty
    /// for one that does not.
    pub ids: Vec<Box<str>>,
    /// `keys.len() × width` floats, row after row.
    pub values: Vec<f32>,
}

impl ParamColumns {
    /// The parameters as rows sorted by (table, key).
    pub fn into_params(self) -> ModelParams {
        let mut rows = Vec::with_capacity(self.tables.iter().map(|t| t.keys.len()).sum());
        for columns in self.tables {
            let start = rows.len();
            let width = columns.width.max(1);
            rows.extend(
                columns.keys.iter().zip(&columns.updated_ms).zip(columns.values.chunks_exact(width)).enumerate().map(
                    |(r, ((&key, &updated_ms), values))| SnapshotRow {
                        table: columns.table,
                        key,
                        id: columns.ids.get(r).map(|id| id.to_string()),
                        updated_ms,
                        values: values.to_vec(),
                    },
                ),
            );
            rows[start..].sort_unstable_by_key(|row| row.key);
        }
        ModelParams { spec: self.spec, globals: self.globals, session_gap_ms: self.session_gap_ms, rows }
    }
}

/// The parameters changed between two versions: what a delta snapshot carries.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamsDelta {
    /// Global bias per head now.
    pub globals: [f32; 2],
    /// The session gap trained under (ms).
    pub session_gap_ms: i64,
    /// Rows created or changed.
    pub rows: Vec<SnapshotRow>,
    /// Rows removed.
    pub tombstones: Vec<SnapshotTombstone>,
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
    #[error("snapshot format version {0} is not supported (this build reads versions 3, 4 and 5)")]
    UnsupportedVersion(u16),
    /// The body does not decode.
    #[error("malformed snapshot message: {0}")]
    Malformed(String),
    /// Bytes left after the body.
    #[error("{0} trailing bytes after the snapshot message")]
    TrailingBytes(usize),
}

/// Encodes a message value: magic, format version, body (chunks with f32 values).
pub fn encode_message(message: &SnapshotMessage) -> Vec<u8> {
    match message {
        SnapshotMessage::Chunk(chunk) => {
            let rows: Vec<&SnapshotRow> = chunk.rows.iter().collect();
            encode_chunk(chunk.version, chunk.index, &rows, &chunk.tombstones, ValueEncoding::F32)
        }
        other => {
            let mut bytes = Vec::with_capacity(64);
            bytes.extend_from_slice(&MAGIC);
            bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
            // Encoding into a Vec fails only for types serde cannot represent, which these are not.
            bincode::serde::encode_into_std_write(other, &mut bytes, bincode_config())
                .expect("snapshot messages always encode");
            bytes
        }
    }
}

/// Variant index of [`SnapshotMessage::Chunk`], the first u32 of its body.
const CHUNK_VARIANT: u32 = 1;
/// Variant index of [`SnapshotMessage::Commit`].
const COMMIT_VARIANT: u32 = 2;
/// The table byte's flag for a row whose values are f32 in an f16 chunk.
const ROW_IN_F32: u8 = 0x80;
/// The table byte's flag for a row of another width than its table's in the
/// chunk header: a u16 width follows the id.
const ROW_WIDTH: u8 = 0x40;

/// Encodes a chunk message (the layout of formats 4 to 6) from borrowed rows, values as
/// `encoding` says (docs/snapshots.md gives the layout byte by byte). A
/// table's width is its first row's; a row of another width says its own.
pub fn encode_chunk(
    version: u64,
    index: u32,
    rows: &[&SnapshotRow],
    tombstones: &[SnapshotTombstone],
    encoding: ValueEncoding,
) -> Vec<u8> {
    let mut widths = [0u16; 3];
    for table in TableKind::ALL {
        if let Some(row) = rows.iter().find(|row| row.table == table) {
            widths[table.index()] = u16::try_from(row.values.len()).expect("rows are at most MAX_DIM + 4 wide");
        }
    }
    // Room for f32 rows: at most a few bytes too many for f16 ones, without a pass to find out.
    let size = EMPTY_CHUNK_LEN
        + rows.iter().map(|row| encoded_row_len(row, ValueEncoding::F32)).sum::<usize>()
        + tombstones.len() * ENCODED_TOMBSTONE_LEN;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&CHUNK_VARIANT.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.push(encoding.tag());
    widths.iter().for_each(|w| out.extend_from_slice(&w.to_le_bytes()));
    out.extend_from_slice(&(rows.len() as u64).to_le_bytes());
    for row in rows {
        let half = in_f16(row, encoding);
        let own_width = row.values.len() != usize::from(widths[row.table.index()]);
        let mut tag = row.table.index() as u8;
        if encoding == ValueEncoding::F16 && !half {
            tag |= ROW_IN_F32;
        }
        if own_width {
            tag |= ROW_WIDTH;
        }
        out.push(tag);
        out.extend_from_slice(&row.key.to_le_bytes());
        out.extend_from_slice(&row.updated_ms.to_le_bytes());
        match &row.id {
            None => out.push(0),
            Some(id) => {
                write_varint(&mut out, id.len() as u64 + 1);
                out.extend_from_slice(id.as_bytes());
            }
        }
        if own_width {
            out.extend_from_slice(&u16::try_from(row.values.len()).expect("rows are narrow").to_le_bytes());
        }
        if half {
            out.extend(row.values.iter().flat_map(|v| half::f16::from_f32(*v).to_bits().to_le_bytes()));
        } else {
            out.extend(row.values.iter().flat_map(|v| v.to_le_bytes()));
        }
    }
    out.extend_from_slice(&(tombstones.len() as u64).to_le_bytes());
    for tombstone in tombstones {
        out.push(tombstone.table.index() as u8);
        out.extend_from_slice(&tombstone.key.to_le_bytes());
    }
    out
}

/// Whether `row`'s values travel as f16 in a chunk of `encoding`: when the
/// chunk's are f16 and every value survives f16 as a finite number.
fn in_f16(row: &SnapshotRow, encoding: ValueEncoding) -> bool {
    encoding == ValueEncoding::F16 && row.values.iter().all(|&v| half::f16::from_f32(v).is_finite())
}

/// LEB128: 7 bits a byte, low first, the high bit set on all but the last.
fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Decodes a message value written by [`encode_message`].
pub fn decode_message(bytes: &[u8]) -> Result<SnapshotMessage, SnapshotFormatError> {
    if bytes.len() < PREFIX_LEN || bytes[..MAGIC.len()] != MAGIC {
        return Err(SnapshotFormatError::NoMagic);
    }
    let version = u16::from_le_bytes([bytes[MAGIC.len()], bytes[MAGIC.len() + 1]]);
    if !READABLE_VERSIONS.contains(&version) {
        return Err(SnapshotFormatError::UnsupportedVersion(version));
    }
    let body = &bytes[PREFIX_LEN..];
    if version >= 4 && body.get(..4) == Some(&CHUNK_VARIANT.to_le_bytes()[..]) {
        let view = ChunkView::parse(bytes)?;
        return Ok(SnapshotMessage::Chunk(SnapshotChunk {
            version: view.version,
            index: view.index,
            rows: view.rows().map(|row| row.to_owned_row()).collect(),
            tombstones: view.tombstones().collect(),
        }));
    }
    let malformed = |error: bincode::error::DecodeError| SnapshotFormatError::Malformed(error.to_string());
    fn old<R: OldRollbackTo + serde::de::DeserializeOwned>(
        body: &[u8],
    ) -> Result<(SnapshotMessage, usize), bincode::error::DecodeError> {
        let (old, used) = bincode::serde::decode_from_slice::<MessageBeforeShards<R>, _>(body, bincode_config())?;
        Ok((SnapshotMessage::from(old), used))
    }
    let (message, used) = match version {
        3 | 4 => old::<()>(body),
        5 => old::<Option<u64>>(body),
        _ => bincode::serde::decode_from_slice(body, bincode_config()),
    }
    .map_err(malformed)?;
    if let SnapshotMessage::Header(header) = &message
        && (!(1..=crate::shard::MAX_SHARDS).contains(&header.spec.shards) || header.shard >= header.spec.shards)
    {
        return Err(SnapshotFormatError::Malformed(format!(
            "header of shard {} of a model of {} shards",
            header.shard, header.spec.shards
        )));
    }
    match body.len() - used {
        0 => Ok(message),
        extra => Err(SnapshotFormatError::TrailingBytes(extra)),
    }
}

/// The commit record in `bytes`, if they hold one. Other messages are
/// recognised by their variant index and not decoded, so scanning a topic for
/// commit records does not decode its chunks.
pub fn decode_commit(bytes: &[u8]) -> Option<SnapshotCommit> {
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
    if bytes.len() < PREFIX_LEN || bytes[..MAGIC.len()] != MAGIC {
        return None;
    }
    if !READABLE_VERSIONS.contains(&u16::from_le_bytes([bytes[MAGIC.len()], bytes[MAGIC.len() + 1]])) {
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

/// The values of a row as a chunk message holds them: little-endian f32s,
/// or f16s read as f32s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeValues<'a> {
    bytes: &'a [u8],
    half: bool,
}

impl<'a> LeValues<'a> {
    /// How many values.
    pub fn len(&self) -> usize {
        self.bytes.len() / if self.half { 2 } else { 4 }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The values, decoded one by one.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = f32> + 'a {
        let (bytes, half) = (self.bytes, self.half);
        let width = if half { 2 } else { 4 };
        bytes.chunks_exact(width).map(move |b| match half {
            true => half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
            false => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        })
    }

    /// Whether `values` hold exactly these values, bit for bit.
    pub fn equals(&self, values: &[f32]) -> bool {
        values.len() == self.len() && self.iter().zip(values).all(|(a, b)| a.to_bits() == b.to_bits())
    }

    /// Copies the values into `out` (of the same length).
    pub fn copy_to(&self, out: &mut [f32]) {
        for (slot, value) in out.iter_mut().zip(self.iter()) {
            *slot = value;
        }
    }
}

/// A row of a chunk message, read in place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowView<'a> {
    /// The row's table.
    pub table: TableKind,
    /// The row's key.
    pub key: u64,
    /// The item's id string.
    pub id: Option<&'a str>,
    /// Trainer clock at the row's last update.
    pub updated_ms: i64,
    /// The row's values.
    pub values: LeValues<'a>,
}

impl RowView<'_> {
    /// The row, decoded.
    pub fn to_owned_row(&self) -> SnapshotRow {
        SnapshotRow {
            table: self.table,
            key: self.key,
            id: self.id.map(str::to_owned),
            updated_ms: self.updated_ms,
            values: self.values.iter().collect(),
        }
    }
}

/// A chunk message checked and read in place: its rows and tombstones are
/// decoded as they are iterated, without allocating, so a large snapshot
/// streams through a reader at the speed of its bytes. It reads exactly
/// what [`decode_message`] reads (and refuses what it refuses); every length
/// is checked against the bytes present, so no length can make it allocate.
#[derive(Debug, Clone, Copy)]
pub struct ChunkView<'a> {
    /// The snapshot's version.
    pub version: u64,
    /// Position of the chunk, from 0.
    pub index: u32,
    /// Rows per table ([`TableKind::index`] order).
    pub table_rows: [u64; 3],
    rows: &'a [u8],
    row_count: u64,
    tombstones: &'a [u8],
    layout: ChunkLayout,
}

/// How a chunk's rows and tombstones are laid out.
#[derive(Debug, Clone, Copy)]
enum ChunkLayout {
    /// Format 3: bincode rows (u32 table, option tag, u64 lengths), f32 values.
    Bincode,
    /// Format 4: compact rows of the given widths per table.
    Compact { widths: [u16; 3], half: bool },
}

/// Reads fixed-width little-endian fields off the front of a byte slice.
#[derive(Clone, Copy)]
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotFormatError> {
        if self.0.len() < n {
            return Err(SnapshotFormatError::Malformed(format!("{n} more bytes needed, {} left", self.0.len())));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, SnapshotFormatError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, SnapshotFormatError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, SnapshotFormatError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    /// A length prefix that must fit in what is left at `unit` bytes an element.
    fn len(&mut self, unit: usize) -> Result<usize, SnapshotFormatError> {
        let len = self.u64()?;
        match usize::try_from(len) {
            Ok(len) if len.checked_mul(unit).is_some_and(|bytes| bytes <= self.0.len()) => Ok(len),
            _ => Err(SnapshotFormatError::Malformed(format!("a length of {len} is more than the message holds"))),
        }
    }

    fn table(&mut self) -> Result<TableKind, SnapshotFormatError> {
        Self::table_numbered(self.u32()?)
    }

    /// The table of number `n` ([`TableKind::index`]).
    fn table_numbered(n: u32) -> Result<TableKind, SnapshotFormatError> {
        let table = usize::try_from(n).ok().and_then(|n| TableKind::ALL.get(n));
        table.copied().ok_or_else(|| SnapshotFormatError::Malformed(format!("table {n}")))
    }

    fn row(&mut self) -> Result<RowView<'a>, SnapshotFormatError> {
        let table = self.table()?;
        let key = self.u64()?;
        let id = match self.u8()? {
            0 => None,
            1 => {
                let len = self.len(1)?;
                let text = std::str::from_utf8(self.take(len)?)
                    .map_err(|error| SnapshotFormatError::Malformed(format!("an id is not UTF-8: {error}")))?;
                Some(text)
            }
            other => return Err(SnapshotFormatError::Malformed(format!("option tag {other}"))),
        };
        let updated_ms = self.u64()? as i64;
        let count = self.len(4)?;
        let values = LeValues { bytes: self.take(4 * count)?, half: false };
        Ok(RowView { table, key, id, updated_ms, values })
    }

    /// A varint (LEB128) of at most 10 bytes.
    fn varint(&mut self) -> Result<u64, SnapshotFormatError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(SnapshotFormatError::Malformed("a varint longer than 10 bytes".to_owned()))
    }

    /// A format-4 row of `widths` values per table, f16 where `half`.
    fn compact_row(&mut self, widths: [u16; 3], half: bool) -> Result<RowView<'a>, SnapshotFormatError> {
        let tag = self.u8()?;
        let in_f32 = tag & ROW_IN_F32 != 0;
        if in_f32 && !half {
            return Err(SnapshotFormatError::Malformed("an f32 flag in an f32 chunk".to_owned()));
        }
        let table = Self::table_numbered(u32::from(tag & !(ROW_IN_F32 | ROW_WIDTH)))?;
        let key = self.u64()?;
        let updated_ms = self.u64()? as i64;
        let id = match self.varint()? {
            0 => None,
            len => {
                let len = usize::try_from(len - 1).unwrap_or(usize::MAX);
                let text = std::str::from_utf8(self.take(len)?)
                    .map_err(|error| SnapshotFormatError::Malformed(format!("an id is not UTF-8: {error}")))?;
                Some(text)
            }
        };
        let width = match tag & ROW_WIDTH {
            0 => widths[table.index()],
            _ => u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")),
        };
        let half = half && !in_f32;
        let width = usize::from(width) * if half { 2 } else { 4 };
        let values = LeValues { bytes: self.take(width)?, half };
        Ok(RowView { table, key, id, updated_ms, values })
    }

    /// The next row as `layout` lays rows out.
    fn row_of(&mut self, layout: ChunkLayout) -> Result<RowView<'a>, SnapshotFormatError> {
        match layout {
            ChunkLayout::Bincode => self.row(),
            ChunkLayout::Compact { widths, half } => self.compact_row(widths, half),
        }
    }

    /// The next tombstone as `layout` lays them out.
    fn tombstone_of(&mut self, layout: ChunkLayout) -> Result<SnapshotTombstone, SnapshotFormatError> {
        let table = match layout {
            ChunkLayout::Bincode => self.table()?,
            ChunkLayout::Compact { .. } => Self::table_numbered(u32::from(self.u8()?))?,
        };
        Ok(SnapshotTombstone { table, key: self.u64()? })
    }
}

impl<'a> ChunkView<'a> {
    /// Reads the chunk message value `bytes` (format 3 or 4) in place, checking all of it.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, SnapshotFormatError> {
        if bytes.len() < PREFIX_LEN || bytes[..MAGIC.len()] != MAGIC {
            return Err(SnapshotFormatError::NoMagic);
        }
        let format = u16::from_le_bytes([bytes[MAGIC.len()], bytes[MAGIC.len() + 1]]);
        if !READABLE_VERSIONS.contains(&format) {
            return Err(SnapshotFormatError::UnsupportedVersion(format));
        }
        let mut reader = Reader(&bytes[PREFIX_LEN..]);
        if reader.u32()? != CHUNK_VARIANT {
            return Err(SnapshotFormatError::Malformed("not a chunk message".to_owned()));
        }
        let version = reader.u64()?;
        let index = reader.u32()?;
        let (layout, smallest_row, tombstone_len) = if format == 3 {
            // A row takes at least 33 bytes (table, key, tag, time, value count).
            (ChunkLayout::Bincode, 33, 12)
        } else {
            let half = match reader.u8()? {
                0 => false,
                1 => true,
                other => return Err(SnapshotFormatError::Malformed(format!("value encoding {other}"))),
            };
            let mut widths = [0u16; 3];
            for width in &mut widths {
                *width = u16::from_le_bytes(reader.take(2)?.try_into().expect("2 bytes"));
            }
            // A row takes at least 18 bytes (table, key, time, id length).
            (ChunkLayout::Compact { widths, half }, 18, ENCODED_TOMBSTONE_LEN)
        };
        let row_count = reader.len(smallest_row)? as u64;
        let rows = reader.0;
        let mut table_rows = [0u64; 3];
        for _ in 0..row_count {
            table_rows[reader.row_of(layout)?.table.index()] += 1;
        }
        let rows = &rows[..rows.len() - reader.0.len()];
        let tombstone_count = reader.len(tombstone_len)?;
        let tombstones = reader.take(tombstone_count * tombstone_len)?;
        let mut check = Reader(tombstones);
        for _ in 0..tombstone_count {
            check.tombstone_of(layout)?;
        }
        match reader.0.len() {
            0 => Ok(ChunkView { version, index, table_rows, rows, row_count, tombstones, layout }),
            extra => Err(SnapshotFormatError::TrailingBytes(extra)),
        }
    }

    /// The rows, in order.
    pub fn rows(&self) -> impl Iterator<Item = RowView<'a>> + Clone + 'a {
        let (mut reader, layout) = (Reader(self.rows), self.layout);
        // Checked in `parse`: every row reads.
        (0..self.row_count).map_while(move |_| reader.row_of(layout).ok())
    }

    /// Rows in the chunk.
    pub fn row_count(&self) -> u64 {
        self.row_count
    }

    /// The tombstones, in order.
    pub fn tombstones(&self) -> impl Iterator<Item = SnapshotTombstone> + 'a {
        let (mut reader, layout) = (Reader(self.tombstones), self.layout);
        std::iter::from_fn(move || reader.tombstone_of(layout).ok())
    }

    /// Tombstones in the chunk.
    pub fn tombstone_count(&self) -> u64 {
        let len = match self.layout {
            ChunkLayout::Bincode => 12,
            ChunkLayout::Compact { .. } => ENCODED_TOMBSTONE_LEN,
        };
        (self.tombstones.len() / len) as u64
    }
}

/// Bytes a row adds to a chunk [`encode_chunk`] writes with `encoding` (2
/// more for a row whose width differs from its table's first row in the chunk).
pub fn encoded_row_len(row: &SnapshotRow, encoding: ValueEncoding) -> usize {
    let id = row.id.as_ref().map_or(0, |id| id.len() + varint_len(id.len() as u64 + 1) - 1);
    let half = in_f16(row, encoding);
    // table + key + updated + id length (1 byte for none) + id + values
    1 + 8 + 8 + 1 + id + row.values.len() * if half { 2 } else { 4 }
}

fn varint_len(value: u64) -> usize {
    (64 - value.leading_zeros() as usize).div_ceil(7).max(1)
}

/// Bytes a tombstone adds to an encoded chunk (table byte, key).
pub const ENCODED_TOMBSTONE_LEN: usize = 1 + 8;

/// Bytes of an encoded chunk message with no rows and no tombstones:
/// prefix, variant, version, index, encoding, widths, row count, tombstone count.
pub const EMPTY_CHUNK_LEN: usize = PREFIX_LEN + 4 + 8 + 4 + 1 + 6 + 8 + 8;

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

    #[test]
    fn a_watermark_is_laid_out_as_docs_snapshots_md_says() {
        let watermark = Watermark {
            offsets: NextOffsets::from([(TopicPartition::new("b", 1), 7), (TopicPartition::new("a", 2), 300)]),
            newest_event_ms: -1,
        };
        let mut bytes = Vec::new();
        bincode::serde::encode_into_std_write(&watermark, &mut bytes, bincode_config()).expect("encodes");
        let mut expected = 2u64.to_le_bytes().to_vec(); // pairs, sorted by (topic, partition)
        for (topic, partition, next) in [("a", 2i32, 300i64), ("b", 1, 7)] {
            expected.extend(1u64.to_le_bytes());
            expected.extend(topic.as_bytes());
            expected.extend(partition.to_le_bytes());
            expected.extend(next.to_le_bytes());
        }
        expected.extend((-1i64).to_le_bytes());
        assert_eq!(bytes, expected);
        let (decoded, _): (Watermark, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode_config()).expect("decodes");
        assert_eq!(decoded, watermark);
    }

    fn chunk() -> SnapshotChunk {
        SnapshotChunk {
            version: 7,
            index: 3,
            rows: vec![row(TableKind::User, 1, None), row(TableKind::Item, u64::MAX, Some("item-é"))],
            tombstones: vec![SnapshotTombstone { table: TableKind::Feature, key: 9 }],
        }
    }

    fn header() -> SnapshotHeader {
        SnapshotHeader {
            model: "m".to_owned(),
            version: 7,
            kind: SnapshotKind::Delta { base_version: 6 },
            created_ms: 1_700_000_000_000,
            watermark: Watermark {
                offsets: NextOffsets::from([(TopicPartition::new("t", 2), 42)]),
                newest_event_ms: 5,
            },
            spec: ModelSpec::default(),
            globals: [3.5, -2.0],
            session_gap_ms: 3_600_000,
            rows: [1, 1, 0],
            tombstones: 1,
            chain_start_offset: Some(11),
            metrics: SnapshotMetrics { rating_events: 4, rating_rmse: Some(0.9), ..SnapshotMetrics::default() },
            rollback_to: Some(4),
            shard: 0,
        }
    }

    #[test]
    fn messages_round_trip() {
        let commit = SnapshotCommit { version: 7, chunks: 1, checksum: 99, chain_start_offset: 11 };
        let sharded = SnapshotHeader { spec: ModelSpec { shards: 3, ..ModelSpec::default() }, shard: 2, ..header() };
        for message in [
            SnapshotMessage::Header(Box::new(header())),
            SnapshotMessage::Header(Box::new(sharded)),
            SnapshotMessage::Chunk(chunk()),
            SnapshotMessage::Commit(commit),
        ] {
            assert_eq!(decode_message(&encode_message(&message)), Ok(message));
        }
    }

    #[test]
    fn the_encoded_chunk_length_is_predicted_exactly() {
        let mut chunk = chunk();
        chunk.rows.push(SnapshotRow { values: vec![1e6, 0.5, 0.25, 2.0], ..row(TableKind::User, 5, None) });
        let rows: Vec<&SnapshotRow> = chunk.rows.iter().collect();
        for encoding in [ValueEncoding::F32, ValueEncoding::F16] {
            let predicted = EMPTY_CHUNK_LEN
                + chunk.rows.iter().map(|row| encoded_row_len(row, encoding)).sum::<usize>()
                + chunk.tombstones.len() * ENCODED_TOMBSTONE_LEN;
            let bytes = encode_chunk(chunk.version, chunk.index, &rows, &chunk.tombstones, encoding);
            assert_eq!(bytes.len(), predicted, "{encoding:?}");
        }
    }

    /// A chunk as format 3 wrote it: bincode of the whole message.
    fn format_3_chunk(chunk: &SnapshotChunk) -> Vec<u8> {
        let mut bytes = b"FSNP".to_vec();
        bytes.extend_from_slice(&3u16.to_le_bytes());
        let message = SnapshotMessage::Chunk(chunk.clone());
        bincode::serde::encode_into_std_write(&message, &mut bytes, bincode_config()).expect("encodes");
        bytes
    }

    #[test]
    fn format_3_chunks_are_still_read_in_place_and_decoded() {
        let chunk = chunk();
        let bytes = format_3_chunk(&chunk);
        assert_eq!(decode_message(&bytes), Ok(SnapshotMessage::Chunk(chunk.clone())));
        let view = ChunkView::parse(&bytes).expect("a format-3 chunk");
        assert_eq!(view.rows().map(|r| r.to_owned_row()).collect::<Vec<_>>(), chunk.rows);
        assert_eq!(view.tombstones().collect::<Vec<_>>(), chunk.tombstones);
        assert_eq!((view.tombstone_count(), decode_chunk_position(&bytes)), (1, Some((7, 3))));
    }

    #[test]
    fn an_f16_chunk_rounds_each_value_and_keeps_out_of_range_rows_in_f32() {
        let mut chunk = chunk();
        chunk.rows[0].values = vec![0.1, -3.3, 1e-3, 1234.5];
        chunk.rows.push(SnapshotRow { values: vec![1e6, 0.1, 0.25, -7e4], ..row(TableKind::User, 5, None) });
        let rows: Vec<&SnapshotRow> = chunk.rows.iter().collect();
        let half = encode_chunk(chunk.version, chunk.index, &rows, &chunk.tombstones, ValueEncoding::F16);
        let exact = encode_chunk(chunk.version, chunk.index, &rows, &chunk.tombstones, ValueEncoding::F32);
        assert_eq!(exact.len() - half.len(), 2 * 8, "two rows of four values in f16, one kept in f32");
        let Ok(SnapshotMessage::Chunk(decoded)) = decode_message(&half) else { panic!("a chunk") };
        for (got, sent) in decoded.rows[..2].iter().zip(&chunk.rows) {
            for (a, b) in got.values.iter().zip(&sent.values) {
                assert_eq!(*a, half::f16::from_f32(*b).to_f32(), "rounded to the nearest f16");
                assert!((a - b).abs() <= b.abs() * 2f32.powi(-11));
            }
        }
        assert_eq!(decoded.rows[2], chunk.rows[2], "a value beyond f16's range keeps its row in f32");
        assert_eq!(decoded.tombstones, chunk.tombstones);
    }

    #[test]
    fn an_f16_delta_at_dim_32_is_under_half_what_format_3_sent() {
        // A delta as ratings make them: a user row and an item row per event.
        let spec = ModelSpec { dim: 32, ..ModelSpec::default() };
        let rows: Vec<SnapshotRow> = (0..500u64)
            .flat_map(|n| {
                let values = |table: TableKind| {
                    (0..spec.row_width(table)).map(|k| ((n + k as u64) % 17) as f32 * 0.03 - 0.2).collect()
                };
                [
                    SnapshotRow {
                        table: TableKind::User,
                        key: n,
                        id: None,
                        updated_ms: 1_764_400_000_000,
                        values: values(TableKind::User),
                    },
                    SnapshotRow {
                        table: TableKind::Item,
                        key: n,
                        id: Some(format!("i{}", 10_000 + n)),
                        updated_ms: 1_764_400_000_000,
                        values: values(TableKind::Item),
                    },
                ]
            })
            .collect();
        let chunk = SnapshotChunk { version: 2, index: 0, rows, tombstones: vec![] };
        let refs: Vec<&SnapshotRow> = chunk.rows.iter().collect();
        let v3 = format_3_chunk(&chunk).len() as f64;
        let f32_bytes = encode_chunk(2, 0, &refs, &[], ValueEncoding::F32).len() as f64;
        let f16_bytes = encode_chunk(2, 0, &refs, &[], ValueEncoding::F16).len() as f64;
        assert!(v3 / f16_bytes >= 1.9, "format 3 {v3} B, f16 {f16_bytes} B: {:.2}x", v3 / f16_bytes);
        assert!(f32_bytes / f16_bytes >= 1.75, "f32 {f32_bytes} B, f16 {f16_bytes} B");
    }

    #[test]
    fn a_format_5_chunk_is_laid_out_as_docs_snapshots_md_says() {
        let item = SnapshotRow {
            table: TableKind::Item,
            key: 9,
            id: Some("i9".to_owned()),
            updated_ms: 5,
            values: vec![1.0, -2.0],
        };
        let tombstone = SnapshotTombstone { table: TableKind::User, key: 3 };
        let bytes = encode_chunk(7, 1, &[&item], &[tombstone], ValueEncoding::F16);
        let mut expected = b"FSNP".to_vec();
        expected.extend_from_slice(&FORMAT_VERSION.to_le_bytes()); // the chunk layout of formats 4 to 6
        expected.extend_from_slice(&1u32.to_le_bytes()); // chunk
        expected.extend_from_slice(&7u64.to_le_bytes()); // version
        expected.extend_from_slice(&1u32.to_le_bytes()); // index
        expected.push(1); // f16
        for width in [0u16, 2, 0] {
            expected.extend_from_slice(&width.to_le_bytes());
        }
        expected.extend_from_slice(&1u64.to_le_bytes()); // rows
        expected.push(1); // item
        expected.extend_from_slice(&9u64.to_le_bytes());
        expected.extend_from_slice(&5i64.to_le_bytes());
        expected.push(3); // id length + 1
        expected.extend_from_slice(b"i9");
        expected.extend_from_slice(&0x3c00u16.to_le_bytes()); // 1.0
        expected.extend_from_slice(&0xc000u16.to_le_bytes()); // -2.0
        expected.extend_from_slice(&1u64.to_le_bytes()); // tombstones
        expected.push(0);
        expected.extend_from_slice(&3u64.to_le_bytes());
        assert_eq!(bytes, expected);
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
    fn a_chunk_read_in_place_holds_what_decoding_gives() {
        let chunk = chunk();
        let bytes = encode_message(&SnapshotMessage::Chunk(chunk.clone()));
        let view = ChunkView::parse(&bytes).expect("a chunk");
        assert_eq!((view.version, view.index, view.table_rows), (7, 3, [1, 1, 0]));
        let rows: Vec<SnapshotRow> = view
            .rows()
            .map(|r| SnapshotRow {
                table: r.table,
                key: r.key,
                id: r.id.map(str::to_owned),
                updated_ms: r.updated_ms,
                values: r.values.iter().collect(),
            })
            .collect();
        assert_eq!(rows, chunk.rows);
        assert_eq!(view.tombstones().collect::<Vec<_>>(), chunk.tombstones);
        assert!(view.rows().next().is_some_and(|r| r.values.equals(&chunk.rows[0].values)));
        for cut in 0..bytes.len() {
            assert!(ChunkView::parse(&bytes[..cut]).is_err(), "a chunk cut at {cut} is refused");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(ChunkView::parse(&longer).err(), Some(SnapshotFormatError::TrailingBytes(1)));
        let commit = SnapshotCommit { version: 1, chunks: 1, checksum: 1, chain_start_offset: 0 };
        assert!(ChunkView::parse(&encode_message(&SnapshotMessage::Commit(commit))).is_err());
    }

    #[test]
    fn borrowed_chunks_encode_like_owned_ones() {
        let chunk = chunk();
        let rows: Vec<&SnapshotRow> = chunk.rows.iter().collect();
        let borrowed = encode_chunk(chunk.version, chunk.index, &rows, &chunk.tombstones, ValueEncoding::F32);
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
    fn a_format_6_header_carries_the_shard_count_in_its_spec_and_the_shard_last() {
        let spec = ModelSpec { dim: 16, rating_min: 1.0, rating_max: 5.0, context_features: true, shards: 3 };
        let bytes = encode_message(&SnapshotMessage::Header(Box::new(SnapshotHeader { spec, shard: 2, ..header() })));
        let mut spec_then_globals = 16u64.to_le_bytes().to_vec();
        spec_then_globals.extend(1f32.to_le_bytes());
        spec_then_globals.extend(5f32.to_le_bytes());
        spec_then_globals.push(1);
        spec_then_globals.extend(3u32.to_le_bytes());
        spec_then_globals.extend(3.5f32.to_le_bytes());
        spec_then_globals.extend((-2f32).to_le_bytes());
        assert!(bytes.windows(spec_then_globals.len()).any(|w| w == spec_then_globals), "spec, then globals");
        let mut tail = vec![1u8]; // rollback_to: Some(4)
        tail.extend(4u64.to_le_bytes());
        tail.extend(2u32.to_le_bytes());
        assert!(bytes.ends_with(&tail), "rollback_to, then shard");
    }

    #[test]
    fn a_header_of_a_shard_the_model_does_not_have_is_malformed() {
        for (shards, shard) in [(2, 2), (0, 0), (1, 1), (1025, 0)] {
            let header = SnapshotHeader { spec: ModelSpec { shards, ..ModelSpec::default() }, shard, ..header() };
            let bytes = encode_message(&SnapshotMessage::Header(Box::new(header)));
            assert!(matches!(decode_message(&bytes), Err(SnapshotFormatError::Malformed(_))), "{shard} of {shards}");
        }
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
