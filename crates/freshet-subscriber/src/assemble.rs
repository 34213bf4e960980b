//! Reassembles snapshots from topic messages. A snapshot is complete only
//! when its commit record arrives after every chunk, in order, and the
//! checksum matches: read_committed alone is not trusted (the librdkafka mock
//! cluster shows aborted transactions to read_committed consumers).

use freshet_core::snapshot::{
    SnapshotChecksum, SnapshotFormatError, SnapshotHeader, SnapshotMessage, SnapshotRow, SnapshotTombstone,
    decode_message,
};
use thiserror::Error;

/// A snapshot whose chunks all arrived and whose checksum matched.
#[derive(Debug, Clone, PartialEq)]
pub struct AssembledSnapshot {
    /// Its header.
    pub header: SnapshotHeader,
    /// Topic offset of its header.
    pub header_offset: i64,
    /// Topic offset of the full snapshot its chain starts from.
    pub chain_start_offset: i64,
    /// Rows it sets.
    pub rows: Vec<SnapshotRow>,
    /// Rows it removes.
    pub tombstones: Vec<SnapshotTombstone>,
    /// Bytes of its header and chunks.
    pub bytes: usize,
}

/// Why messages were discarded instead of forming a snapshot.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum AssemblyError {
    /// A message is not a snapshot message.
    #[error("offset {offset}: {error}")]
    Format {
        /// Where.
        offset: i64,
        /// What.
        error: SnapshotFormatError,
    },
    /// A chunk or commit that does not continue the open snapshot.
    #[error("offset {offset}: {what} of version {version} does not continue the open snapshot")]
    OutOfSequence {
        /// Where.
        offset: i64,
        /// `chunk` or `commit`.
        what: &'static str,
        /// The message's version.
        version: u64,
    },
    /// The commit's chunk count or checksum does not match what arrived.
    #[error("snapshot {version} at offset {header_offset} is damaged: {problem}")]
    Damaged {
        /// The version.
        version: u64,
        /// Its header's offset.
        header_offset: i64,
        /// What does not match.
        problem: String,
    },
}

/// The snapshot being received.
#[derive(Debug)]
struct Open {
    header: SnapshotHeader,
    header_offset: i64,
    checksum: SnapshotChecksum,
    chunks: u32,
    rows: Vec<SnapshotRow>,
    tombstones: Vec<SnapshotTombstone>,
    bytes: usize,
}

/// Feeds on the snapshot topic's messages in offset order.
#[derive(Debug, Default)]
pub struct Assembler {
    open: Option<Open>,
}

impl Assembler {
    /// A new assembler with nothing open.
    pub fn new() -> Self {
        Assembler::default()
    }

    /// Forgets any half-received snapshot (after a seek).
    pub fn reset(&mut self) {
        self.open = None;
    }

    /// Takes the message at `offset`. Returns a snapshot when this message
    /// completes one; an error discards the open snapshot.
    pub fn feed(&mut self, offset: i64, value: &[u8]) -> Result<Option<AssembledSnapshot>, AssemblyError> {
        let message = decode_message(value).map_err(|error| {
            self.open = None;
            AssemblyError::Format { offset, error }
        })?;
        match message {
            SnapshotMessage::Header(header) => {
                let mut checksum = SnapshotChecksum::new();
                checksum.update(value);
                self.open = Some(Open {
                    header,
                    header_offset: offset,
                    checksum,
                    chunks: 0,
                    rows: Vec::new(),
                    tombstones: Vec::new(),
                    bytes: value.len(),
                });
                Ok(None)
            }
            SnapshotMessage::Chunk(chunk) => {
                let Some(open) = self
                    .open
                    .as_mut()
                    .filter(|open| open.header.version == chunk.version && open.chunks == chunk.index)
                else {
                    self.open = None;
                    return Err(AssemblyError::OutOfSequence { offset, what: "chunk", version: chunk.version });
                };
                open.checksum.update(value);
                open.chunks += 1;
                open.bytes += value.len();
                open.rows.extend(chunk.rows);
                open.tombstones.extend(chunk.tombstones);
                Ok(None)
            }
            SnapshotMessage::Commit(commit) => {
                let Some(open) = self.open.take().filter(|open| open.header.version == commit.version) else {
                    return Err(AssemblyError::OutOfSequence { offset, what: "commit", version: commit.version });
                };
                let damaged = |problem: String| AssemblyError::Damaged {
                    version: commit.version,
                    header_offset: open.header_offset,
                    problem,
                };
                if open.chunks != commit.chunks {
                    return Err(damaged(format!(
                        "{} chunks arrived, the commit counts {}",
                        open.chunks, commit.chunks
                    )));
                }
                if open.checksum.digest() != commit.checksum {
                    return Err(damaged(format!(
                        "checksum {:#018x}, the commit says {:#018x}",
                        open.checksum.digest(),
                        commit.checksum
                    )));
                }
                let counts = (open.rows.len() as u64, open.tombstones.len() as u64);
                if counts != (open.header.rows, open.header.tombstones) {
                    return Err(damaged(format!("{counts:?} rows and tombstones, the header counts otherwise")));
                }
                Ok(Some(AssembledSnapshot {
                    header: open.header,
                    header_offset: open.header_offset,
                    chain_start_offset: commit.chain_start_offset,
                    rows: open.rows,
                    tombstones: open.tombstones,
                    bytes: open.bytes,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use freshet_core::snapshot::{SnapshotChunk, SnapshotCommit, SnapshotKind, encode_message};
    use freshet_core::{ModelSpec, TableKind};

    use super::*;
    use crate::fixtures::header;

    fn chunk(version: u64, index: u32, key: u64) -> Vec<u8> {
        let row = SnapshotRow { table: TableKind::User, key, id: None, values: vec![1.0; 34] };
        encode_message(&SnapshotMessage::Chunk(SnapshotChunk { version, index, rows: vec![row], tombstones: vec![] }))
    }

    /// A whole snapshot's message values (header, two chunks, commit).
    fn snapshot(version: u64) -> Vec<Vec<u8>> {
        let mut values = vec![encode_message(&SnapshotMessage::Header(header(
            version,
            SnapshotKind::Full,
            ModelSpec::default(),
            2,
            0,
        )))];
        values.push(chunk(version, 0, 1));
        values.push(chunk(version, 1, 2));
        let mut checksum = SnapshotChecksum::new();
        values.iter().for_each(|value| checksum.update(value));
        let commit = SnapshotCommit { version, chunks: 2, checksum: checksum.digest(), chain_start_offset: 0 };
        values.push(encode_message(&SnapshotMessage::Commit(commit)));
        values
    }

    fn feed_all(
        assembler: &mut Assembler,
        values: &[Vec<u8>],
    ) -> Vec<Result<Option<AssembledSnapshot>, AssemblyError>> {
        values.iter().enumerate().map(|(offset, value)| assembler.feed(offset as i64, value)).collect()
    }

    #[test]
    fn a_complete_snapshot_assembles_on_its_commit() {
        let mut assembler = Assembler::new();
        let results = feed_all(&mut assembler, &snapshot(5));
        assert!(results[..3].iter().all(|r| matches!(r, Ok(None))));
        let Ok(Some(done)) = &results[3] else { panic!("{:?}", results[3]) };
        assert_eq!((done.header.version, done.rows.len(), done.header_offset), (5, 2, 0));
    }

    #[test]
    fn a_damaged_chunk_fails_the_checksum() {
        let mut values = snapshot(5);
        let last = values[1].len() - 1;
        values[1][last - 8] ^= 1;
        let results = feed_all(&mut Assembler::new(), &values);
        assert!(matches!(&results[3], Err(AssemblyError::Damaged { version: 5, .. })), "{:?}", results[3]);
    }

    #[test]
    fn a_missing_chunk_or_header_breaks_the_sequence() {
        let values = snapshot(5);
        let mut assembler = Assembler::new();
        let without_first_chunk = [values[0].clone(), values[2].clone(), values[3].clone()];
        let results = feed_all(&mut assembler, &without_first_chunk);
        assert!(matches!(results[1], Err(AssemblyError::OutOfSequence { what: "chunk", .. })));
        assert!(matches!(results[2], Err(AssemblyError::OutOfSequence { what: "commit", .. })));
        assert!(matches!(feed_all(&mut Assembler::new(), &values[3..])[0], Err(AssemblyError::OutOfSequence { .. })));
    }

    #[test]
    fn an_abandoned_snapshot_gives_way_to_the_next_header() {
        // What an aborted transaction looks like to a reader that still sees it.
        let mut values = snapshot(5)[..2].to_vec();
        values.extend(snapshot(6));
        let results = feed_all(&mut Assembler::new(), &values);
        let Ok(Some(done)) = results.last().expect("fed") else { panic!("{results:?}") };
        assert_eq!((done.header.version, done.header_offset), (6, 2));
    }

    #[test]
    fn foreign_bytes_are_a_format_error() {
        let result = Assembler::new().feed(9, b"{\"user\":\"u\"}");
        assert!(matches!(result, Err(AssemblyError::Format { offset: 9, .. })));
    }
}
