//! The gradient message on the wire: how one shard's [`Gradients`] for rows
//! another shard owns travel on `freshet.grads.<model>` (docs/scaling.md
//! describes every byte). A message is [`MAGIC`], the format version (u16,
//! little-endian) and a body written field by field
//! ([`crate::record`]), so every length is checked against the bytes
//! present before anything is allocated for it, and a reader refuses a
//! version it does not know by its number.

use thiserror::Error;

use crate::model::{MAX_DIM, MAX_SHARDS, TableKind};
use crate::record::{RecordError, RecordReader, RecordWriter};
use crate::shard::{Gradients, TableGradients};

/// First bytes of every gradient message.
pub const MAGIC: [u8; 4] = *b"FSGR";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Widest row a message may carry: a user row's scalars and [`MAX_DIM`] factors.
const MAX_WIDTH: usize = 4 + MAX_DIM;

/// One gradient message: a part of what shard `sender` sends one owner for
/// the interval that ended with its checkpoint `version`.
#[derive(Debug, Clone, PartialEq)]
pub struct GradientsMessage {
    /// The sending shard.
    pub sender: u32,
    /// The model's shard count.
    pub shards: u32,
    /// The sender's checkpoint version whose interval the sums cover: the
    /// receiver's high-water mark for the sender, with `part`.
    pub version: u64,
    /// This part's number, from 0.
    pub part: u32,
    /// How many parts the version's message to this owner has.
    pub parts: u32,
    /// The sums.
    pub gradients: Gradients,
}

/// Bytes that are not a gradient message this build reads.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GradientsFormatError {
    /// Not a gradient message at all.
    #[error("not a freshet gradient message (no FSGR magic)")]
    NoMagic,
    /// A format version this build does not read.
    #[error("gradient message format version {0}; this build reads version {FORMAT_VERSION}")]
    UnsupportedVersion(u16),
    /// The body does not decode, or decodes to something impossible.
    #[error("malformed gradient message: {0}")]
    Malformed(String),
}

impl From<RecordError> for GradientsFormatError {
    fn from(error: RecordError) -> Self {
        GradientsFormatError::Malformed(error.to_string())
    }
}

/// Encodes `message` (its tables in [`TableKind::ALL`] order, each at most
/// once, as [`crate::Trainer`]s build them).
pub fn encode_gradients(message: &GradientsMessage) -> Vec<u8> {
    let GradientsMessage { sender, shards, version, part, parts, gradients } = message;
    let Gradients { clock_ms, tables, globals, global_events } = gradients;
    let mut w = RecordWriter::default();
    w.u16(FORMAT_VERSION);
    w.u32(*sender);
    w.u32(*shards);
    w.u64(*version);
    w.u32(*part);
    w.u32(*parts);
    w.i64(*clock_ms);
    globals.iter().for_each(|&g| w.f32(g));
    global_events.iter().for_each(|&n| w.u32(n));
    w.u8(tables.len() as u8);
    for TableGradients { table, width, keys, ids, events, values } in tables {
        w.u8(table.index() as u8);
        w.u32(*width as u32);
        w.len(keys.len());
        keys.iter().for_each(|&key| w.u64(key));
        events.iter().for_each(|&n| w.u32(n));
        ids.iter().for_each(|id| w.str(id));
        values.iter().for_each(|&v| w.f32(v));
    }
    let mut bytes = MAGIC.to_vec();
    bytes.extend(w.into_bytes());
    bytes
}

/// Decodes a message [`encode_gradients`] wrote, checking that it is one a
/// sender could have sent: a sender and part within their counts, tables
/// known and in order, ids exactly for the tables that keep them, and
/// widths no wider than a row can be. Never panics and never allocates
/// more than the bytes given justify.
pub fn decode_gradients(bytes: &[u8]) -> Result<GradientsMessage, GradientsFormatError> {
    let body = bytes.strip_prefix(&MAGIC[..]).ok_or(GradientsFormatError::NoMagic)?;
    let mut r = RecordReader::new(body, "gradient message");
    let version = r.u16().map_err(|_| GradientsFormatError::NoMagic)?;
    if version != FORMAT_VERSION {
        return Err(GradientsFormatError::UnsupportedVersion(version));
    }
    let malformed = |problem: String| Err(GradientsFormatError::Malformed(problem));
    let (sender, shards, checkpoint, part, parts) = (r.u32()?, r.u32()?, r.u64()?, r.u32()?, r.u32()?);
    if !(1..=MAX_SHARDS).contains(&shards) || sender >= shards {
        return malformed(format!("sender {sender} of {shards} shards"));
    }
    if part >= parts {
        return malformed(format!("part {part} of {parts}"));
    }
    let clock_ms = r.i64()?;
    let globals = [r.f32()?, r.f32()?];
    let global_events = [r.u32()?, r.u32()?];
    let count = r.u8()?;
    let mut tables: Vec<TableGradients> = Vec::new();
    for _ in 0..count {
        let code = r.u8()?;
        let Some(&table) = TableKind::ALL.get(usize::from(code)) else {
            return malformed(format!("table {code}"));
        };
        if tables.last().is_some_and(|last| last.table >= table) {
            return malformed(format!("the {} table out of order or repeated", table.name()));
        }
        let width = r.u32()? as usize;
        if width == 0 || width > MAX_WIDTH {
            return malformed(format!("{} rows of {width} values", table.name()));
        }
        // Each row holds at least its key, its event count and its values
        // (and an id's length where the table keeps ids).
        let id_len = if table.keeps_ids() { 8 } else { 0 };
        let rows = r.len(8 + 4 + id_len + 4 * width)?;
        let keys = (0..rows).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
        let events = (0..rows).map(|_| r.u32()).collect::<Result<Vec<_>, _>>()?;
        let ids = match table.keeps_ids() {
            true => (0..rows).map(|_| r.string().map(String::into_boxed_str)).collect::<Result<Vec<_>, _>>()?,
            false => Vec::new(),
        };
        let values = (0..rows * width).map(|_| r.f32()).collect::<Result<Vec<_>, _>>()?;
        tables.push(TableGradients { table, width, keys, ids, events, values });
    }
    r.finish()?;
    let gradients = Gradients { clock_ms, tables, globals, global_events };
    Ok(GradientsMessage { sender, shards, version: checkpoint, part, parts, gradients })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn message() -> GradientsMessage {
        GradientsMessage {
            sender: 2,
            shards: 3,
            version: 41,
            part: 0,
            parts: 1,
            gradients: Gradients {
                clock_ms: 1_764_400_000_123,
                tables: vec![
                    TableGradients {
                        table: TableKind::Item,
                        width: 3,
                        keys: vec![7, u64::MAX],
                        ids: vec!["i7".into(), "item-é".into()],
                        events: vec![1, 40],
                        values: vec![0.5, -1.0, 2.0, 0.25, 0.0, -0.125],
                    },
                    TableGradients {
                        table: TableKind::Feature,
                        width: 3,
                        keys: vec![9],
                        ids: vec![],
                        events: vec![3],
                        values: vec![1.0, 1.5, -2.5],
                    },
                ],
                globals: [0.75, -0.5],
                global_events: [12, 30],
            },
        }
    }

    #[test]
    fn a_message_round_trips_and_is_laid_out_as_documented() {
        let message = message();
        let bytes = encode_gradients(&message);
        assert_eq!(decode_gradients(&bytes), Ok(message));
        let mut expected = b"FSGR".to_vec();
        expected.extend(1u16.to_le_bytes());
        for n in [2u32, 3] {
            expected.extend(n.to_le_bytes());
        }
        expected.extend(41u64.to_le_bytes());
        for n in [0u32, 1] {
            expected.extend(n.to_le_bytes());
        }
        expected.extend(1_764_400_000_123i64.to_le_bytes());
        assert_eq!(bytes[..expected.len()], expected[..], "the header fields, in order");
        // The feature table closes the message: its code, width, one row
        // (key, events, no id) and its three values.
        let mut tail = vec![2u8];
        tail.extend(3u32.to_le_bytes());
        tail.extend(1u64.to_le_bytes());
        tail.extend(9u64.to_le_bytes());
        tail.extend(3u32.to_le_bytes());
        for v in [1.0f32, 1.5, -2.5] {
            tail.extend(v.to_le_bytes());
        }
        assert!(bytes.ends_with(&tail));
    }

    /// Messages written by earlier builds stay readable: the one above, as
    /// format 1 wrote it, is checked in. A new format version gets a file of
    /// its own beside it: `FRESHET_WRITE_FIXTURES=1 cargo test -p
    /// freshet-core grads` writes a missing one of this build's version.
    #[test]
    fn the_checked_in_format_1_message_decodes_to_its_content() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gradients-v1.bin");
        if std::env::var_os("FRESHET_WRITE_FIXTURES").is_some() && !path.exists() {
            assert_eq!(FORMAT_VERSION, 1, "only this build's format can be written");
            std::fs::write(&path, encode_gradients(&message())).expect("write the fixture");
        }
        let bytes = std::fs::read(&path).expect("the fixture");
        assert_eq!(decode_gradients(&bytes), Ok(message()));
    }

    #[test]
    fn foreign_damaged_and_impossible_messages_are_errors() {
        let bytes = encode_gradients(&message());
        assert_eq!(decode_gradients(b"FSNP\x06\x00"), Err(GradientsFormatError::NoMagic));
        let mut future = bytes.clone();
        future[4] = 9;
        assert_eq!(decode_gradients(&future), Err(GradientsFormatError::UnsupportedVersion(9)));
        for cut in [7, 40, bytes.len() - 1] {
            assert!(matches!(decode_gradients(&bytes[..cut]), Err(GradientsFormatError::Malformed(_))), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode_gradients(&longer), Err(GradientsFormatError::Malformed(_))));
        let impossible = [
            GradientsMessage { sender: 3, ..message() },
            GradientsMessage { part: 1, ..message() },
            GradientsMessage { shards: 0, sender: 0, ..message() },
        ];
        for message in impossible {
            let error = decode_gradients(&encode_gradients(&message)).expect_err("impossible");
            assert!(matches!(error, GradientsFormatError::Malformed(_)), "{error}");
        }
        // A row count no bytes back is refused before anything is allocated.
        let mut huge = encode_gradients(&message());
        let rows_at = 4 + 2 + 4 + 4 + 8 + 4 + 4 + 8 + 8 + 8 + 1 + 1 + 4;
        assert_eq!(huge[rows_at..rows_at + 8], 2u64.to_le_bytes(), "the item table's row count");
        huge[rows_at..rows_at + 8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        assert!(matches!(decode_gradients(&huge), Err(GradientsFormatError::Malformed(_))));
    }
}
