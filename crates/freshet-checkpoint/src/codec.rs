//! How rows, offsets and metadata are laid out in RocksDB.
//!
//! | column family | key | value |
//! |---|---|---|
//! | `rows` | table (1 byte: user 0, item 1, feature 2) + key (u64 big-endian) | bincode `RowState` |
//! | `pending` | same as `rows` | bincode `PendingRow` |
//! | `offsets` | topic (UTF-8) + 0x00 + partition (i32 big-endian) | next offset (i64 big-endian) |
//! | `meta` | a name below | bincode of the named value |
//!
//! Big-endian keys make RocksDB's byte order equal the trainer's
//! (table, key) order, so a scan restores rows already sorted.

use freshet_trainer::TableKind;
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
/// Meta key: the checkpoint version (u64).
pub(crate) const META_VERSION: &[u8] = b"version";
/// Meta key: the newest snapshot version published (u64).
pub(crate) const META_PUBLISHED: &[u8] = b"published_version";
/// Meta key: the trainer's dense state.
pub(crate) const META_DENSE: &[u8] = b"dense";

/// The layout version written by this code.
pub(crate) const FORMAT_VERSION: u32 = 1;

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
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
pub(crate) fn parse_offset(key: &[u8], value: &[u8]) -> Result<((String, i32), i64), CheckpointError> {
    let corrupt = || CheckpointError::Corrupt(format!("offset entry {key:02x?}"));
    let split = key.len().checked_sub(5).filter(|&at| key[at] == 0).ok_or_else(corrupt)?;
    let topic = std::str::from_utf8(&key[..split]).map_err(|_| corrupt())?.to_owned();
    let partition = i32::from_be_bytes(key[split + 1..].try_into().map_err(|_| corrupt())?);
    let offset = i64::from_be_bytes(value.try_into().map_err(|_| corrupt())?);
    Ok(((topic, partition), offset))
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
    fn offsets_round_trip() {
        let key = offset_key("freshet.clicks", 3);
        let parsed = parse_offset(&key, &42i64.to_be_bytes()).expect("decodes");
        assert_eq!(parsed, (("freshet.clicks".to_owned(), 3), 42));
        assert!(parse_offset(b"x", &[0; 8]).is_err());
        assert!(parse_offset(&key, &[0; 3]).is_err());
    }
}
