//! The serving model: one immutable-while-served copy of the parameters of a
//! snapshot version, with scoring and top-k. Snapshots apply to it in place
//! only while no reader holds it (see `swap`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use freshet_core::snapshot::{SnapshotHeader, SnapshotKind, SnapshotMetrics, SnapshotRow, SnapshotTombstone};
use freshet_core::{Head, ModelSpec, TableKind, bias_terms, hash_id};
use serde::Serialize;

use crate::assemble::AssembledSnapshot;

/// What a served model version is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionInfo {
    /// Model name.
    pub model: String,
    /// Snapshot version.
    pub version: u64,
    /// Whether the newest applied snapshot was full.
    pub full: bool,
    /// When the publisher built it (ms since the epoch).
    pub created_ms: i64,
    /// Newest event time the parameters reflect (ms since the epoch).
    pub newest_event_ms: i64,
    /// Next offset per source partition (`topic/partition` → offset).
    pub watermark: std::collections::BTreeMap<String, i64>,
    /// Topic offset of the full snapshot the chain starts from.
    pub chain_start_offset: i64,
    /// Rows per table.
    pub rows: std::collections::BTreeMap<String, usize>,
    /// Progressive metrics when the version was published.
    pub metrics: SnapshotMetrics,
}

/// One item of a top-k answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    /// The item's id.
    pub item: String,
    /// The head's prediction for it.
    pub score: f32,
}

/// A table: key → row, rows packed in one arena.
#[derive(Debug, Clone, Default, PartialEq)]
struct Table {
    index: HashMap<u64, usize>,
    keys: Vec<u64>,
    ids: Vec<Option<String>>,
    values: Vec<f32>,
}

impl Table {
    fn row(&self, key: u64, width: usize) -> Option<&[f32]> {
        self.index.get(&key).map(|&at| &self.values[at * width..(at + 1) * width])
    }

    fn set(&mut self, row: SnapshotRow, width: usize) {
        match self.index.get(&row.key) {
            Some(&at) => {
                self.values[at * width..(at + 1) * width].copy_from_slice(&row.values);
                self.ids[at] = row.id;
            }
            None => {
                self.index.insert(row.key, self.keys.len());
                self.keys.push(row.key);
                self.ids.push(row.id);
                self.values.extend_from_slice(&row.values);
            }
        }
    }

    fn remove(&mut self, key: u64, width: usize) {
        let Some(at) = self.index.remove(&key) else { return };
        let last = self.keys.len() - 1;
        if at != last {
            let moved = self.keys[last];
            self.keys[at] = moved;
            self.ids.swap(at, last);
            self.values.copy_within(last * width..(last + 1) * width, at * width);
            self.index.insert(moved, at);
        }
        self.keys.pop();
        self.ids.pop();
        self.values.truncate(last * width);
    }
}

/// The parameters of one snapshot version, ready to score.
#[derive(Debug, Clone, PartialEq)]
pub struct ServingModel {
    info: VersionInfo,
    spec: ModelSpec,
    globals: [f32; 2],
    tables: [Table; 3],
}

/// Why a snapshot does not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// A row's width does not match the spec.
    #[error("row {key:#018x} of table {table:?} has {found} values, the spec needs {expected}")]
    RowWidth {
        /// Table.
        table: TableKind,
        /// Key.
        key: u64,
        /// Values found.
        found: usize,
        /// Values expected.
        expected: usize,
    },
    /// A value is NaN or infinite.
    #[error("row {key:#018x} of table {table:?} holds a non-finite value")]
    NonFinite {
        /// Table.
        table: TableKind,
        /// Key.
        key: u64,
    },
    /// A delta of another spec or base.
    #[error("delta {version} (base {base}, spec {spec_matches}) does not apply to version {current}")]
    Mismatch {
        /// The delta's version.
        version: u64,
        /// Its base.
        base: u64,
        /// The model's version.
        current: u64,
        /// Whether the specs matched.
        spec_matches: bool,
    },
}

impl ServingModel {
    /// Builds a model from a full snapshot.
    pub fn from_full(snapshot: &AssembledSnapshot) -> Result<Self, ApplyError> {
        let header = &snapshot.header;
        let mut model = ServingModel {
            info: info(header, snapshot.chain_start_offset),
            spec: header.spec.clone(),
            globals: header.globals,
            tables: Default::default(),
        };
        model.apply_entries(&snapshot.rows, &snapshot.tombstones)?;
        model.refresh_counts();
        Ok(model)
    }

    /// Applies a delta whose base is this model's version; on error the
    /// model is unchanged.
    pub fn apply_delta(&mut self, snapshot: &AssembledSnapshot) -> Result<(), ApplyError> {
        let header = &snapshot.header;
        let base = match header.kind {
            SnapshotKind::Delta { base_version } => base_version,
            SnapshotKind::Full => u64::MAX,
        };
        if base != self.info.version || header.spec != self.spec {
            return Err(ApplyError::Mismatch {
                version: header.version,
                base,
                current: self.info.version,
                spec_matches: header.spec == self.spec,
            });
        }
        self.apply_entries(&snapshot.rows, &snapshot.tombstones)?;
        self.globals = header.globals;
        self.info = info(header, snapshot.chain_start_offset);
        self.refresh_counts();
        Ok(())
    }

    fn apply_entries(&mut self, rows: &[SnapshotRow], tombstones: &[SnapshotTombstone]) -> Result<(), ApplyError> {
        validate(rows, &self.spec)?;
        for tombstone in tombstones {
            self.tables[tombstone.table.index()].remove(tombstone.key, self.spec.row_width(tombstone.table));
        }
        for row in rows {
            self.tables[row.table.index()].set(row.clone(), self.spec.row_width(row.table));
        }
        Ok(())
    }

    fn refresh_counts(&mut self) {
        self.info.rows = TableKind::ALL
            .iter()
            .map(|table| (table.name().to_owned(), self.tables[table.index()].keys.len()))
            .collect();
    }

    /// The version and what it covers.
    pub fn info(&self) -> &VersionInfo {
        &self.info
    }

    /// The version.
    pub fn version(&self) -> u64 {
        self.info.version
    }

    /// The model's shape.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Global bias per head.
    pub fn globals(&self) -> [f32; 2] {
        self.globals
    }

    /// A row's parameters: its table's scalars (see [`TableKind::scalars`]), then the factors.
    pub fn row(&self, table: TableKind, key: u64) -> Option<&[f32]> {
        self.tables[table.index()].row(key, self.spec.row_width(table))
    }

    /// Every row of a table as (key, item id, parameters), in arena order.
    pub fn rows(&self, table: TableKind) -> impl Iterator<Item = (u64, Option<&str>, &[f32])> {
        let width = self.spec.row_width(table);
        let table = &self.tables[table.index()];
        table
            .keys
            .iter()
            .zip(&table.ids)
            .zip(table.values.chunks_exact(width))
            .map(|((&k, id), v)| (k, id.as_deref(), v))
    }

    /// The head's prediction for `user` and `item`. Unknown ids score with
    /// zero parameters: an unknown user gets the item's bias-based score.
    pub fn score(&self, head: Head, user: &str, item: &str) -> f32 {
        let user_row = self.tables[TableKind::User.index()].row(hash_id(user), self.spec.row_width(TableKind::User));
        let item_row = self.tables[TableKind::Item.index()].row(hash_id(item), self.spec.row_width(TableKind::Item));
        let raw = self.raw_score(head, user_row, item_row);
        head.predict(raw, &self.spec)
    }

    /// The `k` best items for `user` by the head's score, excluding `exclude`
    /// (item ids). An unknown user gets the items with the highest biases.
    pub fn top_k(&self, head: Head, user: &str, k: usize, exclude: &HashSet<String>) -> Vec<Recommendation> {
        let user_row = self.tables[TableKind::User.index()].row(hash_id(user), self.spec.row_width(TableKind::User));
        let excluded: HashSet<u64> = exclude.iter().map(|id| hash_id(id)).collect();
        let items = &self.tables[TableKind::Item.index()];
        let mut best: BinaryHeap<Reverse<(OrderedScore, usize)>> = BinaryHeap::with_capacity(k + 1);
        for (at, item_row) in items.values.chunks_exact(self.spec.row_width(TableKind::Item)).enumerate() {
            if k == 0 || items.ids[at].is_none() || excluded.contains(&items.keys[at]) {
                continue;
            }
            let raw = self.raw_score(head, user_row, Some(item_row));
            if best.len() < k {
                best.push(Reverse((OrderedScore(raw), at)));
            } else if best.peek().is_some_and(|Reverse((worst, _))| raw > worst.0) {
                best.pop();
                best.push(Reverse((OrderedScore(raw), at)));
            }
        }
        let mut ranked: Vec<(OrderedScore, usize)> = best.into_iter().map(|Reverse(entry)| entry).collect();
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        ranked
            .into_iter()
            .map(|(score, at)| Recommendation {
                item: items.ids[at].clone().unwrap_or_default(),
                score: head.predict(score.0, &self.spec),
            })
            .collect()
    }

    /// `global + ⟨p_user, v_item⟩` plus the head's [`bias_terms`], as the trainer scores.
    fn raw_score(&self, head: Head, user: Option<&[f32]>, item: Option<&[f32]>) -> f32 {
        let mut score = self.globals[head.index()] + bias_terms(head, user, item);
        if let (Some(user), Some(item)) = (user, item) {
            let (p, v) = (&user[TableKind::User.scalars()..], &item[TableKind::Item.scalars()..]);
            score += p.iter().zip(v).map(|(a, b)| a * b).sum::<f32>();
        }
        score
    }
}

fn info(header: &SnapshotHeader, chain_start_offset: i64) -> VersionInfo {
    VersionInfo {
        model: header.model.clone(),
        version: header.version,
        full: header.kind == SnapshotKind::Full,
        created_ms: header.created_ms,
        newest_event_ms: header.watermark.newest_event_ms,
        watermark: header
            .watermark
            .offsets
            .iter()
            .map(|p| (format!("{}/{}", p.topic, p.partition), p.next_offset))
            .collect(),
        chain_start_offset,
        rows: Default::default(),
        metrics: header.metrics,
    }
}

fn validate(rows: &[SnapshotRow], spec: &ModelSpec) -> Result<(), ApplyError> {
    for row in rows {
        let width = spec.row_width(row.table);
        if row.values.len() != width {
            return Err(ApplyError::RowWidth {
                table: row.table,
                key: row.key,
                found: row.values.len(),
                expected: width,
            });
        }
        if row.values.iter().any(|v| !v.is_finite()) {
            return Err(ApplyError::NonFinite { table: row.table, key: row.key });
        }
    }
    Ok(())
}

/// An f32 score ordered totally (NaN never occurs: rows are validated).
#[derive(Debug, Clone, Copy, PartialEq)]
struct OrderedScore(f32);

impl Eq for OrderedScore {}

impl PartialOrd for OrderedScore {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrderedScore {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::assembled;

    fn spec() -> ModelSpec {
        ModelSpec { dim: 2, rating_min: 1.0, rating_max: 5.0, context_features: false }
    }

    /// A row of `spec()`: users `[b_rating, b_click, c, s, p₀, p₁]`, others `[b_rating, b_click, v₀, v₁]`.
    fn row(table: TableKind, id: &str, values: &[f32]) -> SnapshotRow {
        let id_kept = (table == TableKind::Item).then(|| id.to_owned());
        SnapshotRow { table, key: hash_id(id), id: id_kept, values: values.to_vec() }
    }

    fn snapshot(version: u64, kind: SnapshotKind, rows: Vec<SnapshotRow>, removed: Vec<&str>) -> AssembledSnapshot {
        let tombstones = removed.iter().map(|id| SnapshotTombstone { table: TableKind::Item, key: hash_id(id) });
        assembled(version, kind, spec(), rows, tombstones.collect())
    }

    fn model() -> ServingModel {
        let rows = vec![
            row(TableKind::User, "alice", &[0.5, 0.0, 0.0, 0.0, 1.0, 0.0]),
            row(TableKind::User, "bob", &[0.5, 0.0, 1.0, 0.2, 1.0, 0.0]),
            row(TableKind::Item, "a", &[0.1, 0.0, 1.0, 0.0]),
            row(TableKind::Item, "b", &[0.9, 0.0, 0.0, 1.0]),
            row(TableKind::Item, "c", &[-0.5, 0.0, 2.0, 0.0]),
        ];
        ServingModel::from_full(&snapshot(1, SnapshotKind::Full, rows, vec![])).expect("valid")
    }

    #[test]
    fn scores_add_biases_and_the_dot_product_and_clip() {
        let model = model();
        // 3 + 0.5 + 0.1 + ⟨(1,0),(1,0)⟩ = 4.6
        assert!((model.score(Head::Rating, "alice", "a") - 4.6).abs() < 1e-6);
        // 3 + 0.5 − 0.5 + 2 = 5.0 (at the top of the range)
        assert_eq!(model.score(Head::Rating, "alice", "c"), 5.0);
        // Unknown user: global + item bias.
        assert!((model.score(Head::Rating, "nobody", "b") - 3.9).abs() < 1e-6);
        // Click head: biases 0, so σ(⟨(1,0),(1,0)⟩) = σ(1).
        assert!((model.score(Head::Click, "alice", "a") - 0.731_058_6).abs() < 1e-6);
    }

    #[test]
    fn a_users_scale_and_session_offsets_enter_the_rating_only() {
        let model = model();
        // 3 + 0.5 + 0.2 (session) + (1 + 1.0)·0.1 (scaled item bias) + 1 = 4.9
        assert!((model.score(Head::Rating, "bob", "a") - 4.9).abs() < 1e-6);
        // 3 + 0.5 + 0.2 + 2·0.9 + 0 = 5.5, clipped to 5
        assert_eq!(model.score(Head::Rating, "bob", "b"), 5.0);
        assert_eq!(model.score(Head::Click, "bob", "a"), model.score(Head::Click, "alice", "a"));
        // Alice (scale 1) ranks c, a, b; Bob's doubled item biases put b
        // (2·0.9) first and c (2·−0.5 + 2) last.
        let ranked: Vec<String> =
            model.top_k(Head::Rating, "bob", 3, &HashSet::new()).into_iter().map(|r| r.item).collect();
        assert_eq!(ranked, ["b", "a", "c"]);
    }

    #[test]
    fn top_k_ranks_excludes_and_falls_back_to_biases() {
        let model = model();
        let items = |user: &str, k: usize, exclude: &[&str]| -> Vec<String> {
            let exclude = exclude.iter().map(|id| id.to_string()).collect();
            model.top_k(Head::Rating, user, k, &exclude).into_iter().map(|r| r.item).collect()
        };
        assert_eq!(items("alice", 3, &[]), ["c", "a", "b"]);
        assert_eq!(items("alice", 2, &["c"]), ["a", "b"]);
        assert_eq!(items("stranger", 2, &[]), ["b", "a"], "popularity by item bias");
        assert!(items("alice", 0, &[]).is_empty());
    }

    #[test]
    fn deltas_set_and_remove_rows_and_mismatches_change_nothing() {
        let mut model = model();
        let delta = snapshot(
            2,
            SnapshotKind::Delta { base_version: 1 },
            vec![row(TableKind::Item, "d", &[2.0, 0.0, 0.0, 0.0])],
            vec!["a", "b"],
        );
        model.apply_delta(&delta).expect("applies");
        assert_eq!(model.version(), 2);
        assert_eq!(model.rows(TableKind::Item).map(|(_, id, _)| id.unwrap_or("")).collect::<Vec<_>>(), ["c", "d"]);
        assert!(model.row(TableKind::Item, hash_id("a")).is_none());
        let before = model.clone();
        let wrong_base = snapshot(4, SnapshotKind::Delta { base_version: 3 }, vec![], vec!["c"]);
        assert!(matches!(model.apply_delta(&wrong_base), Err(ApplyError::Mismatch { .. })));
        let bad_row = snapshot(
            3,
            SnapshotKind::Delta { base_version: 2 },
            vec![row(TableKind::User, "x", &[f32::NAN; 6])],
            vec![],
        );
        assert!(matches!(model.apply_delta(&bad_row), Err(ApplyError::NonFinite { .. })));
        assert_eq!(model, before);
    }
}
