//! Rollback: the store's state becomes a retained version's again, as a NEW
//! checkpoint version written in ONE `WriteBatch` (the rows and pending
//! counts that differ, the dense state, the offsets, the skipped-event count
//! and the audit record), so a crash leaves the state before or after it.
//!
//! Two modes, for what happens to the events read since that version:
//! - [`RollbackMode::Replay`]: the offsets go back too; they are read and
//!   trained again, once.
//! - [`RollbackMode::Skip`]: the offsets stay; those events are not applied,
//!   counted as skipped and their ranges kept in the audit record.
//!
//! Either way `events_applied + events_skipped` counts each valid event read
//! once ([`counts_after`]).

use std::fmt;

use freshet_core::NextOffsets;
use freshet_core::record::{RecordReader, RecordWriter};
use serde::Serialize;

use crate::error::CheckpointError;

/// What happens to the events read after the version rolled back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RollbackMode {
    /// Resume at the offsets reached: those events are skipped.
    Skip,
    /// Resume at the version's offsets: those events are trained again.
    Replay,
}

impl RollbackMode {
    fn tag(self) -> u8 {
        match self {
            RollbackMode::Skip => 0,
            RollbackMode::Replay => 1,
        }
    }
}

impl fmt::Display for RollbackMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RollbackMode::Skip => "skip",
            RollbackMode::Replay => "replay",
        })
    }
}

impl std::str::FromStr for RollbackMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "skip" => Ok(RollbackMode::Skip),
            "replay" => Ok(RollbackMode::Replay),
            other => Err(format!("mode must be skip or replay, not {other:?}")),
        }
    }
}

/// The events of one partition a skip rollback left out: offsets `from`
/// (inclusive) to `to` (exclusive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedRange {
    /// The partition.
    pub topic: String,
    /// The partition number.
    pub partition: i32,
    /// The first offset skipped (the version's next offset; 0 when it had none).
    pub from: i64,
    /// One past the last offset skipped (the offset reached).
    pub to: i64,
}

/// The audit record of one rollback, kept in the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RollbackRecord {
    /// The new checkpoint version the rollback wrote.
    pub version: u64,
    /// The version rolled back to.
    pub to_version: u64,
    /// The version before the rollback.
    pub from_version: u64,
    /// Skip or replay.
    pub mode: RollbackMode,
    /// Why (`admin`, `cli`, `quality_gate`).
    pub reason: String,
    /// When (ms since the epoch).
    pub at_ms: i64,
    /// Events applied before the rollback.
    pub events_applied_before: u64,
    /// Events applied after it (the version's count).
    pub events_applied_after: u64,
    /// The store's total of skipped events after it.
    pub events_skipped_after: u64,
    /// For a skip: the offsets whose events are not applied.
    pub ranges: Vec<SkippedRange>,
}

/// The counts and offsets a rollback leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RolledCounts {
    pub(crate) events_skipped: u64,
    pub(crate) offsets: NextOffsets,
    pub(crate) ranges: Vec<SkippedRange>,
}

/// Events applied and skipped, and the offsets, of one side of a rollback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) applied: u64,
    pub(crate) skipped: u64,
    pub(crate) offsets: NextOffsets,
}

/// The skipped count, offsets and skipped ranges after rolling back from
/// `now` to `target` in `mode`. Replay takes the target's offsets and
/// skipped count (what follows is read again). Skip keeps the offsets
/// reached, so every event read stays counted: applied (the target's) plus
/// skipped is what it was; it is refused when the target read past the
/// offsets reached in some partition (a version on another branch), as
/// those events would be read again after being counted.
pub(crate) fn counts_after(now: &Position, target: &Position, mode: RollbackMode) -> Result<RolledCounts, String> {
    match mode {
        RollbackMode::Replay => {
            Ok(RolledCounts { events_skipped: target.skipped, offsets: target.offsets.clone(), ranges: Vec::new() })
        }
        RollbackMode::Skip => {
            if let Some((tp, ahead)) =
                target.offsets.iter().find(|(tp, next)| now.offsets.get(*tp).is_none_or(|reached| *next > reached))
            {
                return Err(format!(
                    "version read {tp} up to offset {ahead}, past the offset reached ({}); roll back with \
                     --mode replay",
                    now.offsets.get(tp).map_or("none".to_owned(), i64::to_string)
                ));
            }
            let read = now.applied + now.skipped;
            let events_skipped = read.checked_sub(target.applied).ok_or_else(|| {
                format!("the version applied {} events, more than the {read} read since", target.applied)
            })?;
            let ranges = now
                .offsets
                .iter()
                .filter_map(|(tp, &to)| {
                    let from = target.offsets.get(tp).copied().unwrap_or(0);
                    (from < to).then(|| SkippedRange { topic: tp.topic.clone(), partition: tp.partition, from, to })
                })
                .collect();
            Ok(RolledCounts { events_skipped, offsets: now.offsets.clone(), ranges })
        }
    }
}

/// Writes the audit records (docs/checkpoint.md, `rollbacks`).
pub(crate) fn encode_records(records: &[RollbackRecord]) -> Vec<u8> {
    let mut w = RecordWriter::default();
    w.len(records.len());
    for record in records {
        let RollbackRecord {
            version,
            to_version,
            from_version,
            mode,
            reason,
            at_ms,
            events_applied_before,
            events_applied_after,
            events_skipped_after,
            ranges,
        } = record;
        w.u64(*version);
        w.u64(*to_version);
        w.u64(*from_version);
        w.u8(mode.tag());
        w.str(reason);
        w.i64(*at_ms);
        w.u64(*events_applied_before);
        w.u64(*events_applied_after);
        w.u64(*events_skipped_after);
        w.len(ranges.len());
        for SkippedRange { topic, partition, from, to } in ranges {
            w.str(topic);
            w.i32(*partition);
            w.i64(*from);
            w.i64(*to);
        }
    }
    w.into_bytes()
}

/// Reads the audit records.
pub(crate) fn decode_records(bytes: &[u8]) -> Result<Vec<RollbackRecord>, CheckpointError> {
    let mut r = RecordReader::new(bytes, "rollbacks");
    // A record is at least 73 bytes: the length check refuses a count the bytes cannot hold.
    let count = r.len(73)?;
    let mut records = Vec::with_capacity(count);
    for _ in 0..count {
        let (version, to_version, from_version) = (r.u64()?, r.u64()?, r.u64()?);
        let mode = match r.u8()? {
            0 => RollbackMode::Skip,
            1 => RollbackMode::Replay,
            other => return Err(r.error(format!("rollback mode {other}")).into()),
        };
        let reason = r.string()?;
        let at_ms = r.i64()?;
        let (events_applied_before, events_applied_after, events_skipped_after) = (r.u64()?, r.u64()?, r.u64()?);
        let ranges = (0..r.len(28)?)
            .map(|_| Ok(SkippedRange { topic: r.string()?, partition: r.i32()?, from: r.i64()?, to: r.i64()? }))
            .collect::<Result<_, freshet_core::record::RecordError>>()?;
        records.push(RollbackRecord {
            version,
            to_version,
            from_version,
            mode,
            reason,
            at_ms,
            events_applied_before,
            events_applied_after,
            events_skipped_after,
            ranges,
        });
    }
    r.finish()?;
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use freshet_core::TopicPartition;

    fn offsets(pairs: &[(i32, i64)]) -> NextOffsets {
        pairs.iter().map(|&(p, next)| (TopicPartition::new("t", p), next)).collect()
    }

    fn position(applied: u64, skipped: u64, pairs: &[(i32, i64)]) -> Position {
        Position { applied, skipped, offsets: offsets(pairs) }
    }

    #[test]
    fn skip_keeps_every_read_event_counted_once() {
        let now = position(150, 10, &[(0, 100), (1, 70)]);
        let target = position(100, 5, &[(0, 60), (1, 70)]);
        let after = counts_after(&now, &target, RollbackMode::Skip).expect("a skip");
        assert_eq!(after.offsets, now.offsets);
        // applied 100 (the target's) + skipped 60 = 150 + 10 read before.
        assert_eq!(after.events_skipped, 60);
        let range = SkippedRange { topic: "t".into(), partition: 0, from: 60, to: 100 };
        assert_eq!(after.ranges, vec![range]);
        // A partition the target never read is skipped from its start.
        let after = counts_after(&now, &position(100, 5, &[(0, 60)]), RollbackMode::Skip).expect("a skip");
        assert_eq!(after.ranges[1], SkippedRange { topic: "t".into(), partition: 1, from: 0, to: 70 });
    }

    #[test]
    fn replay_takes_the_targets_offsets_and_count() {
        let now = position(150, 10, &[(0, 100)]);
        let target = position(100, 5, &[(0, 60)]);
        let after = counts_after(&now, &target, RollbackMode::Replay).expect("a replay");
        assert_eq!((after.events_skipped, after.offsets, after.ranges), (5, target.offsets, vec![]));
    }

    #[test]
    fn skip_to_a_version_ahead_of_the_offsets_reached_is_refused() {
        let now = position(50, 0, &[(0, 60)]);
        let ahead = position(60, 0, &[(0, 70)]);
        let refused = counts_after(&now, &ahead, RollbackMode::Skip).expect_err("ahead");
        assert!(refused.contains("t/0") && refused.contains("replay"), "{refused}");
        let other_partition = position(10, 0, &[(1, 5)]);
        assert!(counts_after(&now, &other_partition, RollbackMode::Skip).is_err());
        assert!(counts_after(&now, &ahead, RollbackMode::Replay).is_ok());
    }

    #[test]
    fn audit_records_round_trip_and_damage_is_an_error() {
        let record = RollbackRecord {
            version: 9,
            to_version: 5,
            from_version: 8,
            mode: RollbackMode::Skip,
            reason: "quality_gate".into(),
            at_ms: 1_700_000_000_000,
            events_applied_before: 150,
            events_applied_after: 100,
            events_skipped_after: 60,
            ranges: vec![SkippedRange { topic: "freshet.ratings".into(), partition: 3, from: 60, to: 100 }],
        };
        let replay = RollbackRecord { mode: RollbackMode::Replay, ranges: vec![], ..record.clone() };
        let bytes = encode_records(&[record.clone(), replay.clone()]);
        assert_eq!(decode_records(&bytes).expect("decodes"), vec![record, replay]);
        assert_eq!(decode_records(&encode_records(&[])).expect("decodes"), vec![]);
        for cut in [0, 8, bytes.len() - 1] {
            assert!(decode_records(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode_records(&u64::MAX.to_le_bytes()).is_err());
    }

    #[test]
    fn modes_parse_by_name() {
        assert_eq!("skip".parse(), Ok(RollbackMode::Skip));
        assert_eq!("replay".parse(), Ok(RollbackMode::Replay));
        assert!("undo".parse::<RollbackMode>().is_err_and(|e| e.contains("skip or replay")));
    }
}
