//! What the trainer hands to the publisher after a checkpoint: a full model
//! or the changes since a version, with the watermark and metrics of that
//! checkpoint. Hand-offs that were not published yet (the publisher was busy,
//! a publish failed or was held) merge into one, so the queue never grows.

use std::collections::BTreeMap;

use freshet_core::TableKind;
use freshet_core::snapshot::{ModelParams, ParamColumns, ParamsDelta, SnapshotMetrics, SnapshotRow, Watermark};
use thiserror::Error;

/// A model version ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The checkpoint version it reflects.
    pub version: u64,
    /// Global bias per head at this version.
    pub globals: [f32; 2],
    /// The trainer's session gap (ms), for the session rule of serving.
    pub session_gap_ms: i64,
    /// The rows.
    pub content: Content,
    /// Source offsets and event time covered.
    pub watermark: Watermark,
    /// Progressive metrics at this version.
    pub metrics: SnapshotMetrics,
    /// Set on the full snapshot of a rollback: the version it restores.
    /// The quality gate never holds it (the rollback is the remedy).
    pub rollback_to: Option<u64>,
}

/// All rows, or the changes since a version.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// Every row, sorted by (table, key).
    Full(Vec<SnapshotRow>),
    /// Every row too, not built yet: the trainer's parameter columns at an
    /// earlier version and the changes since, made into [`Content::Full`]
    /// by [`Outgoing::build`] on the publisher's thread.
    Columns {
        /// The columns as the trainer copied them.
        columns: Box<ParamColumns>,
        /// Per (table, key): the rows set or removed since.
        changes: BTreeMap<(TableKind, u64), Option<SnapshotRow>>,
    },
    /// Rows set or removed since `base_version`.
    Delta {
        /// The version the changes apply to.
        base_version: u64,
        /// Per (table, key): the new row, or `None` when it was removed.
        changes: BTreeMap<(TableKind, u64), Option<SnapshotRow>>,
    },
}

/// Two hand-offs that do not follow each other cannot merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("a delta based on version {base} cannot follow version {version}")]
pub struct ChainGap {
    /// The version held.
    pub version: u64,
    /// The base of the delta that came next.
    pub base: u64,
}

impl Outgoing {
    /// A full snapshot of the trainer's exported parameters.
    pub fn full(version: u64, params: ModelParams, watermark: Watermark, metrics: SnapshotMetrics) -> Self {
        Outgoing {
            version,
            globals: params.globals,
            session_gap_ms: params.session_gap_ms,
            content: Content::Full(params.rows),
            watermark,
            metrics,
            rollback_to: None,
        }
    }

    /// A full snapshot of the trainer's parameter columns, its rows built
    /// later, off the trainer's thread ([`Outgoing::build`]).
    pub fn full_columns(version: u64, columns: ParamColumns, watermark: Watermark, metrics: SnapshotMetrics) -> Self {
        Outgoing {
            version,
            globals: columns.globals,
            session_gap_ms: columns.session_gap_ms,
            content: Content::Columns { columns: Box::new(columns), changes: BTreeMap::new() },
            watermark,
            metrics,
            rollback_to: None,
        }
    }

    /// The same hand-off with a full snapshot's rows built
    /// ([`Content::Columns`] made [`Content::Full`]); anything else as it is.
    pub fn build(self) -> Self {
        match self.content {
            Content::Columns { columns, changes } => {
                let rows = apply_changes(columns.into_params().rows, changes);
                Outgoing { content: Content::Full(rows), ..self }
            }
            _ => self,
        }
    }

    /// A delta of the parameters changed between checkpoints `base_version` and `version`.
    pub fn delta(
        base_version: u64,
        version: u64,
        delta: ParamsDelta,
        watermark: Watermark,
        metrics: SnapshotMetrics,
    ) -> Self {
        let mut changes = BTreeMap::new();
        for tombstone in delta.tombstones {
            changes.insert((tombstone.table, tombstone.key), None);
        }
        for row in delta.rows {
            changes.insert((row.table, row.key), Some(row));
        }
        Outgoing {
            version,
            globals: delta.globals,
            session_gap_ms: delta.session_gap_ms,
            content: Content::Delta { base_version, changes },
            watermark,
            metrics,
            rollback_to: None,
        }
    }

    /// This full snapshot marked as restoring `version` (a rollback's).
    pub fn rolling_back_to(self, version: u64) -> Self {
        Outgoing { rollback_to: Some(version), ..self }
    }

    /// Whether this is a full snapshot.
    pub fn is_full(&self) -> bool {
        matches!(self.content, Content::Full(_) | Content::Columns { .. })
    }

    /// `self` followed by `later`: one hand-off with the same effect. A
    /// rollback's full snapshot merged with the deltas after it stays a
    /// rollback (to the same version).
    pub fn merge(self, later: Outgoing) -> Result<Outgoing, ChainGap> {
        let base = match &later.content {
            Content::Full(_) | Content::Columns { .. } => return Ok(later),
            Content::Delta { base_version, .. } => *base_version,
        };
        if base != self.version {
            return Err(ChainGap { version: self.version, base });
        }
        let Content::Delta { changes: later_changes, .. } = later.content else { unreachable!("matched above") };
        let content = match self.content {
            Content::Full(rows) => Content::Full(apply_changes(rows, later_changes)),
            Content::Columns { columns, mut changes } => {
                changes.extend(later_changes);
                Content::Columns { columns, changes }
            }
            Content::Delta { base_version, mut changes } => {
                changes.extend(later_changes);
                Content::Delta { base_version, changes }
            }
        };
        let rollback_to = later.rollback_to.or(self.rollback_to);
        Ok(Outgoing { content, rollback_to, ..later })
    }
}

/// Applies changes to rows sorted by (table, key), keeping them sorted.
fn apply_changes(rows: Vec<SnapshotRow>, changes: BTreeMap<(TableKind, u64), Option<SnapshotRow>>) -> Vec<SnapshotRow> {
    let mut merged = Vec::with_capacity(rows.len() + changes.len());
    let mut changes = changes.into_iter().peekable();
    for row in rows {
        let at = (row.table, row.key);
        while let Some(change) = changes.next_if(|(key, _)| *key < at) {
            merged.extend(change.1);
        }
        match changes.next_if(|(key, _)| *key == at) {
            Some((_, replacement)) => merged.extend(replacement),
            None => merged.push(row),
        }
    }
    merged.extend(changes.filter_map(|(_, row)| row));
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(table: TableKind, key: u64, value: f32) -> SnapshotRow {
        SnapshotRow { table, key, id: None, updated_ms: 0, values: vec![value] }
    }

    fn outgoing(version: u64, content: Content) -> Outgoing {
        Outgoing {
            version,
            globals: [version as f32, 0.0],
            session_gap_ms: 1,
            content,
            watermark: Watermark::default(),
            metrics: SnapshotMetrics::default(),
            rollback_to: None,
        }
    }

    fn delta(base_version: u64, version: u64, changes: &[(u64, Option<f32>)]) -> Outgoing {
        let changes =
            changes.iter().map(|&(key, value)| ((TableKind::User, key), value.map(|v| row(TableKind::User, key, v))));
        outgoing(version, Content::Delta { base_version, changes: changes.collect() })
    }

    #[test]
    fn deltas_merge_later_wins_and_removals_stick() {
        let merged = delta(1, 2, &[(1, Some(1.0)), (2, Some(2.0))])
            .merge(delta(2, 3, &[(1, None), (3, Some(3.0)), (2, Some(2.5))]))
            .expect("contiguous");
        assert_eq!(merged, delta(1, 3, &[(1, None), (2, Some(2.5)), (3, Some(3.0))]));
    }

    #[test]
    fn a_delta_applies_to_a_full_snapshot_in_order() {
        let full = outgoing(
            5,
            Content::Full(vec![
                row(TableKind::User, 2, 0.0),
                row(TableKind::User, 4, 0.0),
                row(TableKind::Item, 1, 0.0),
            ]),
        );
        let merged = full.merge(delta(5, 6, &[(1, Some(1.0)), (2, None), (4, Some(4.0)), (9, Some(9.0))])).expect("ok");
        let expected = vec![
            row(TableKind::User, 1, 1.0),
            row(TableKind::User, 4, 4.0),
            row(TableKind::User, 9, 9.0),
            row(TableKind::Item, 1, 0.0),
        ];
        assert_eq!(merged.content, Content::Full(expected));
        assert_eq!((merged.version, merged.globals[0]), (6, 6.0));
    }

    /// Columns in the trainer's row order (unsorted), with deltas merged
    /// before they are built: the same rows as the built full snapshot
    /// with the deltas applied, and the same hand-off once built.
    #[test]
    fn columns_take_deltas_and_build_the_rows_a_full_snapshot_has() {
        use freshet_core::ModelSpec;
        use freshet_core::snapshot::TableColumns;
        let table = |table: TableKind, keys: Vec<u64>, values: Vec<f32>| TableColumns {
            table,
            width: 1,
            updated_ms: vec![0; keys.len()],
            keys,
            ids: Vec::new(),
            values,
        };
        let columns = ParamColumns {
            spec: ModelSpec::default(),
            globals: [5.0, 0.0],
            session_gap_ms: 1,
            tables: vec![
                table(TableKind::User, vec![4, 2], vec![0.0, 0.0]),
                table(TableKind::Item, vec![1], vec![0.0]),
            ],
        };
        let full = Outgoing::full_columns(5, columns, Watermark::default(), SnapshotMetrics::default());
        assert!(full.is_full());
        let built = full.clone().build();
        let rows = vec![row(TableKind::User, 2, 0.0), row(TableKind::User, 4, 0.0), row(TableKind::Item, 1, 0.0)];
        assert_eq!(built.content, Content::Full(rows.clone()));
        assert_eq!(built.clone().build(), built, "building twice changes nothing");

        let later = delta(5, 6, &[(1, Some(1.0)), (2, None)]).merge(delta(6, 7, &[(4, Some(4.0)), (9, Some(9.0))]));
        let later = later.expect("contiguous");
        let merged = full.merge(later.clone()).expect("ok");
        assert!(matches!(merged.content, Content::Columns { .. }), "merged without building");
        let expected = outgoing(5, Content::Full(rows)).merge(later).expect("ok");
        assert_eq!(merged.build(), expected);
    }

    #[test]
    fn a_full_snapshot_replaces_anything_and_gaps_are_refused() {
        let full = outgoing(9, Content::Full(vec![]));
        assert_eq!(delta(1, 2, &[]).merge(full.clone()), Ok(full));
        assert_eq!(delta(1, 2, &[]).merge(delta(3, 4, &[])), Err(ChainGap { version: 2, base: 3 }));
    }

    #[test]
    fn a_rollback_stays_one_when_deltas_follow_it() {
        let rollback = outgoing(7, Content::Full(vec![row(TableKind::User, 1, 0.0)])).rolling_back_to(3);
        let merged = rollback.merge(delta(7, 8, &[(2, Some(2.0))])).expect("contiguous");
        assert_eq!((merged.version, merged.rollback_to), (8, Some(3)));
        // A later rollback replaces an earlier one; a plain full snapshot is no rollback.
        let again = delta(8, 9, &[]).merge(outgoing(10, Content::Full(vec![])).rolling_back_to(5)).expect("full");
        assert_eq!(again.rollback_to, Some(5));
        assert_eq!(delta(1, 2, &[]).merge(outgoing(3, Content::Full(vec![]))).expect("full").rollback_to, None);
    }
}
