//! The serving model: the parameters of one snapshot version, scored with
//! the trainer's own scoring function ([`freshet_core::score`]).
//!
//! A version never changes once served. The next one is built by a
//! [`Builder`] from a clone of it (sharing every page) as a snapshot's
//! chunks arrive, and served once the snapshot completes intact.

use std::collections::{BTreeMap, HashSet};

use freshet_core::score::{self, QueryTerms, ScoreContext, UserTerms};
use freshet_core::snapshot::{
    ChunkView, SnapshotChunk, SnapshotHeader, SnapshotKind, SnapshotMetrics, SnapshotTombstone,
};
use freshet_core::{Head, MAX_DIM, ModelSpec, TableKind, hash_feature, hash_id};
use serde::Serialize;

use crate::inflight::InFlight;
use crate::scan::ItemScan;
use crate::store::{MAX_WIDTH, RowStore, StoredRow, Values};

/// Candidates the scan hands to the exact re-rank of a top-k, by default.
pub const DEFAULT_CANDIDATES: usize = 256;
/// Most rows per table a header's counts may reserve room for ahead of the
/// rows themselves (beyond it tables grow as rows arrive).
const MAX_RESERVED_ROWS: usize = 1 << 24;

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
    pub watermark: BTreeMap<String, i64>,
    /// Topic offset of the full snapshot the chain starts from.
    pub chain_start_offset: i64,
    /// Rows per table.
    pub rows: BTreeMap<String, usize>,
    /// The trainer's session gap (ms): a user's session offset applies to a
    /// request at most this long after the user's last update.
    pub session_gap_ms: i64,
    /// Progressive metrics when the version was published.
    pub metrics: SnapshotMetrics,
    /// When the newest applied snapshot is a rollback's full snapshot: the
    /// version whose parameters it holds again.
    pub rollback_to: Option<u64>,
}

/// One item of a top-k answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    /// The item's id.
    pub item: String,
    /// The head's prediction for it.
    pub score: f32,
}

/// The parameters of one snapshot version, ready to score.
#[derive(Debug, Clone, PartialEq)]
pub struct ServingModel {
    info: VersionInfo,
    spec: ModelSpec,
    globals: [f32; 2],
    tables: [RowStore; 3],
    scan: ItemScan,
    candidates: usize,
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
    /// An item row without its id, or another row with one.
    #[error("row {key:#018x} of table {table:?} has a missing or unexpected id string")]
    Id {
        /// Table.
        table: TableKind,
        /// Key.
        key: u64,
    },
    /// A spec this subscriber cannot serve.
    #[error("the snapshot's model spec is invalid: {0}")]
    Spec(String),
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

    /// A row's parameters, laid out as [`freshet_core::RowLayout`] says.
    pub fn row(&self, table: TableKind, key: u64) -> Option<Vec<f32>> {
        self.tables[table.index()].get(key).map(|row| row.values().to_vec())
    }

    /// When a user's row was last updated (trainer clock, ms).
    pub fn user_updated_ms(&self, user: &str) -> Option<i64> {
        self.tables[TableKind::User.index()].get(hash_id(user)).map(|row| row.updated_ms)
    }

    /// Every row of a table as (key, item id, parameters), in key order.
    pub fn rows(&self, table: TableKind) -> impl Iterator<Item = (u64, Option<&str>, Vec<f32>)> {
        let store = &self.tables[table.index()];
        store.keys().map(move |(key, position)| {
            let id = table.keeps_ids().then(|| store.id(position));
            (key, id, store.row(position).values().to_vec())
        })
    }

    /// Bytes of heap the model's rows, indexes and scan index take (pages a
    /// newer version shares with this one are counted in both).
    pub fn heap_bytes(&self) -> usize {
        self.tables.iter().map(RowStore::bytes).sum::<usize>() + self.scan.bytes()
    }

    /// The terms of `head`'s score for `user` in `context` that do not depend
    /// on the item, leaving the query vector in `vector`.
    fn query(&self, head: Head, user: &str, context: &ScoreContext<'_>, vector: &mut [f32]) -> QueryTerms {
        let gap = self.info.session_gap_ms;
        let user = self.tables[TableKind::User.index()].get(hash_id(user));
        let user = user.as_ref().map(|row| UserTerms::new(row.values(), context.session_active(row.updated_ms, gap)));
        let features = &self.tables[TableKind::Feature.index()];
        let rows: Vec<StoredRow> = context
            .features
            .iter()
            .filter(|_| self.spec.context_features)
            .filter_map(|(name, value)| features.get(hash_feature(name, value)))
            .collect();
        score::query(head, self.globals[head.index()], user, rows.iter().map(StoredRow::values), vector)
    }

    /// The head's prediction for `user` and `item` in `context` (features,
    /// time): what the trainer predicts at this version, bit for bit. Unknown
    /// ids and feature values score with zero parameters, as in training.
    pub fn score(&self, head: Head, user: &str, item: &str, context: &ScoreContext<'_>) -> f32 {
        let mut vector = [0.0f32; MAX_DIM];
        let vector = &mut vector[..self.spec.dim];
        let terms = self.query(head, user, context, vector);
        let item = self.tables[TableKind::Item.index()].get(hash_id(item));
        head.predict(score::item_score(&terms, vector, item.as_ref().map(StoredRow::values)), &self.spec)
    }

    /// The head's prediction for each of `items`, in order: [`Self::score`]
    /// per item, with the user's and the features' part computed once.
    pub fn rank<S: AsRef<str>>(&self, head: Head, user: &str, items: &[S], context: &ScoreContext<'_>) -> Vec<f32> {
        let mut vector = [0.0f32; MAX_DIM];
        let vector = &mut vector[..self.spec.dim];
        let terms = self.query(head, user, context, vector);
        let table = &self.tables[TableKind::Item.index()];
        items
            .iter()
            .map(|item| {
                let row = table.get(hash_id(item.as_ref()));
                head.predict(score::item_score(&terms, vector, row.as_ref().map(StoredRow::values)), &self.spec)
            })
            .collect()
    }

    /// The `k` best items for `user` in `context` by the head's raw score
    /// (ties by item id), excluding `exclude` (item ids), with their
    /// predictions. A scan of the quantized item index picks the best
    /// candidates (`max(k, top_k_candidates)`, 256 by default), which are
    /// scored exactly: when the catalog has no more items than that, the
    /// answer is exact.
    pub fn top_k(
        &self,
        head: Head,
        user: &str,
        k: usize,
        context: &ScoreContext<'_>,
        exclude: &HashSet<String>,
    ) -> Vec<Recommendation> {
        if k == 0 {
            return Vec::new();
        }
        let mut vector = [0.0f32; MAX_DIM];
        let vector = &mut vector[..self.spec.dim];
        let terms = self.query(head, user, context, vector);
        let items = &self.tables[TableKind::Item.index()];
        let excluded = excluded_positions(items, exclude);
        let candidates = self.scan.candidates(head, terms.item_bias_weight, vector, k.max(self.candidates), &excluded);
        self.best(&terms, vector, candidates.into_iter(), k)
    }

    /// [`Self::top_k`] by an exact f32 scan of every item: the reference
    /// its recall is measured against, and what it returns for catalogs no
    /// larger than its candidate count.
    pub fn top_k_exact(
        &self,
        head: Head,
        user: &str,
        k: usize,
        context: &ScoreContext<'_>,
        exclude: &HashSet<String>,
    ) -> Vec<Recommendation> {
        let mut vector = [0.0f32; MAX_DIM];
        let vector = &mut vector[..self.spec.dim];
        let terms = self.query(head, user, context, vector);
        let items = &self.tables[TableKind::Item.index()];
        let excluded = excluded_positions(items, exclude);
        let live = (0..items.slots() as u32).filter(|&p| self.scan.is_live(p) && excluded.binary_search(&p).is_err());
        self.best(&terms, vector, live, k)
    }

    /// The `k` best of `positions` by exact raw score, ties by item id
    /// (looked up only for ties).
    fn best(
        &self,
        terms: &QueryTerms,
        vector: &[f32],
        positions: impl Iterator<Item = u32>,
        k: usize,
    ) -> Vec<Recommendation> {
        let items = &self.tables[TableKind::Item.index()];
        let mut row = [0.0f32; MAX_WIDTH];
        let row = &mut row[..items.width()];
        let mut scored: Vec<(f32, u32)> = positions
            .map(|position| {
                items.read(position, row);
                (score::item_score(terms, vector, Some(row)), position)
            })
            .collect();
        let by_rank =
            |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then_with(|| items.id(a.1).cmp(items.id(b.1)));
        if scored.len() > k {
            scored.select_nth_unstable_by(k, by_rank);
            scored.truncate(k);
        }
        scored.sort_unstable_by(by_rank);
        scored
            .into_iter()
            .map(|(raw, position)| Recommendation {
                item: items.id(position).to_owned(),
                score: terms.head.predict(raw, &self.spec),
            })
            .collect()
    }

    /// Sets how many candidates a top-k scores exactly (at least `k`).
    pub fn set_top_k_candidates(&mut self, candidates: usize) {
        self.candidates = candidates.max(1);
    }
}

/// A model version under construction from a snapshot's chunks.
#[derive(Debug)]
pub struct Builder {
    model: ServingModel,
    header: SnapshotHeader,
    /// For a full snapshot applied over the served version: which row
    /// positions it set, per table (the others are removed at the end).
    seen: Option<[Vec<u64>; 3]>,
    /// Requests to stand aside for, every [`ROWS_BETWEEN_PAUSES`] rows.
    in_flight: Option<InFlight>,
}

/// Rows a builder applies between looks at the requests in flight (~50 µs).
const ROWS_BETWEEN_PAUSES: usize = 32;

impl Builder {
    /// Stands aside while `in_flight` requests fill the cores, between
    /// every few rows (see [`InFlight`]).
    pub(crate) fn standing_aside_for(mut self, in_flight: InFlight) -> Self {
        self.in_flight = Some(in_flight);
        self
    }

    /// Starts the version of full snapshot `header`. Given the version
    /// served (`base`) with the same spec, only what differs is written, so
    /// the new version shares every unchanged page with it.
    pub fn full(header: &SnapshotHeader, base: Option<&ServingModel>, candidates: usize) -> Result<Self, ApplyError> {
        header.spec.check().map_err(|error| ApplyError::Spec(error.to_string()))?;
        if header.spec.shards > 1 {
            // One chain holds one shard's rows: serving it alone would score
            // every other shard's users and items as unknown.
            return Err(ApplyError::Spec(format!(
                "model.shards = {}: this chain holds shard {} only, and following every shard's chain is not \
                 built yet (docs/scaling.md)",
                header.spec.shards, header.shard
            )));
        }
        let (model, seen) = match base.filter(|base| base.spec == header.spec) {
            Some(base) => (ServingModel { candidates: candidates.max(1), ..base.clone() }, Some(Default::default())),
            None => {
                let spec = header.spec.clone();
                let mut tables = TableKind::ALL.map(|table| RowStore::new(&spec, table));
                for (table, rows) in tables.iter_mut().zip(header.rows) {
                    // The counts are not checked before the commit: a damaged header reserves little.
                    table.reserve(usize::try_from(rows).unwrap_or(0).min(MAX_RESERVED_ROWS));
                }
                let model = ServingModel {
                    info: info(header, 0),
                    scan: ItemScan::new(spec.dim),
                    spec,
                    globals: header.globals,
                    tables,
                    candidates: candidates.max(1),
                };
                (model, None)
            }
        };
        Ok(Builder { model, header: header.clone(), seen, in_flight: None })
    }

    /// Starts the version of delta `header` on `base`, the version it names.
    pub fn delta(header: &SnapshotHeader, base: &ServingModel) -> Result<Self, ApplyError> {
        let base_version = match header.kind {
            SnapshotKind::Delta { base_version } => base_version,
            SnapshotKind::Full => u64::MAX,
        };
        if base_version != base.version() || header.spec != base.spec {
            return Err(ApplyError::Mismatch {
                version: header.version,
                base: base_version,
                current: base.version(),
                spec_matches: header.spec == base.spec,
            });
        }
        Ok(Builder { model: base.clone(), header: header.clone(), seen: None, in_flight: None })
    }

    /// Applies one chunk: tombstones, then rows. On error the version is
    /// not usable (drop the builder); the model served is untouched.
    pub fn apply(&mut self, chunk: &SnapshotChunk) -> Result<(), ApplyError> {
        let rows = chunk.rows.iter().map(|row| Incoming {
            table: row.table,
            key: row.key,
            id: row.id.as_deref(),
            updated_ms: row.updated_ms,
            values: Values::Decoded(&row.values),
        });
        self.apply_rows(rows, chunk.tombstones.iter().copied())
    }

    /// Applies one chunk read in place from its message (no row is copied
    /// unless it changes the model), as [`Self::apply`] does.
    pub fn apply_view(&mut self, chunk: &ChunkView<'_>) -> Result<(), ApplyError> {
        let rows = chunk.rows().map(|row| Incoming {
            table: row.table,
            key: row.key,
            id: row.id,
            updated_ms: row.updated_ms,
            values: Values::InPlace(row.values),
        });
        self.apply_rows(rows, chunk.tombstones())
    }

    fn apply_rows<'r>(
        &mut self,
        rows: impl Iterator<Item = Incoming<'r>> + Clone,
        tombstones: impl Iterator<Item = SnapshotTombstone>,
    ) -> Result<(), ApplyError> {
        for row in rows.clone() {
            row.check(&self.model.spec)?;
        }
        for tombstone in tombstones {
            if let Some(position) = self.model.tables[tombstone.table.index()].remove(tombstone.key)
                && tombstone.table == TableKind::Item
            {
                self.model.scan.clear(position);
            }
        }
        for (n, row) in rows.enumerate() {
            if n % ROWS_BETWEEN_PAUSES == ROWS_BETWEEN_PAUSES - 1
                && let Some(in_flight) = &self.in_flight
            {
                let _ = in_flight.stand_aside();
            }
            let table = row.table.index();
            let (position, changed) = self.model.tables[table].set(row.key, row.id, row.updated_ms, row.values);
            if changed && row.table == TableKind::Item {
                let stored = self.model.tables[table].row(position);
                self.model.scan.set(position, stored.values());
            }
            if let Some(seen) = &mut self.seen {
                let words = &mut seen[table];
                let (word, bit) = (position as usize / 64, position % 64);
                if words.len() <= word {
                    words.resize(word + 1, 0);
                }
                words[word] |= 1 << bit;
            }
        }
        Ok(())
    }

    /// The finished version, chained at `chain_start_offset`.
    pub fn finish(mut self, chain_start_offset: i64) -> ServingModel {
        if let Some(seen) = self.seen.take() {
            // A full snapshot replaces the model: rows it did not carry go.
            for (table, seen) in TableKind::ALL.into_iter().zip(seen) {
                let store = &self.model.tables[table.index()];
                let stale: Vec<u64> = store
                    .keys()
                    .filter(|&(_, position)| {
                        seen.get(position as usize / 64).is_none_or(|word| word & (1 << (position % 64)) == 0)
                    })
                    .map(|(key, _)| key)
                    .collect();
                for key in stale {
                    if let Some(position) = self.model.tables[table.index()].remove(key)
                        && table == TableKind::Item
                    {
                        self.model.scan.clear(position);
                    }
                }
            }
        }
        let mut model = self.model;
        for table in &mut model.tables {
            table.seal();
        }
        model.globals = self.header.globals;
        model.info = info(&self.header, chain_start_offset);
        model.info.rows =
            TableKind::ALL.iter().map(|table| (table.name().to_owned(), model.tables[table.index()].len())).collect();
        model
    }
}

/// The row positions of the excluded item ids, sorted (for binary search).
fn excluded_positions(items: &RowStore, exclude: &HashSet<String>) -> Vec<u32> {
    let mut positions: Vec<u32> = exclude.iter().filter_map(|id| items.position(hash_id(id))).collect();
    positions.sort_unstable();
    positions
}

fn info(header: &SnapshotHeader, chain_start_offset: i64) -> VersionInfo {
    VersionInfo {
        model: header.model.clone(),
        version: header.version,
        full: header.kind == SnapshotKind::Full,
        created_ms: header.created_ms,
        newest_event_ms: header.watermark.newest_event_ms,
        watermark: freshet_core::offsets::by_name(&header.watermark.offsets),
        chain_start_offset,
        rows: BTreeMap::new(),
        session_gap_ms: header.session_gap_ms,
        metrics: header.metrics,
        rollback_to: header.rollback_to,
    }
}

/// A row a snapshot sets.
#[derive(Debug, Clone, Copy)]
struct Incoming<'r> {
    table: TableKind,
    key: u64,
    id: Option<&'r str>,
    updated_ms: i64,
    values: Values<'r>,
}

impl Incoming<'_> {
    fn check(&self, spec: &ModelSpec) -> Result<(), ApplyError> {
        let (table, key) = (self.table, self.key);
        let width = spec.row_width(table);
        if self.values.len() != width {
            return Err(ApplyError::RowWidth { table, key, found: self.values.len(), expected: width });
        }
        if !self.values.all_finite() {
            return Err(ApplyError::NonFinite { table, key });
        }
        if table.keeps_ids() != self.id.is_some() {
            return Err(ApplyError::Id { table, key });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use freshet_core::model::sigmoid;
    use freshet_core::snapshot::{SnapshotRow, SnapshotTombstone};
    use freshet_core::{Features, RowLayout};

    use super::*;
    use crate::fixtures::header;

    /// A range wide enough that no score below is clipped.
    fn spec() -> ModelSpec {
        ModelSpec { dim: 8, rating_min: 1.0, rating_max: 10.0, context_features: true, shards: 1 }
    }

    /// A row of `spec()`: users `[b_rating, b_click, c, o, p…]`, others `[b_rating, b_click, v…]`.
    fn row(table: TableKind, id: &str, scalars: &[f32], factor: f32) -> SnapshotRow {
        let mut values = scalars.to_vec();
        values.resize(RowLayout::new(table, 8).width(), factor);
        let id_kept = table.keeps_ids().then(|| id.to_owned());
        let key = if table == TableKind::Feature { hash_id(&format!("device={id}")) } else { hash_id(id) };
        SnapshotRow { table, key, id: id_kept, updated_ms: 1_000, values }
    }

    fn counts(rows: &[SnapshotRow]) -> [u64; 3] {
        TableKind::ALL.map(|table| rows.iter().filter(|row| row.table == table).count() as u64)
    }

    fn build(
        base: Option<&ServingModel>,
        version: u64,
        kind: SnapshotKind,
        rows: Vec<SnapshotRow>,
        removed: &[&str],
    ) -> ServingModel {
        let tombstones: Vec<SnapshotTombstone> =
            removed.iter().map(|id| SnapshotTombstone { table: TableKind::Item, key: hash_id(id) }).collect();
        let header = header(version, kind, spec(), counts(&rows), tombstones.len() as u64);
        let mut builder = match (kind, base) {
            (SnapshotKind::Full, base) => Builder::full(&header, base, DEFAULT_CANDIDATES).expect("valid"),
            (SnapshotKind::Delta { .. }, Some(base)) => Builder::delta(&header, base).expect("on its base"),
            (SnapshotKind::Delta { .. }, None) => panic!("a delta needs a base"),
        };
        builder.apply(&SnapshotChunk { version, index: 0, rows, tombstones }).expect("applies");
        builder.finish(0)
    }

    fn model() -> ServingModel {
        let rows = vec![
            row(TableKind::User, "alice", &[0.5, 0.0, 0.0, 0.0], 0.125),
            row(TableKind::User, "bob", &[0.5, 0.0, 1.0, 0.25], 0.125),
            row(TableKind::Item, "a", &[0.125, 0.0], 1.0),
            row(TableKind::Item, "b", &[0.75, 0.5], 0.0),
            row(TableKind::Item, "c", &[-0.5, 0.0], 2.0),
            row(TableKind::Feature, "ios", &[0.25, -1.0], 0.25),
        ];
        build(None, 1, SnapshotKind::Full, rows, &[])
    }

    fn ids(answer: Vec<Recommendation>) -> Vec<String> {
        answer.into_iter().map(|r| r.item).collect()
    }

    #[test]
    fn scores_are_the_shared_scoring_function_with_features_and_the_session_rule() {
        let model = model();
        let none = ScoreContext::none();
        // 3 + 0.5 + (1 + 0)·0.125 + 8·(0.125·1) = 4.625
        assert_eq!(model.score(Head::Rating, "alice", "a", &none), 4.625);
        // Bob: session offset 0.25 and scale 1: 3 + 0.5 + 0.25 + 2·0.125 + 1 = 5.0.
        assert_eq!(model.score(Head::Rating, "bob", "a", &none), 5.0);
        let ios = Features::from([("device".to_owned(), "ios".to_owned())]);
        let with_ios = ScoreContext::new(&ios);
        // The feature's click weight −1 and factors 0.25: σ((0 + 0 − 1) + 0 + 8·(0.375·1)) = σ(2).
        assert_eq!(model.score(Head::Click, "alice", "a", &with_ios), sigmoid(2.0));
        assert_eq!(model.score(Head::Click, "alice", "a", &none), sigmoid(1.0));
        let unknown = Features::from([("device".to_owned(), "web".to_owned())]);
        assert_eq!(
            model.score(Head::Click, "alice", "a", &ScoreContext::new(&unknown)),
            sigmoid(1.0),
            "unknown: zeros"
        );
        // Bob's session ended an hour and a millisecond after his last update: no offset.
        let later = none.at(1_000 + 3_600_001);
        assert_eq!(model.score(Head::Rating, "bob", "a", &later), 3.0 + 0.5 + 0.25 + 1.0);
        assert_eq!(model.score(Head::Rating, "bob", "a", &none.at(1_000 + 3_600_000)), 5.0);
        // Unknown user and item: the global bias (and the item's bias).
        assert_eq!(model.score(Head::Rating, "nobody", "nothing", &none), 3.0);
        assert_eq!(model.score(Head::Rating, "nobody", "b", &none), 3.75);
    }

    #[test]
    fn rank_is_score_per_item_and_top_k_is_the_exact_order() {
        let model = model();
        let ios = Features::from([("device".to_owned(), "ios".to_owned())]);
        for context in [ScoreContext::none(), ScoreContext::new(&ios)] {
            for head in Head::ALL {
                for user in ["alice", "bob", "stranger"] {
                    let items = ["a", "b", "c", "missing"];
                    let ranked = model.rank(head, user, &items, &context);
                    for (item, score) in items.iter().zip(&ranked) {
                        assert_eq!(score.to_bits(), model.score(head, user, item, &context).to_bits());
                    }
                    let top = model.top_k(head, user, 3, &context, &HashSet::new());
                    assert_eq!(top.len(), 3);
                    assert!(top.windows(2).all(|w| w[0].score >= w[1].score), "{top:?}");
                    for r in &top {
                        assert_eq!(r.score.to_bits(), model.score(head, user, &r.item, &context).to_bits());
                    }
                }
            }
        }
        // Alice's raw scores: c 3 + 0.5 − 0.5 + 2 = 5, a 4.625, b 4.25 (c and a clip alike).
        assert_eq!(ids(model.top_k(Head::Rating, "alice", 3, &ScoreContext::none(), &HashSet::new())), ["c", "a", "b"]);
        let exclude = HashSet::from(["c".to_owned()]);
        assert_eq!(ids(model.top_k(Head::Rating, "alice", 5, &ScoreContext::none(), &exclude)), ["a", "b"]);
        assert_eq!(ids(model.top_k(Head::Rating, "stranger", 2, &ScoreContext::none(), &HashSet::new())), ["b", "a"]);
        assert!(model.top_k(Head::Rating, "alice", 0, &ScoreContext::none(), &HashSet::new()).is_empty());
    }

    #[test]
    fn one_shards_chain_of_a_sharded_model_is_refused_not_served_as_the_model() {
        let mut sharded = header(1, SnapshotKind::Full, ModelSpec { shards: 2, ..spec() }, [0, 0, 0], 0);
        sharded.shard = 1;
        let error = Builder::full(&sharded, None, DEFAULT_CANDIDATES).map(|_| ()).expect_err("refused");
        assert!(matches!(&error, ApplyError::Spec(message) if message.contains("model.shards = 2")), "{error}");
    }

    #[test]
    fn deltas_set_and_remove_rows_and_the_served_version_never_changes() {
        let served = model();
        let delta = build(
            Some(&served),
            2,
            SnapshotKind::Delta { base_version: 1 },
            vec![row(TableKind::Item, "d", &[2.0, 0.0], 0.0)],
            &["a", "b"],
        );
        assert_eq!(delta.version(), 2);
        assert_eq!(delta.rows(TableKind::Item).count(), 2);
        assert!(delta.row(TableKind::Item, hash_id("a")).is_none());
        assert_eq!(ids(delta.top_k(Head::Rating, "stranger", 1, &ScoreContext::none(), &HashSet::new())), ["d"]);
        assert_eq!(served.version(), 1);
        assert_eq!(served.rows(TableKind::Item).count(), 3, "the served version is untouched");
        assert_eq!(served, model(), "every value of the served version is as it was");
        assert_eq!(ids(served.top_k(Head::Rating, "stranger", 1, &ScoreContext::none(), &HashSet::new())), ["b"]);
        assert_eq!(delta.info().rows.get("item"), Some(&2));
    }

    #[test]
    fn a_full_snapshot_over_the_served_version_replaces_it() {
        let served = model();
        let rows = vec![
            row(TableKind::User, "alice", &[0.5, 0.0, 0.0, 0.0], 0.125),
            row(TableKind::Item, "z", &[1.0, 0.0], 0.5),
        ];
        let fresh = build(None, 2, SnapshotKind::Full, rows.clone(), &[]);
        let over = build(Some(&served), 2, SnapshotKind::Full, rows, &[]);
        for table in TableKind::ALL {
            let list = |m: &ServingModel| {
                m.rows(table).map(|(k, id, v)| (k, id.map(str::to_owned), v.to_vec())).collect::<Vec<_>>()
            };
            assert_eq!(list(&over), list(&fresh), "{table:?}");
        }
        assert_eq!(ids(over.top_k(Head::Rating, "alice", 5, &ScoreContext::none(), &HashSet::new())), ["z"]);
    }

    #[test]
    fn bad_rows_and_mismatched_deltas_are_refused() {
        let served = model();
        let wrong_base = header(4, SnapshotKind::Delta { base_version: 3 }, spec(), [0; 3], 0);
        assert!(matches!(Builder::delta(&wrong_base, &served), Err(ApplyError::Mismatch { .. })));
        let next = header(2, SnapshotKind::Delta { base_version: 1 }, spec(), [1, 0, 0], 0);
        let mut builder = Builder::delta(&next, &served).expect("on its base");
        let mut nan = row(TableKind::User, "x", &[f32::NAN], 0.0);
        let chunk = |row: SnapshotRow| SnapshotChunk { version: 2, index: 0, rows: vec![row], tombstones: vec![] };
        assert!(matches!(builder.apply(&chunk(nan.clone())), Err(ApplyError::NonFinite { .. })));
        nan.values.pop();
        assert!(matches!(builder.apply(&chunk(nan)), Err(ApplyError::RowWidth { .. })));
        let mut anonymous = row(TableKind::Item, "y", &[0.0, 0.0], 0.0);
        anonymous.id = None;
        assert!(matches!(builder.apply(&chunk(anonymous)), Err(ApplyError::Id { .. })));
    }
}
