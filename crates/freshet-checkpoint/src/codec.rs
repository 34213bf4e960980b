//! How rows, offsets and metadata are laid out in RocksDB.
//!
//! | column family | key | value |
//! |---|---|---|
//! | `rows` | table (1 byte: user 0, item 1, feature 2) + key (u64 big-endian) | flat row, below |
//! | `pending` | same as `rows` | sightings (u32 LE), time of the latest (i64 LE) |
//! | `offsets` | topic (UTF-8) + 0x00 + partition (i32 big-endian) | next offset (i64 big-endian) |
//! | `meta` | a name below | the named value, as docs/checkpoint.md says |
//!
//! Big-endian keys make RocksDB's byte order equal the trainer's
//! (table, key) order, so a scan restores rows already sorted.
//!
//! A flat row is a fixed header, the id and the raw floats, all little-endian,
//! so a restore copies floats straight into the trainer's arenas without a
//! per-row allocation:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | width: floats per vector (u32) |
//! | 4 | floats in `m` (0 or width, u32) |
//! | 4 | floats in `v` (0 or width, u32) |
//! | 4 | optimizer steps (u32) |
//! | 8 | update counter (u64) |
//! | 8 | time of the last update, ms (i64) |
//! | 4 | id length in bytes, `u32::MAX` for no id |
//! | id length | id, UTF-8 |
//! | 4 × (width + m + v) | `params`, `m`, `v` as f32 |
//!
//! The layout is versioned as a whole by the `format` meta key. Layout 6
//! writes every value explicitly (the dense state as a
//! [`freshet_core::record`], field by field), keeps the rollback audit and
//! records the model's shard count in its spec; a layout-5 store (a spec
//! without the count: one shard), layout-4 store (that, without rollbacks)
//! or layout-3 store (the spec, the dense state and pending counts as
//! bincode of the trainer's types) is migrated when opened; any other is
//! refused, naming both versions.

use freshet_core::ModelSpec;
use freshet_core::TableKind;
use freshet_core::TopicPartition;
use freshet_core::record::{RecordReader, RecordWriter};
use freshet_trainer::{DenseState, PendingAdmission, RowRef};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::CheckpointError;

/// Column family of rows.
pub(crate) const CF_ROWS: &str = "rows";
/// Column family of pending admission counts.
pub(crate) const CF_PENDING: &str = "pending";
/// Column family of source offsets.
pub(crate) const CF_OFFSETS: &str = "offsets";
/// Column family of metadata.
pub(crate) const CF_META: &str = "meta";
/// Every column family.
pub(crate) const COLUMN_FAMILIES: [&str; 4] = [CF_ROWS, CF_PENDING, CF_OFFSETS, CF_META];

/// Meta key: layout version of this store.
pub(crate) const META_FORMAT: &[u8] = b"format";
/// Meta key: the model spec.
pub(crate) const META_SPEC: &[u8] = b"spec";
/// Meta key: the shard whose rows the store holds (u32 record; layout 6,
/// absent: shard 0).
pub(crate) const META_SHARD: &[u8] = b"shard";
/// Meta key: the checkpoint version (u64).
pub(crate) const META_VERSION: &[u8] = b"version";
/// Meta key: the newest snapshot version published (u64).
pub(crate) const META_PUBLISHED: &[u8] = b"published_version";
/// Meta key: the trainer's dense state.
pub(crate) const META_DENSE: &[u8] = b"dense";
/// Meta key: events read but not applied, left out by skip rollbacks (u64).
pub(crate) const META_SKIPPED: &[u8] = b"events_skipped";
/// Meta key: the audit records of the rollbacks.
pub(crate) const META_ROLLBACKS: &[u8] = b"rollbacks";
/// Meta key: a shard's high-water marks of what it applied from each other
/// shard ([`freshet_core::exchange::HighWater`]; layout 7, absent: none).
pub(crate) const META_HIGH_WATER: &[u8] = b"high_water";
/// Meta key prefix: `outbox.` and a version (u64 big-endian) hold what that
/// checkpoint's interval produced for other shards and the broker does not
/// have yet ([`freshet_core::exchange::Outbox`]; layout 7).
pub(crate) const OUTBOX_PREFIX: &[u8] = b"outbox.";

/// The meta key of version `version`'s outbox.
pub(crate) fn outbox_key(version: u64) -> Vec<u8> {
    [OUTBOX_PREFIX, &version.to_be_bytes()].concat()
}

/// The layout version written by this code (7: a shard's high-water marks
/// and outboxes; 6: the spec record with the shard count; 5: the skipped-event count and rollback records; 4:
/// explicit spec, dense state and pending records; 3: those as bincode,
/// user rows with the rating scale and session offsets; 2: flat rows; 1 had
/// bincode rows).
pub(crate) const FORMAT_VERSION: u32 = 7;
/// Layout 6: layout 7 without the exchange keys (whose absence means no
/// marks and an empty outbox).
pub(crate) const LAYOUT_WITHOUT_EXCHANGE: u32 = 6;
/// Layout 5: layout 6 with a spec record without the shard count (a model
/// of one shard).
pub(crate) const LAYOUT_WITHOUT_SHARDS: u32 = 5;
/// Layout 4: layout 5 without rollbacks (so without their two meta keys).
pub(crate) const LAYOUT_WITHOUT_ROLLBACKS: u32 = 4;
/// Layout 3: the spec, dense state and pending counts as bincode.
pub(crate) const BINCODE_LAYOUT: u32 = 3;
/// The layouts this code reads (and migrates to [`FORMAT_VERSION`] when it opens a store).
pub(crate) const READABLE_LAYOUTS: [u32; 5] =
    [BINCODE_LAYOUT, LAYOUT_WITHOUT_ROLLBACKS, LAYOUT_WITHOUT_SHARDS, LAYOUT_WITHOUT_EXCHANGE, FORMAT_VERSION];

/// Bytes of a flat row's fixed header.
const ROW_HEADER: usize = 36;
/// The id length of a row without an id.
const NO_ID: u32 = u32::MAX;

/// Most bytes a bincode value of the store may claim when decoded (the dense
/// state, with its metric windows, is the largest: well under a MiB at the
/// default window). A damaged length prefix beyond it is an error, never an
/// allocation of that size.
const DECODE_LIMIT: usize = 256 * 1024 * 1024;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, config()).expect("bincode encoding of checkpoint values cannot fail")
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, CheckpointError> {
    match bincode::serde::decode_from_slice(bytes, config()) {
        Ok((value, read)) if read == bytes.len() => Ok(value),
        Ok((_, read)) => Err(CheckpointError::Corrupt(format!("{what}: {} trailing bytes", bytes.len() - read))),
        Err(error) => Err(CheckpointError::Corrupt(format!("{what}: {error}"))),
    }
}

/// The spec record: dim (u32), rating_min (f32), rating_max (f32),
/// context_features (u8), shards (u32; layouts 4 and 5 end before it),
/// little-endian.
pub(crate) fn encode_spec(spec: &ModelSpec) -> Vec<u8> {
    let ModelSpec { dim, rating_min, rating_max, context_features, shards } = spec;
    let mut w = RecordWriter::default();
    w.u32(u32::try_from(*dim).expect("dims are at most MAX_DIM"));
    w.f32(*rating_min);
    w.f32(*rating_max);
    w.bool(*context_features);
    w.u32(*shards);
    w.into_bytes()
}

/// The shard record: the shard's index (u32), little-endian.
pub(crate) fn encode_shard(shard: u32) -> Vec<u8> {
    let mut w = RecordWriter::default();
    w.u32(shard);
    w.into_bytes()
}

/// Reads what [`encode_shard`] wrote.
pub(crate) fn decode_shard(bytes: &[u8]) -> Result<u32, CheckpointError> {
    let mut r = RecordReader::new(bytes, "shard");
    let shard = r.u32()?;
    r.finish()?;
    Ok(shard)
}

/// Layout 3's spec: bincode of the spec as it was before shards.
#[derive(serde::Deserialize)]
struct BincodeSpec {
    dim: usize,
    rating_min: f32,
    rating_max: f32,
    context_features: bool,
}

/// The spec stored by a store of `layout`; a layout before 6 holds a model
/// of one shard.
pub(crate) fn decode_spec(bytes: &[u8], layout: u32) -> Result<ModelSpec, CheckpointError> {
    if layout == BINCODE_LAYOUT {
        let BincodeSpec { dim, rating_min, rating_max, context_features } = decode(bytes, "spec")?;
        return Ok(ModelSpec { dim, rating_min, rating_max, context_features, shards: 1 });
    }
    let mut r = RecordReader::new(bytes, "spec");
    let (dim, rating_min, rating_max, context_features) = (r.u32()? as usize, r.f32()?, r.f32()?, r.bool()?);
    let shards = if layout >= LAYOUT_WITHOUT_EXCHANGE { r.u32()? } else { 1 };
    r.finish()?;
    Ok(ModelSpec { dim, rating_min, rating_max, context_features, shards })
}

/// The dense-state record ([`DenseState::write_record`]).
pub(crate) fn encode_dense(dense: &DenseState) -> Vec<u8> {
    let mut w = RecordWriter::default();
    dense.write_record(&mut w);
    w.into_bytes()
}

/// The dense state stored by a store of `layout`.
pub(crate) fn decode_dense(bytes: &[u8], layout: u32) -> Result<DenseState, CheckpointError> {
    if layout == BINCODE_LAYOUT {
        return decode(bytes, "dense");
    }
    let mut r = RecordReader::new(bytes, "dense");
    let dense = DenseState::read_record(&mut r)?;
    r.finish()?;
    Ok(dense)
}

/// A pending count's value: sightings (u32), time of the latest (i64).
pub(crate) fn encode_pending(pending: &PendingAdmission) -> Vec<u8> {
    let mut w = RecordWriter::default();
    w.u32(pending.count);
    w.i64(pending.last_seen_ms);
    w.into_bytes()
}

/// The pending count stored under `key` by a store of `layout`.
pub(crate) fn decode_pending(key: &[u8], value: &[u8], layout: u32) -> Result<PendingAdmission, CheckpointError> {
    let (table, key) = parse_row_key(key)?;
    if layout == BINCODE_LAYOUT {
        let pending: PendingAdmission = decode(value, "pending count")?;
        if (pending.table, pending.key) != (table, key) {
            return Err(CheckpointError::Corrupt(format!(
                "pending count stored under {:?} is {:?}",
                (table, key),
                (pending.table, pending.key)
            )));
        }
        return Ok(pending);
    }
    let mut r = RecordReader::new(value, "pending count");
    let pending = PendingAdmission { table, key, count: r.u32()?, last_seen_ms: r.i64()? };
    r.finish()?;
    Ok(pending)
}

/// Appends the flat encoding of `row` to `out`.
pub(crate) fn encode_row(row: &RowRef<'_>, out: &mut Vec<u8>) {
    let id = row.id.unwrap_or_default();
    out.reserve(encoded_row_len(row));
    for count in [row.params.len(), row.m.len(), row.v.len()] {
        out.extend_from_slice(&u32::try_from(count).expect("rows are at most MAX_DIM + 2 wide").to_le_bytes());
    }
    out.extend_from_slice(&row.steps.to_le_bytes());
    out.extend_from_slice(&row.updates.to_le_bytes());
    out.extend_from_slice(&row.last_update_ms.to_le_bytes());
    let id_len = match row.id {
        Some(id) => u32::try_from(id.len()).expect("ids are far shorter than 4 GiB"),
        None => NO_ID,
    };
    out.extend_from_slice(&id_len.to_le_bytes());
    out.extend_from_slice(id.as_bytes());
    for vector in [row.params, row.m, row.v] {
        out.extend(vector.iter().flat_map(|x| x.to_le_bytes()));
    }
}

/// The bytes [`encode_row`] writes for `row`.
pub(crate) fn encoded_row_len(row: &RowRef<'_>) -> usize {
    let floats = row.params.len() + row.m.len() + row.v.len();
    ROW_HEADER + row.id.map_or(0, str::len) + 4 * floats
}

/// A flat row's fixed header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowHeader {
    lengths: [usize; 3],
    steps: u32,
    /// The row's update counter.
    pub(crate) updates: u64,
    last_update_ms: i64,
    id_len: Option<usize>,
}

/// Reads the fixed header of a flat row, checking that the value is as long as it says.
pub(crate) fn decode_row_header(bytes: &[u8], at: (TableKind, u64)) -> Result<RowHeader, CheckpointError> {
    let corrupt = |problem: &str| CheckpointError::Corrupt(format!("row {at:?}: {problem}"));
    let header: &[u8; ROW_HEADER] =
        bytes.get(..ROW_HEADER).and_then(|h| h.try_into().ok()).ok_or_else(|| corrupt("shorter than its header"))?;
    let u32_at = |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let u64_at = |i: usize| u64::from_le_bytes(std::array::from_fn(|k| header[i + k]));
    let lengths = [u32_at(0), u32_at(4), u32_at(8)].map(|n| n as usize);
    let id_len = match u32_at(32) {
        NO_ID => None,
        n => Some(n as usize),
    };
    let expected =
        lengths.iter().sum::<usize>().checked_mul(4).and_then(|f| f.checked_add(ROW_HEADER + id_len.unwrap_or(0)));
    if expected != Some(bytes.len()) {
        return Err(corrupt(&format!("{} bytes do not match the lengths in its header", bytes.len())));
    }
    Ok(RowHeader { lengths, steps: u32_at(12), updates: u64_at(16), last_update_ms: u64_at(24) as i64, id_len })
}

/// Decodes the flat row stored under `at`, its floats into `floats` (reused
/// from row to row, so decoding allocates nothing once it is large enough).
pub(crate) fn decode_row<'a>(
    bytes: &'a [u8],
    at: (TableKind, u64),
    floats: &'a mut Vec<f32>,
) -> Result<RowRef<'a>, CheckpointError> {
    let header = decode_row_header(bytes, at)?;
    let id_end = ROW_HEADER + header.id_len.unwrap_or(0);
    let id = match header.id_len {
        Some(_) => Some(
            std::str::from_utf8(&bytes[ROW_HEADER..id_end])
                .map_err(|_| CheckpointError::Corrupt(format!("row {at:?}: id is not UTF-8")))?,
        ),
        None => None,
    };
    floats.clear();
    floats.extend(bytes[id_end..].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
    let [params, m, _] = header.lengths;
    let (params, rest) = floats.split_at(params);
    let (m, v) = rest.split_at(m);
    Ok(RowRef {
        table: at.0,
        key: at.1,
        id,
        params,
        m,
        v,
        steps: header.steps,
        updates: header.updates,
        last_update_ms: header.last_update_ms,
    })
}

/// The 9-byte key of a row or pending count.
pub(crate) fn row_key(table: TableKind, key: u64) -> [u8; 9] {
    let mut out = [0u8; 9];
    out[0] = table.index() as u8;
    out[1..].copy_from_slice(&key.to_be_bytes());
    out
}

/// Decodes a row key.
pub(crate) fn parse_row_key(bytes: &[u8]) -> Result<(TableKind, u64), CheckpointError> {
    let corrupt = || CheckpointError::Corrupt(format!("row key {bytes:02x?}"));
    let (&table, key) = bytes.split_first().ok_or_else(corrupt)?;
    let table = TableKind::ALL.get(table as usize).copied().ok_or_else(corrupt)?;
    let key: [u8; 8] = key.try_into().map_err(|_| corrupt())?;
    Ok((table, u64::from_be_bytes(key)))
}

/// The key of a source offset.
pub(crate) fn offset_key(topic: &str, partition: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(topic.len() + 5);
    out.extend_from_slice(topic.as_bytes());
    out.push(0);
    out.extend_from_slice(&partition.to_be_bytes());
    out
}

/// Decodes a source offset entry.
pub(crate) fn parse_offset(key: &[u8], value: &[u8]) -> Result<(TopicPartition, i64), CheckpointError> {
    let corrupt = || CheckpointError::Corrupt(format!("offset entry {key:02x?}"));
    let split = key.len().checked_sub(5).filter(|&at| key[at] == 0).ok_or_else(corrupt)?;
    let topic = std::str::from_utf8(&key[..split]).map_err(|_| corrupt())?.to_owned();
    let partition = i32::from_be_bytes(key[split + 1..].try_into().map_err(|_| corrupt())?);
    let offset = i64::from_be_bytes(value.try_into().map_err(|_| corrupt())?);
    Ok((TopicPartition::new(topic, partition), offset))
}

/// Decodes a big-endian u64 meta value.
pub(crate) fn parse_u64(bytes: &[u8], what: &str) -> Result<u64, CheckpointError> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| CheckpointError::Corrupt(format!("{what} is not 8 bytes")))?;
    Ok(u64::from_be_bytes(array))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort_like_the_trainer() {
        let keys = [(TableKind::User, u64::MAX), (TableKind::Item, 0), (TableKind::Item, 7), (TableKind::Feature, 1)];
        let encoded: Vec<_> = keys.iter().map(|&(t, k)| row_key(t, k)).collect();
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(encoded, sorted, "byte order equals (table, key) order");
        for (bytes, expected) in encoded.iter().zip(keys) {
            assert_eq!(parse_row_key(bytes).expect("decodes"), expected);
        }
        assert!(parse_row_key(&[9, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(parse_row_key(&[0, 1]).is_err());
    }

    #[test]
    fn flat_rows_round_trip_and_refuse_bad_lengths() {
        let at = (TableKind::Item, 42);
        let params = [0.5f32, -1.0, 3.25, f32::MIN_POSITIVE];
        let v = [1e-8f32; 4];
        let row = RowRef {
            table: at.0,
            key: at.1,
            id: Some("i42"),
            params: &params,
            m: &[],
            v: &v,
            steps: 7,
            updates: u64::MAX,
            last_update_ms: -3,
        };
        let mut bytes = Vec::new();
        encode_row(&row, &mut bytes);
        let mut floats = Vec::new();
        assert_eq!(decode_row(&bytes, at, &mut floats).expect("decodes"), row);
        let no_id = RowRef { id: None, table: TableKind::User, ..row };
        let mut bytes = Vec::new();
        encode_row(&no_id, &mut bytes);
        assert_eq!(decode_row(&bytes, (TableKind::User, 42), &mut floats).expect("decodes"), no_id);
        for bad in [&bytes[..bytes.len() - 1], &bytes[..10], &[0xff; 7][..]] {
            assert!(matches!(decode_row(bad, at, &mut floats), Err(CheckpointError::Corrupt(_))));
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_a_record_decoder(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let mut floats = Vec::new();
            let _ = decode_row(&bytes, (TableKind::User, 1), &mut floats);
            for layout in [BINCODE_LAYOUT, FORMAT_VERSION] {
                let _ = decode_dense(&bytes, layout);
                let _ = decode_spec(&bytes, layout);
                let _ = decode_pending(&bytes[..bytes.len().min(9)], &bytes, layout);
            }
            let _ = parse_row_key(&bytes);
            let _ = parse_offset(&bytes, &bytes);
            let _ = parse_u64(&bytes, "version");
            let _ = crate::rollback::decode_records(&bytes);
        }
    }

    #[test]
    fn a_length_prefix_beyond_the_limit_is_an_error_not_an_allocation() {
        // A Vec<u64> claiming 2^40 elements (varint: 0xfd then a u64), then
        // nothing: an error, not an attempt at 8 TiB (which would abort the
        // test process instead of returning).
        let mut bytes = vec![0xfd];
        bytes.extend((1u64 << 40).to_le_bytes());
        let error = decode::<Vec<u64>>(&bytes, "values").expect_err("no such values");
        assert!(matches!(error, CheckpointError::Corrupt(_)), "{error}");
        // A claim within the bytes given but past the limit is refused up front.
        let mut bytes = vec![0xfd];
        bytes.extend(((DECODE_LIMIT as u64) + 1).to_le_bytes());
        bytes.resize(64, 0);
        assert!(decode::<String>(&bytes, "id").is_err());
        // A string as long as the address space allows.
        let mut bytes = vec![0xfd];
        bytes.extend(u64::MAX.to_le_bytes());
        assert!(decode::<String>(&bytes, "id").is_err());
    }

    #[test]
    fn spec_pending_and_dense_records_round_trip() {
        let spec = ModelSpec { dim: 16, rating_min: 1.0, rating_max: 10.0, context_features: false, shards: 1 };
        assert_eq!(decode_spec(&encode_spec(&spec), FORMAT_VERSION).expect("decodes"), spec);
        let sharded = ModelSpec { shards: 3, ..spec.clone() };
        let bytes = encode_spec(&sharded);
        assert_eq!(bytes[13..], 3u32.to_le_bytes(), "the shard count after context_features");
        assert_eq!(decode_spec(&bytes, FORMAT_VERSION).expect("decodes"), sharded);
        assert_eq!(decode_spec(&bytes[..13], LAYOUT_WITHOUT_SHARDS).expect("decodes"), spec, "layout 5: one shard");
        assert!(decode_spec(&bytes[..13], FORMAT_VERSION).is_err(), "layout 6 has the count");
        let pending = PendingAdmission { table: TableKind::Feature, key: 77, count: 3, last_seen_ms: -5 };
        let key = row_key(pending.table, pending.key);
        assert_eq!(decode_pending(&key, &encode_pending(&pending), FORMAT_VERSION).expect("decodes"), pending);
        let mut trainer =
            freshet_trainer::Trainer::new(spec.clone(), freshet_trainer::TrainerConfig::default()).expect("trainer");
        let mut stream = freshet_core::synth::SynthStream::new(freshet_core::synth::SynthConfig {
            rating_range: (1.0, 10.0),
            ..Default::default()
        });
        let batch: Vec<_> = (0..2_000).map(|i| stream.next_event_at(1_764_400_000_000 + i)).collect();
        trainer.train_batch(&batch);
        let dense = trainer.export_state().dense;
        let bytes = encode_dense(&dense);
        assert_eq!(decode_dense(&bytes, FORMAT_VERSION).expect("decodes"), dense);
        assert!(decode_dense(&bytes[..bytes.len() - 1], FORMAT_VERSION).is_err());
        assert!(decode_dense(&[bytes.as_slice(), &[0]].concat(), FORMAT_VERSION).is_err());
        assert!(decode_spec(&encode_spec(&spec), BINCODE_LAYOUT).is_err(), "layout 3 held bincode");
    }

    #[test]
    fn offsets_round_trip() {
        let key = offset_key("freshet.clicks", 3);
        let parsed = parse_offset(&key, &42i64.to_be_bytes()).expect("decodes");
        assert_eq!(parsed, (TopicPartition::new("freshet.clicks", 3), 42));
        assert!(parse_offset(b"x", &[0; 8]).is_err());
        assert!(parse_offset(&key, &[0; 3]).is_err());
    }
}
