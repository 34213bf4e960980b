//! Reads snapshots out of topic messages as they arrive, without holding a
//! snapshot in memory: the header opens one, each chunk is handed on as it
//! is decoded (to be applied to a model version not yet served), and the
//! commit record completes it only if it arrives after every chunk, in
//! order, with a matching checksum and counts. read_committed alone is not
//! trusted (the librdkafka mock cluster shows aborted transactions to
//! read_committed consumers), so nothing a snapshot carries may be served
//! before [`Fed::Complete`].

use freshet_core::TableKind;
use freshet_core::snapshot::{
    ChunkView, SnapshotChecksum, SnapshotFormatError, SnapshotHeader, SnapshotMessage, decode_chunk_position,
    decode_commit, decode_message,
};
use thiserror::Error;

/// What one message did.
#[derive(Debug, Clone)]
pub enum Fed<'a> {
    /// A snapshot opened (any snapshot open before is abandoned).
    Header(SnapshotHeader),
    /// The next chunk of the open snapshot, checked and read in place.
    Chunk(ChunkView<'a>),
    /// A chunk of the open snapshot, checked but not decoded (see [`Assembler::skip_rows`]).
    Skipped,
    /// The open snapshot is complete and intact.
    Complete(Completed),
}

/// A snapshot whose every chunk arrived and whose checksum matched.
#[derive(Debug, Clone, PartialEq)]
pub struct Completed {
    /// Its header.
    pub header: SnapshotHeader,
    /// Topic offset of its header.
    pub header_offset: i64,
    /// Topic offset of the full snapshot its chain starts from.
    pub chain_start_offset: i64,
    /// Bytes of its header and chunks.
    pub bytes: usize,
    /// The checksum over header and chunks, checked equal to the commit's
    /// (a snapshot whose checksum differs is refused as damaged).
    pub checksum: u64,
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
    /// The commit's chunk count or checksum, or the header's counts, do not
    /// match what arrived.
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
    /// Rows per table and tombstones seen, while chunks are decoded.
    counted: Option<([u64; 3], u64)>,
    bytes: usize,
}

/// Feeds on the snapshot topic's messages in offset order.
#[derive(Debug, Default)]
pub struct Assembler {
    open: Option<Open>,
    /// The version of a snapshot discarded by an error: its remaining
    /// chunks and commit are passed over quietly (one error a snapshot).
    discarded: Option<u64>,
}

impl Assembler {
    /// A new assembler with nothing open.
    pub fn new() -> Self {
        Assembler::default()
    }

    /// Forgets any half-received snapshot (after a seek).
    pub fn reset(&mut self) {
        self.open = None;
        self.discarded = None;
    }

    /// The open snapshot's chunks are still checked (sequence, checksum) but
    /// no longer decoded: its rows are not needed.
    pub fn skip_rows(&mut self) {
        if let Some(open) = &mut self.open {
            open.counted = None;
        }
    }

    /// Takes the message at `offset`. An error discards the open snapshot.
    pub fn feed<'a>(&mut self, offset: i64, value: &'a [u8]) -> Result<Fed<'a>, AssemblyError> {
        if let Some(version) = self.discarded {
            let rest_of_it =
                decode_chunk_position(value).map(|(v, _)| v).or_else(|| decode_commit(value).map(|c| c.version));
            if rest_of_it == Some(version) {
                return Ok(Fed::Skipped);
            }
            self.discarded = None;
        }
        let result = self.feed_inner(offset, value);
        if result.is_err() {
            self.discarded = self.open.take().map(|open| open.header.version);
        }
        result
    }

    fn feed_inner<'a>(&mut self, offset: i64, value: &'a [u8]) -> Result<Fed<'a>, AssemblyError> {
        if let Some((version, index)) = decode_chunk_position(value) {
            let Some(open) = self.open.as_mut().filter(|open| (version, index) == (open.header.version, open.chunks))
            else {
                return Err(AssemblyError::OutOfSequence { offset, what: "chunk", version });
            };
            let fed = match &mut open.counted {
                None => Fed::Skipped,
                Some((rows, tombstones)) => {
                    let chunk = ChunkView::parse(value).map_err(|error| AssemblyError::Format { offset, error })?;
                    for (count, more) in rows.iter_mut().zip(chunk.table_rows) {
                        *count += more;
                    }
                    *tombstones += chunk.tombstone_count();
                    Fed::Chunk(chunk)
                }
            };
            open.checksum.update(value);
            open.chunks += 1;
            open.bytes += value.len();
            return Ok(fed);
        }
        let message = decode_message(value).map_err(|error| AssemblyError::Format { offset, error })?;
        match message {
            SnapshotMessage::Header(header) => {
                let mut checksum = SnapshotChecksum::new();
                checksum.update(value);
                self.open = Some(Open {
                    header: (*header).clone(),
                    header_offset: offset,
                    checksum,
                    chunks: 0,
                    counted: Some(([0; 3], 0)),
                    bytes: value.len(),
                });
                Ok(Fed::Header(*header))
            }
            // Chunks were read in place above; one that decodes here did not parse there.
            SnapshotMessage::Chunk(chunk) => {
                Err(AssemblyError::OutOfSequence { offset, what: "chunk", version: chunk.version })
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
                let checksum = open.checksum.digest();
                if checksum != commit.checksum {
                    return Err(damaged(format!(
                        "checksum {:#018x}, the commit says {:#018x}",
                        open.checksum.digest(),
                        commit.checksum
                    )));
                }
                if let Some((rows, tombstones)) = open.counted
                    && (rows, tombstones) != (open.header.rows, open.header.tombstones)
                {
                    let names = TableKind::ALL.map(TableKind::name);
                    return Err(damaged(format!(
                        "{rows:?} {names:?} rows and {tombstones} tombstones arrived, the header counts {:?} and {}",
                        open.header.rows, open.header.tombstones
                    )));
                }
                Ok(Fed::Complete(Completed {
                    header: open.header,
                    header_offset: open.header_offset,
                    chain_start_offset: commit.chain_start_offset,
                    bytes: open.bytes,
                    checksum,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use freshet_core::snapshot::{
        SnapshotChunk, SnapshotCommit, SnapshotKind, SnapshotRow, decode_commit, encode_message,
    };
    use freshet_core::{ModelSpec, TableKind};

    use super::*;
    use crate::fixtures::header;

    fn chunk(version: u64, index: u32, key: u64) -> Vec<u8> {
        let row = SnapshotRow { table: TableKind::User, key, id: None, updated_ms: 0, values: vec![1.0; 36] };
        encode_message(&SnapshotMessage::Chunk(SnapshotChunk { version, index, rows: vec![row], tombstones: vec![] }))
    }

    /// A whole snapshot's message values (header, two chunks, commit).
    fn snapshot(version: u64) -> Vec<Vec<u8>> {
        let header = header(version, SnapshotKind::Full, ModelSpec::default(), [2, 0, 0], 0);
        let mut values = vec![encode_message(&SnapshotMessage::Header(Box::new(header)))];
        values.push(chunk(version, 0, 1));
        values.push(chunk(version, 1, 2));
        let mut checksum = SnapshotChecksum::new();
        values.iter().for_each(|value| checksum.update(value));
        let commit = SnapshotCommit { version, chunks: 2, checksum: checksum.digest(), chain_start_offset: 0 };
        values.push(encode_message(&SnapshotMessage::Commit(commit)));
        values
    }

    fn feed_all<'a>(assembler: &mut Assembler, values: &'a [Vec<u8>]) -> Vec<Result<Fed<'a>, AssemblyError>> {
        values.iter().enumerate().map(|(offset, value)| assembler.feed(offset as i64, value)).collect()
    }

    fn completed<'r>(result: &'r Result<Fed<'_>, AssemblyError>) -> &'r Completed {
        match result {
            Ok(Fed::Complete(done)) => done,
            other => panic!("not complete: {other:?}"),
        }
    }

    #[test]
    fn chunks_arrive_decoded_and_the_commit_completes_the_snapshot() {
        let mut assembler = Assembler::new();
        let values = snapshot(5);
        let results = feed_all(&mut assembler, &values);
        assert!(matches!(&results[0], Ok(Fed::Header(h)) if h.version == 5));
        assert!(matches!(&results[1], Ok(Fed::Chunk(c)) if c.rows().next().is_some_and(|r| r.key == 1)));
        assert!(matches!(&results[2], Ok(Fed::Chunk(c)) if c.rows().next().is_some_and(|r| r.key == 2)));
        let done = completed(&results[3]);
        let commit = decode_commit(&values[3]).expect("a commit record");
        assert_eq!((done.header.version, done.header_offset, done.checksum), (5, 0, commit.checksum));
    }

    #[test]
    fn a_skipped_snapshot_is_checked_without_decoding() {
        let values = snapshot(5);
        let mut assembler = Assembler::new();
        assert!(matches!(assembler.feed(0, &values[0]), Ok(Fed::Header(_))));
        assembler.skip_rows();
        assert!(matches!(assembler.feed(1, &values[1]), Ok(Fed::Skipped)));
        assert!(matches!(assembler.feed(2, &values[2]), Ok(Fed::Skipped)));
        assert_eq!(completed(&assembler.feed(3, &values[3])).bytes, values[..3].iter().map(Vec::len).sum::<usize>());
        // A skipped snapshot's damage is still found.
        let mut damaged = snapshot(6);
        let last = damaged[2].len() - 1;
        damaged[2][last] ^= 1;
        assembler.feed(0, &damaged[0]).expect("header");
        assembler.skip_rows();
        let results: Vec<_> = (1..4).map(|i| assembler.feed(i, &damaged[i as usize])).collect();
        assert!(matches!(&results[2], Err(AssemblyError::Damaged { version: 6, .. })), "{results:?}");
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
    fn counts_that_disagree_with_the_header_are_damage() {
        let mut values = snapshot(5);
        let header = header(5, SnapshotKind::Full, ModelSpec::default(), [1, 1, 0], 0);
        values[0] = encode_message(&SnapshotMessage::Header(Box::new(header)));
        let mut checksum = SnapshotChecksum::new();
        values[..3].iter().for_each(|value| checksum.update(value));
        let commit = SnapshotCommit { version: 5, chunks: 2, checksum: checksum.digest(), chain_start_offset: 0 };
        values[3] = encode_message(&SnapshotMessage::Commit(commit));
        let results = feed_all(&mut Assembler::new(), &values);
        assert!(matches!(&results[3], Err(AssemblyError::Damaged { problem, .. }) if problem.contains("rows")));
    }

    #[test]
    fn a_snapshot_broken_midway_is_one_error_and_the_next_one_assembles() {
        let mut values = snapshot(5);
        let cut = values[1].len() - 3;
        values[1].truncate(cut);
        values.extend(snapshot(6));
        let results = feed_all(&mut Assembler::new(), &values);
        assert!(matches!(results[1], Err(AssemblyError::Format { offset: 1, .. })), "{:?}", results[1]);
        assert!(results[2..4].iter().all(|r| matches!(r, Ok(Fed::Skipped))), "the rest of it passes quietly");
        assert_eq!(completed(&results[7]).header.version, 6);
    }

    #[test]
    fn a_missing_chunk_or_header_breaks_the_sequence() {
        let values = snapshot(5);
        let mut assembler = Assembler::new();
        let without_first_chunk = [values[0].clone(), values[2].clone(), values[3].clone()];
        let results = feed_all(&mut assembler, &without_first_chunk);
        assert!(matches!(results[1], Err(AssemblyError::OutOfSequence { what: "chunk", .. })));
        assert!(matches!(results[2], Ok(Fed::Skipped)), "the broken snapshot's commit passes quietly");
        assert!(matches!(feed_all(&mut Assembler::new(), &values[3..])[0], Err(AssemblyError::OutOfSequence { .. })));
    }

    #[test]
    fn an_abandoned_snapshot_gives_way_to_the_next_header() {
        // What an aborted transaction looks like to a reader that still sees it.
        let mut values = snapshot(5)[..2].to_vec();
        values.extend(snapshot(6));
        let results = feed_all(&mut Assembler::new(), &values);
        let done = completed(results.last().expect("fed"));
        assert_eq!((done.header.version, done.header_offset), (6, 2));
    }

    #[test]
    fn foreign_bytes_are_a_format_error() {
        let result = Assembler::new().feed(9, b"{\"user\":\"u\"}");
        assert!(matches!(result, Err(AssemblyError::Format { offset: 9, .. })));
    }
}
