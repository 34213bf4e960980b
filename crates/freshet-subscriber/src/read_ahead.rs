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
//! being built again from the committed messages. A draft still being built
//! when the committed header arrives is handed over with the count of chunks
//! it applied, and the committed stream applies the rest ([`Claim`]).
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
    /// over unread (a full snapshot's hundreds of megabytes are checked by
    /// the committed stream alone).
    passing: bool,
}

/// A delta being drafted.
#[derive(Debug)]
struct Building {
    header_offset: i64,
    /// The chain's generation when the builder was made (see [`Draft::feed`]).
    generation: u64,
    builder: Box<Builder>,
    /// Chunks applied, the first ones in order.
    applied: u32,
}

/// What one message did to a [`Draft`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Nothing to act on.
    Nothing,
    /// A draft became ready.
    Ready,
    /// A full snapshot opened: the read-ahead consumer may stop until the
    /// committed stream is past it, instead of fetching it a second time.
    Full,
}

/// What the read-ahead has of a snapshot whose header the committed stream delivered.
#[derive(Debug)]
pub(crate) enum Claim {
    /// Its draft is complete: [`Draft::adopt`] hands it over once the
    /// committed stream completes the snapshot too.
    Ready,
    /// Its draft was still being built: the builder, with its first
    /// `applied` chunks applied.
    Partial { builder: Box<Builder>, applied: u32 },
    /// Nothing: the committed stream builds it.
    Nothing,
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
    /// build on what is served now).
    pub(crate) fn feed(
        &mut self,
        offset: i64,
        value: &[u8],
        generation: u64,
        start: impl FnOnce(&SnapshotHeader) -> Option<Box<Builder>>,
    ) -> Progress {
        if self.passing && (decode_chunk_position(value).is_some() || decode_commit(value).is_some()) {
            return Progress::Nothing;
        }
        match self.assembler.feed(offset, value) {
            Ok(Fed::Header(header)) => {
                let full = header.kind == SnapshotKind::Full;
                let builder = if full { None } else { start(&header) };
                self.building =
                    builder.map(|builder| Building { header_offset: offset, generation, builder, applied: 0 });
                self.passing = self.building.is_none();
                if full {
                    return Progress::Full;
                }
            }
            Ok(Fed::Chunk(chunk)) => {
                if let Some(building) = &mut self.building {
                    if building.builder.apply_view(&chunk).is_ok() {
                        building.applied += 1;
                    } else {
                        self.building = None;
                        self.passing = true;
                    }
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
                    return Progress::Ready;
                }
            }
            Err(_) => {
                self.building = None;
                self.passing = true;
            }
        }
        Progress::Nothing
    }

    /// What the read-ahead has of the snapshot whose header the committed
    /// stream delivered at `header_offset`, for the chain's generation
    /// `generation`. A draft being built of it is handed over (the
    /// read-ahead passes over the rest of it); one of a snapshot before it
    /// is dropped.
    pub(crate) fn claim(&mut self, header_offset: i64, generation: u64) -> Claim {
        if let Some(building) = self.building.take_if(|building| building.header_offset <= header_offset) {
            self.passing = true;
            if building.header_offset == header_offset && building.generation == generation {
                return Claim::Partial { builder: building.builder, applied: building.applied };
            }
        }
        let ready = self.ready.as_ref();
        if ready.is_some_and(|ready| ready.header_offset == header_offset && ready.generation == generation) {
            Claim::Ready
        } else {
            Claim::Nothing
        }
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
    use freshet_core::{TableKind, hash_id};

    use super::*;
    use crate::fixtures::{served_users, user_snapshot};
    use crate::model::ServingModel;

    /// A delta of version 2 on version 1 setting user `u1` to `value`.
    fn delta(value: f32) -> Vec<Vec<u8>> {
        user_snapshot(2, SnapshotKind::Delta { base_version: 1 }, &[("u1", value)])
    }

    /// Feeds `values` from `first` on, drafting deltas onto `base` at `generation`.
    fn feed(draft: &mut Draft, base: &ServingModel, first: i64, values: &[Vec<u8>], generation: u64) -> Vec<Progress> {
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
        let base = served_users(&[("u1", 0.5)]);
        let delta = delta(2.0);
        let mut draft = Draft::default();
        assert_eq!(
            feed(&mut draft, &base, 10, &delta, 7),
            [Progress::Nothing, Progress::Nothing, Progress::Ready],
            "ready at its commit record"
        );

        assert!(matches!(draft.claim(11, 7), Claim::Nothing), "another header offset");
        assert!(matches!(draft.claim(10, 8), Claim::Nothing), "drafted on another version of the chain");
        assert!(matches!(draft.claim(10, 7), Claim::Ready));
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
        let base = served_users(&[("u1", 0.5)]);
        let mut draft = Draft::default();
        let aborted = delta(9.0);
        let retried = delta(2.0);
        feed(&mut draft, &base, 10, &aborted, 0);
        feed(&mut draft, &base, 14, &retried, 0);
        assert!(matches!(draft.claim(10, 0), Claim::Nothing), "an aborted transaction's header is never committed");
        assert!(matches!(draft.claim(14, 0), Claim::Ready));
        let model = draft.adopt(&committed(14, &retried), 0).expect("drafted").finish_onto(Some(&base), 0);
        assert!(model.row(TableKind::User, hash_id("u1")).expect("u1").iter().all(|&v| v == 2.0));

        let full = user_snapshot(3, SnapshotKind::Full, &[("u1", 4.0)]);
        let nothing = [Progress::Nothing, Progress::Nothing];
        assert_eq!(feed(&mut draft, &base, 20, &full, 0), [Progress::Full, nothing[0], nothing[1]], "not drafted");
        assert!(matches!(draft.claim(20, 0), Claim::Nothing));

        let broken = user_snapshot(5, SnapshotKind::Delta { base_version: 4 }, &[("u1", 4.0)]);
        assert_eq!(feed(&mut draft, &base, 30, &broken, 0), [Progress::Nothing; 3], "not on the version served");
    }

    #[test]
    fn a_draft_still_building_when_its_header_is_committed_is_handed_over_with_its_chunks_applied() {
        let base = served_users(&[("u1", 0.5)]);
        let delta = delta(2.0);
        let mut draft = Draft::default();
        feed(&mut draft, &base, 10, &delta[..1], 0);
        assert!(matches!(draft.claim(10, 1), Claim::Nothing), "made on another generation: dropped");
        assert_eq!(feed(&mut draft, &base, 11, &delta[1..], 0), [Progress::Nothing; 2], "the rest passed over");

        feed(&mut draft, &base, 20, &delta[..2], 0);
        let Claim::Partial { builder, applied } = draft.claim(20, 0) else { panic!("handed over") };
        assert_eq!(applied, 1, "its one chunk");
        let model = builder.finish_onto(Some(&base), 0);
        assert!(model.row(TableKind::User, hash_id("u1")).expect("u1").iter().all(|&v| v == 2.0));
        assert_eq!(
            feed(&mut draft, &base, 22, &delta[2..], 0),
            [Progress::Nothing],
            "the committed stream completes it"
        );
        assert!(matches!(draft.claim(20, 0), Claim::Nothing), "handed over once");
    }
}
