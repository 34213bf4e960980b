//! Deltas built from messages read before their transaction commits.
//!
//! The publisher writes a delta's messages while the trainer's checkpoint
//! of that version is still being written, and commits the Kafka
//! transaction once the checkpoint is durable, tens of milliseconds later.
//! A second consumer of the snapshot topic, reading uncommitted messages,
//! lets the subscriber decode the delta and apply its rows to a version not
//! yet served during that wait ([`Draft`]). When the read_committed consumer
//! then delivers the same snapshot complete (the same header offset and the
//! same checksum), the drafted version is served as it stands, instead of
//! being built again from the committed messages.
//!
//! **Architecture invariant:** a draft never decides anything. The
//! committed stream decides every swap; a draft only saves it the work of
//! building a version it has checked itself. An aborted transaction's draft
//! is never adopted (no committed header has its offset) and is replaced by
//! the next one. Full snapshots are not drafted: a draft of one would hold a
//! second copy of the whole model beside the one served.

use freshet_core::snapshot::{SnapshotHeader, SnapshotKind, decode_chunk_position, decode_commit};

use crate::assemble::{Assembler, Completed, Fed};
use crate::model::Builder;

/// The read-ahead of one partition: a delta being built from uncommitted
/// messages, and the newest one built, until the committed stream adopts
/// or supersedes it.
#[derive(Debug, Default)]
pub(crate) struct Draft {
    assembler: Assembler,
    building: Option<Building>,
    ready: Option<Drafted>,
    /// The open snapshot is not drafted: its chunks and commit are passed
    /// over unread (a full snapshot's hundreds of megabytes unchecked twice).
    passing: bool,
}

/// A delta being drafted.
#[derive(Debug)]
struct Building {
    header_offset: i64,
    /// The follower's generation when the builder was made (see [`Draft::feed`]).
    generation: u64,
    builder: Box<Builder>,
}

/// A drafted delta, every row applied, not served.
#[derive(Debug)]
struct Drafted {
    header_offset: i64,
    checksum: u64,
    generation: u64,
    builder: Box<Builder>,
}

impl Draft {
    /// Takes the uncommitted message at `offset`. `generation` counts the
    /// versions of this partition's chain put together so far: a draft is
    /// made on, and only adopted onto, the version of the same generation.
    /// `start` makes the builder of a delta's header (`None`: not one to
    /// build on what is served now). Returns whether a draft became ready.
    pub(crate) fn feed(
        &mut self,
        offset: i64,
        value: &[u8],
        generation: u64,
        start: impl FnOnce(&SnapshotHeader) -> Option<Box<Builder>>,
    ) -> bool {
        if self.passing && (decode_chunk_position(value).is_some() || decode_commit(value).is_some()) {
            return false;
        }
        match self.assembler.feed(offset, value) {
            Ok(Fed::Header(header)) => {
                self.building = match header.kind {
                    SnapshotKind::Delta { .. } => start(&header),
                    SnapshotKind::Full => None,
                }
                .map(|builder| Building { header_offset: offset, generation, builder });
                self.passing = self.building.is_none();
            }
            Ok(Fed::Chunk(chunk)) => {
                if let Some(building) = &mut self.building
                    && building.builder.apply_view(&chunk).is_err()
                {
                    self.building = None;
                    self.passing = true;
                }
            }
            Ok(Fed::Skipped) => {}
            Ok(Fed::Complete(done)) => {
                if let Some(building) = self.building.take()
                    && building.generation == generation
                    && building.header_offset == done.header_offset
                {
                    let (header_offset, checksum, builder) = (done.header_offset, done.checksum, building.builder);
                    self.ready = Some(Drafted { header_offset, checksum, generation, builder });
                    return true;
                }
            }
            Err(_) => {
                self.building = None;
                self.passing = true;
            }
        }
        false
    }

    /// Whether a draft of the snapshot whose header is at `header_offset`
    /// is ready to be adopted onto generation `generation`. If not, a
    /// draft of it (or of one before it) still being built is dropped: the
    /// committed stream builds it now.
    pub(crate) fn ready_for(&mut self, header_offset: i64, generation: u64) -> bool {
        if self.building.as_ref().is_some_and(|building| building.header_offset <= header_offset) {
            self.building = None;
            self.passing = true;
        }
        self.ready.as_ref().is_some_and(|ready| ready.header_offset == header_offset && ready.generation == generation)
    }

    /// The drafted builder of `done`, a snapshot the committed stream
    /// completed, every row applied: `None` unless the draft has the same
    /// header offset and checksum and was made on generation `generation`.
    pub(crate) fn adopt(&mut self, done: &Completed, generation: u64) -> Option<Box<Builder>> {
        let ready = self.ready.take()?;
        let same = ready.header_offset == done.header_offset && ready.checksum == done.checksum;
        (same && ready.generation == generation).then_some(ready.builder)
    }

    /// Forgets everything (after a seek).
    pub(crate) fn reset(&mut self) {
        *self = Draft::default();
    }
}

#[cfg(test)]
mod tests {
    use freshet_core::snapshot::{
        SnapshotChecksum, SnapshotChunk, SnapshotCommit, SnapshotMessage, SnapshotRow, encode_message,
    };
    use freshet_core::{ModelSpec, RowLayout, TableKind, hash_id};

    use super::*;
    use crate::fixtures::header;
    use crate::model::{DEFAULT_CANDIDATES, ServingModel};

    const DIM: usize = 8;

    fn spec() -> ModelSpec {
        ModelSpec { dim: DIM, ..ModelSpec::default() }
    }

    /// User `id`'s row (users keep no id text), every value `value`.
    fn user_row(id: &str, value: f32) -> SnapshotRow {
        let values = vec![value; RowLayout::new(TableKind::User, DIM).width()];
        SnapshotRow { table: TableKind::User, key: hash_id(id), id: None, updated_ms: 0, values }
    }

    /// The message values of a snapshot setting user `u1` to `value` everywhere.
    fn snapshot(version: u64, kind: SnapshotKind, value: f32) -> Vec<Vec<u8>> {
        let header = header(version, kind, spec(), [1, 0, 0], 0);
        let rows = vec![user_row("u1", value)];
        let chunk = SnapshotChunk { version, index: 0, rows, tombstones: vec![] };
        let mut values = vec![
            encode_message(&SnapshotMessage::Header(Box::new(header))),
            encode_message(&SnapshotMessage::Chunk(chunk)),
        ];
        let mut checksum = SnapshotChecksum::new();
        values.iter().for_each(|value| checksum.update(value));
        let commit = SnapshotCommit { version, chunks: 1, checksum: checksum.digest(), chain_start_offset: 0 };
        values.push(encode_message(&SnapshotMessage::Commit(commit)));
        values
    }

    /// Version 1: user 1 at 0.5.
    fn served() -> ServingModel {
        let mut assembler = Assembler::new();
        let values = snapshot(1, SnapshotKind::Full, 0.5);
        let Ok(Fed::Header(header)) = assembler.feed(0, &values[0]) else { panic!("a header") };
        let mut builder = Builder::full(&header, None, DEFAULT_CANDIDATES).expect("a valid full snapshot");
        let Ok(Fed::Chunk(chunk)) = assembler.feed(1, &values[1]) else { panic!("a chunk") };
        builder.apply_view(&chunk).expect("applies");
        builder.finish(0)
    }

    /// Feeds `values` from `first` on, drafting deltas onto `base` at `generation`.
    fn feed(draft: &mut Draft, base: &ServingModel, first: i64, values: &[Vec<u8>], generation: u64) -> Vec<bool> {
        let start = |header: &SnapshotHeader| Builder::delta(header, base).ok().map(Box::new);
        (first..).zip(values).map(|(offset, value)| draft.feed(offset, value, generation, start)).collect()
    }

    /// What the committed stream completes from `values` at `first`.
    fn committed(first: i64, values: &[Vec<u8>]) -> Completed {
        let mut assembler = Assembler::new();
        let fed = (first..).zip(values).map(|(offset, value)| assembler.feed(offset, value));
        match fed.last() {
            Some(Ok(Fed::Complete(done))) => done,
            other => panic!("not complete: {other:?}"),
        }
    }

    #[test]
    fn a_delta_drafted_ahead_is_adopted_only_as_the_same_snapshot_on_the_same_version() {
        let base = served();
        let delta = snapshot(2, SnapshotKind::Delta { base_version: 1 }, 2.0);
        let mut draft = Draft::default();
        assert_eq!(feed(&mut draft, &base, 10, &delta, 7), [false, false, true], "ready at its commit record");

        assert!(!draft.ready_for(11, 7), "another header offset");
        assert!(!draft.ready_for(10, 8), "drafted on another version of the chain");
        assert!(draft.ready_for(10, 7));
        let done = committed(10, &delta);
        assert!(draft.adopt(&Completed { checksum: done.checksum ^ 1, ..done.clone() }, 7).is_none(), "other bytes");
        assert!(draft.adopt(&done, 7).is_none(), "a draft is offered once");

        feed(&mut draft, &base, 10, &delta, 7);
        let model = draft.adopt(&done, 7).expect("the same snapshot").finish_onto(Some(&base), 0);
        assert_eq!(model.version(), 2);
        let row = model.row(TableKind::User, hash_id("u1")).expect("u1");
        assert!(row.iter().all(|&v| v == 2.0), "every value drafted: {row:?}");
        assert!(base.row(TableKind::User, hash_id("u1")).expect("u1").iter().all(|&v| v == 0.5), "the base untouched");
    }

    #[test]
    fn an_aborted_draft_is_replaced_by_the_next_and_fulls_are_not_drafted() {
        let base = served();
        let mut draft = Draft::default();
        let aborted = snapshot(2, SnapshotKind::Delta { base_version: 1 }, 9.0);
        let retried = snapshot(2, SnapshotKind::Delta { base_version: 1 }, 2.0);
        feed(&mut draft, &base, 10, &aborted, 0);
        feed(&mut draft, &base, 14, &retried, 0);
        assert!(!draft.ready_for(10, 0), "the aborted transaction's header is never delivered committed");
        assert!(draft.ready_for(14, 0));
        let model = draft.adopt(&committed(14, &retried), 0).expect("drafted").finish_onto(Some(&base), 0);
        assert!(model.row(TableKind::User, hash_id("u1")).expect("u1").iter().all(|&v| v == 2.0));

        let full = snapshot(3, SnapshotKind::Full, 4.0);
        assert_eq!(feed(&mut draft, &base, 20, &full, 0), [false, false, false], "a full snapshot is not drafted");
        assert!(!draft.ready_for(20, 0));

        let broken = snapshot(5, SnapshotKind::Delta { base_version: 4 }, 4.0);
        assert_eq!(feed(&mut draft, &base, 30, &broken, 0), [false, false, false], "not on the version served");
    }

    #[test]
    fn a_draft_still_building_when_its_commit_arrives_is_dropped() {
        let base = served();
        let delta = snapshot(2, SnapshotKind::Delta { base_version: 1 }, 2.0);
        let mut draft = Draft::default();
        feed(&mut draft, &base, 10, &delta[..2], 0);
        assert!(!draft.ready_for(10, 0), "not complete: the committed stream builds it");
        assert_eq!(feed(&mut draft, &base, 12, &delta[2..], 0), [false], "dropped, not finished");
    }
}
