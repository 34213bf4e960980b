//! The serving model: the parameters of one snapshot version, scored with
//! the trainer's own scoring function ([`freshet_core::score`]).
//!
//! A version never changes once served. The next one is built by a
//! [`Builder`] from a clone of it (sharing every page) as a snapshot's
//! chunks arrive, and served once the snapshot completes intact.
//!
//! A model of `S > 1` shards is served as the union of its shards' chains:
//! each shard's snapshots carry the rows it owns ([`freshet_core::shard_of`]
//! of the row's key) and build that shard's part of the model; a lookup
//! goes to the part of the key's owner, the global biases come from shard
//! 0's, and a top-k takes candidates from every part's item index before the
//! exact re-rank. An unsharded model is the case `S = 1`: one part.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use freshet_core::score::{self, QueryTerms, ScoreContext, UserTerms};
use freshet_core::snapshot::{
    ChunkView, SnapshotChunk, SnapshotHeader, SnapshotKind, SnapshotMetrics, SnapshotTombstone,
};
use freshet_core::{Head, MAX_DIM, ModelSpec, TableKind, hash_feature, hash_id, shard_of};
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
///
/// For a model of more than one shard the fields describe the stalest
/// shard, the one with the lowest version (the model is as fresh as it):
/// `version`, `full`, `created_ms`, `chain_start_offset`, `metrics` and
/// `rollback_to` are that shard's, `newest_event_ms` is the lowest over
/// the shards, `watermark` is the union of the shards' (their input
/// partitions are disjoint) and `rows` their sum; [`VersionInfo::shards`]
/// gives each shard's own.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
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
    /// Each shard's part, by shard (one entry for an unsharded model).
    pub shards: Vec<ShardVersion>,
}

/// The version one shard's chain is at, in a served model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShardVersion {
    /// The shard (its chain is partition `shard` of the snapshot topic).
    pub shard: u32,
    /// Its version.
    pub version: u64,
    /// Whether its newest applied snapshot was full.
    pub full: bool,
    /// When its publisher built it (ms since the epoch).
    pub created_ms: i64,
    /// Newest event time its rows reflect (ms since the epoch).
    pub newest_event_ms: i64,
    /// Topic offset of the full snapshot its chain starts from.
    pub chain_start_offset: i64,
    /// Its rows per table.
    pub rows: BTreeMap<String, usize>,
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
    /// Part `k` holds the rows shard `k` owns; `None` until its first full
    /// snapshot applied.
    parts: Vec<Option<Arc<Part>>>,
    candidates: usize,
}

/// One shard's rows at its newest applied snapshot.
#[derive(Debug, Clone, PartialEq)]
struct Part {
    /// Its own version and what it covers (`shards` empty).
    info: VersionInfo,
    globals: [f32; 2],
    tables: [RowStore; 3],
    scan: ItemScan,
}

impl Part {
    fn new(spec: &ModelSpec, header: &SnapshotHeader) -> Self {
        let mut tables = TableKind::ALL.map(|table| RowStore::new(spec, table));
        for (table, rows) in tables.iter_mut().zip(header.rows) {
            // The counts are not checked before the commit: a damaged header reserves little.
            table.reserve(usize::try_from(rows).unwrap_or(0).min(MAX_RESERVED_ROWS));
        }
        Part { info: info(header, 0), globals: header.globals, tables, scan: ItemScan::new(spec.dim) }
    }

    fn table(&self, table: TableKind) -> &RowStore {
        &self.tables[table.index()]
    }

    fn shard_version(&self, shard: u32) -> ShardVersion {
        let info = &self.info;
        ShardVersion {
            shard,
            version: info.version,
            full: info.full,
            created_ms: info.created_ms,
            newest_event_ms: info.newest_event_ms,
            chain_start_offset: info.chain_start_offset,
            rows: info.rows.clone(),
        }
    }
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
    /// A row (or tombstone) in the chain of a shard that does not own it.
    #[error(
        "row {key:#018x} of table {table:?} is owned by shard {owner}, not by shard {shard} whose chain carries it"
    )]
    NotOwned {
        /// Table.
        table: TableKind,
        /// Key.
        key: u64,
        /// The shard that owns it.
        owner: u32,
        /// The shard whose snapshot carried it.
        shard: u32,
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
        /// The version of the delta's shard in the model (0: none yet).
        current: u64,
        /// Whether the specs matched.
        spec_matches: bool,
    },
}

impl ServingModel {
    /// A model of `spec` with no part yet.
    fn empty(spec: ModelSpec, candidates: usize) -> Self {
        let parts = vec![None; spec.shards.max(1) as usize];
        ServingModel { info: VersionInfo::default(), spec, parts, candidates: candidates.max(1) }
    }

    /// The same model with shard `shard`'s part replaced by `part`.
    fn with_part(&self, shard: usize, part: Part) -> Self {
        let mut model = self.clone();
        model.parts[shard] = Some(Arc::new(part));
        model.info = compose_info(&model.parts);
        model
    }

    /// The version and what it covers.
    pub fn info(&self) -> &VersionInfo {
        &self.info
    }

    /// The version: for a sharded model, the lowest of its shards' versions
    /// (see [`VersionInfo`]).
    pub fn version(&self) -> u64 {
        self.info.version
    }

    /// The version of shard `shard`'s part (`None` before its first full
    /// snapshot, or past the shard count).
    pub fn shard_version(&self, shard: u32) -> Option<u64> {
        self.parts.get(shard as usize)?.as_ref().map(|part| part.info.version)
    }

    /// The shards whose first full snapshot has not applied yet: their rows
    /// score as unknown. Empty for every model a [`crate::Subscriber`] serves.
    pub fn missing_shards(&self) -> Vec<u32> {
        (0..self.parts.len() as u32).filter(|&shard| self.parts[shard as usize].is_none()).collect()
    }

    /// The model's shape.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Global bias per head (shard 0's).
    pub fn globals(&self) -> [f32; 2] {
        self.parts[0].as_ref().map_or([0.0; 2], |part| part.globals)
    }

    /// The parts there are, with their shard.
    fn present(&self) -> impl Iterator<Item = (usize, &Part)> {
        present(&self.parts)
    }

    /// The part holding `key`'s rows: its owner's.
    fn part(&self, key: u64) -> Option<&Part> {
        self.parts[shard_of(key, self.spec.shards) as usize].as_deref()
    }

    fn get(&self, table: TableKind, key: u64) -> Option<StoredRow> {
        self.part(key)?.table(table).get(key)
    }

    /// A row's parameters, laid out as [`freshet_core::RowLayout`] says.
    pub fn row(&self, table: TableKind, key: u64) -> Option<Vec<f32>> {
        self.get(table, key).map(|row| row.values().to_vec())
    }

    /// When a user's row was last updated (trainer clock, ms).
    pub fn user_updated_ms(&self, user: &str) -> Option<i64> {
        self.get(TableKind::User, hash_id(user)).map(|row| row.updated_ms)
    }

    /// Every row of a table as (key, item id, parameters): shard by shard,
    /// in key order within each.
    pub fn rows(&self, table: TableKind) -> impl Iterator<Item = (u64, Option<&str>, Vec<f32>)> {
        self.present().flat_map(move |(_, part)| {
            let store = part.table(table);
            store.keys().map(move |(key, position)| {
                let id = table.keeps_ids().then(|| store.id(position));
                (key, id, store.row(position).values().to_vec())
            })
        })
    }

    /// Bytes of heap the model's rows, indexes and scan index take (pages a
    /// newer version shares with this one are counted in both).
    pub fn heap_bytes(&self) -> usize {
        let part =
            |(_, part): (usize, &Part)| part.tables.iter().map(RowStore::bytes).sum::<usize>() + part.scan.bytes();
        self.present().map(part).sum()
    }

    /// The terms of `head`'s score for `user` in `context` that do not depend
    /// on the item, leaving the query vector in `vector`.
    fn query(&self, head: Head, user: &str, context: &ScoreContext<'_>, vector: &mut [f32]) -> QueryTerms {
        let key = hash_id(user);
        let user = self.part(key).and_then(|part| {
            let row = part.table(TableKind::User).get(key)?;
            Some((row, part.info.session_gap_ms))
        });
        let user =
            user.as_ref().map(|(row, gap)| UserTerms::new(row.values(), context.session_active(row.updated_ms, *gap)));
        let rows: Vec<StoredRow> = context
            .features
            .iter()
            .filter(|_| self.spec.context_features)
            .filter_map(|(name, value)| self.get(TableKind::Feature, hash_feature(name, value)))
            .collect();
        score::query(head, self.globals()[head.index()], user, rows.iter().map(StoredRow::values), vector)
    }

    /// The head's prediction for `user` and `item` in `context` (features,
    /// time): what the trainer predicts at this version, bit for bit. Unknown
    /// ids and feature values score with zero parameters, as in training.
    pub fn score(&self, head: Head, user: &str, item: &str, context: &ScoreContext<'_>) -> f32 {
        let mut vector = [0.0f32; MAX_DIM];
        let vector = &mut vector[..self.spec.dim];
        let terms = self.query(head, user, context, vector);
        let item = self.get(TableKind::Item, hash_id(item));
        head.predict(score::item_score(&terms, vector, item.as_ref().map(StoredRow::values)), &self.spec)
    }

    /// The head's prediction for each of `items`, in order: [`Self::score`]
    /// per item, with the user's and the features' part computed once.
    pub fn rank<S: AsRef<str>>(&self, head: Head, user: &str, items: &[S], context: &ScoreContext<'_>) -> Vec<f32> {
        let mut vector = [0.0f32; MAX_DIM];
        let vector = &mut vector[..self.spec.dim];
        let terms = self.query(head, user, context, vector);
        items
            .iter()
            .map(|item| {
                let row = self.get(TableKind::Item, hash_id(item.as_ref()));
                head.predict(score::item_score(&terms, vector, row.as_ref().map(StoredRow::values)), &self.spec)
            })
            .collect()
    }

    /// The `k` best items for `user` in `context` by the head's raw score
    /// (ties by item id), excluding `exclude` (item ids), with their
    /// predictions. A scan of the quantized item index picks the best
    /// candidates (`max(k, top_k_candidates)`, 256 by default; as many from
    /// each shard's items), which are scored exactly: when the catalog has
    /// no more items than that, the answer is exact.
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
        let count = k.max(self.candidates);
        let mut candidates = Vec::new();
        for (shard, part) in self.present() {
            let excluded = excluded_positions(part.table(TableKind::Item), exclude);
            let found = part.scan.candidates(head, terms.item_bias_weight, vector, count, &excluded);
            candidates.extend(found.into_iter().map(|position| (shard, position)));
        }
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
        let live = self.present().flat_map(|(shard, part)| {
            let items = part.table(TableKind::Item);
            let excluded = excluded_positions(items, exclude);
            (0..items.slots() as u32)
                .filter(move |&p| part.scan.is_live(p) && excluded.binary_search(&p).is_err())
                .map(move |position| (shard, position))
        });
        self.best(&terms, vector, live, k)
    }

    /// The `k` best of `positions` (shard, row position) by exact raw score,
    /// ties by item id (looked up only for ties).
    fn best(
        &self,
        terms: &QueryTerms,
        vector: &[f32],
        positions: impl Iterator<Item = (usize, u32)>,
        k: usize,
    ) -> Vec<Recommendation> {
        let items = |shard: usize| self.parts[shard].as_deref().map(|part| part.table(TableKind::Item));
        let id = |(shard, position): (usize, u32)| items(shard).map_or("", |items| items.id(position));
        let mut row = [0.0f32; MAX_WIDTH];
        let width = self.present().next().map_or(0, |(_, part)| part.table(TableKind::Item).width());
        let row = &mut row[..width];
        let mut scored: Vec<(f32, (usize, u32))> = positions
            .filter_map(|(shard, position)| {
                items(shard)?.read(position, row);
                Some((score::item_score(terms, vector, Some(row)), (shard, position)))
            })
            .collect();
        let by_rank =
            |a: &(f32, (usize, u32)), b: &(f32, (usize, u32))| b.0.total_cmp(&a.0).then_with(|| id(a.1).cmp(id(b.1)));
        if scored.len() > k {
            scored.select_nth_unstable_by(k, by_rank);
            scored.truncate(k);
        }
        scored.sort_unstable_by(by_rank);
        scored
            .into_iter()
            .map(|(raw, at)| Recommendation { item: id(at).to_owned(), score: terms.head.predict(raw, &self.spec) })
            .collect()
    }

    /// Sets how many candidates a top-k scores exactly (at least `k`).
    pub fn set_top_k_candidates(&mut self, candidates: usize) {
        self.candidates = candidates.max(1);
    }
}

/// A model version under construction from a snapshot's chunks: one
/// shard's part (the whole model when unsharded), composed with the other
/// shards' parts when it finishes.
#[derive(Debug)]
pub struct Builder {
    /// The model the part is composed into, unless a newer one of the same
    /// spec is given to [`Builder::finish_onto`].
    base: ServingModel,
    /// The header's shard.
    shard: u32,
    part: Part,
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
    /// the new version shares every unchanged page with it; for a sharded
    /// model, the other shards' parts are `base`'s (none without it).
    pub fn full(header: &SnapshotHeader, base: Option<&ServingModel>, candidates: usize) -> Result<Self, ApplyError> {
        let spec = &header.spec;
        spec.check().map_err(|error| ApplyError::Spec(error.to_string()))?;
        if header.shard >= spec.shards {
            return Err(ApplyError::Spec(format!("shard {} of a model of {} shards", header.shard, spec.shards)));
        }
        let base = match base.filter(|base| base.spec == *spec) {
            Some(base) => ServingModel { candidates: candidates.max(1), ..base.clone() },
            None => ServingModel::empty(spec.clone(), candidates),
        };
        let (part, seen) = match &base.parts[header.shard as usize] {
            Some(part) => (Part::clone(part), Some(Default::default())),
            None => (Part::new(spec, header), None),
        };
        Ok(Builder { base, shard: header.shard, part, header: header.clone(), seen, in_flight: None })
    }

    /// Starts the version of delta `header` on `base`, whose part of the
    /// delta's shard is at the version the delta names.
    pub fn delta(header: &SnapshotHeader, base: &ServingModel) -> Result<Self, ApplyError> {
        let base_version = match header.kind {
            SnapshotKind::Delta { base_version } => base_version,
            SnapshotKind::Full => u64::MAX,
        };
        let part = base.parts.get(header.shard as usize).and_then(Option::as_deref);
        let current = part.map_or(0, |part| part.info.version);
        let Some(part) = part.filter(|_| base_version == current && header.spec == base.spec) else {
            return Err(ApplyError::Mismatch {
                version: header.version,
                base: base_version,
                current,
                spec_matches: header.spec == base.spec,
            });
        };
        Ok(Builder {
            base: base.clone(),
            shard: header.shard,
            part: part.clone(),
            header: header.clone(),
            seen: None,
            in_flight: None,
        })
    }

    /// Applies one chunk: tombstones, then rows. On error the version is
    /// unusable (drop the builder); the model served is untouched.
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

    /// Whether this shard's chain may carry the row of `key`.
    fn owned(&self, table: TableKind, key: u64) -> Result<(), ApplyError> {
        let owner = shard_of(key, self.header.spec.shards);
        match owner == self.shard {
            true => Ok(()),
            false => Err(ApplyError::NotOwned { table, key, owner, shard: self.shard }),
        }
    }

    fn apply_rows<'r>(
        &mut self,
        rows: impl Iterator<Item = Incoming<'r>> + Clone,
        tombstones: impl Iterator<Item = SnapshotTombstone>,
    ) -> Result<(), ApplyError> {
        for row in rows.clone() {
            row.check(&self.header.spec)?;
            self.owned(row.table, row.key)?;
        }
        // Few per chunk: checked whole before any is applied.
        let tombstones: Vec<SnapshotTombstone> = tombstones.collect();
        for tombstone in &tombstones {
            self.owned(tombstone.table, tombstone.key)?;
        }
        let part = &mut self.part;
        for tombstone in tombstones {
            if let Some(position) = part.tables[tombstone.table.index()].remove(tombstone.key)
                && tombstone.table == TableKind::Item
            {
                part.scan.clear(position);
            }
        }
        for (n, row) in rows.enumerate() {
            if n % ROWS_BETWEEN_PAUSES == ROWS_BETWEEN_PAUSES - 1
                && let Some(in_flight) = &self.in_flight
            {
                let _ = in_flight.stand_aside();
            }
            let table = row.table.index();
            let (position, changed) = part.tables[table].set(row.key, row.id, row.updated_ms, row.values);
            if changed && row.table == TableKind::Item {
                let stored = part.tables[table].row(position);
                part.scan.set(position, stored.values());
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

    /// The finished version, chained at `chain_start_offset`, composed
    /// with the other shards' parts of the model it started from.
    pub fn finish(self, chain_start_offset: i64) -> ServingModel {
        self.finish_onto(None, chain_start_offset)
    }

    /// [`Self::finish`], composed with the other shards' parts of `current`
    /// when it has the same spec: the model served now, which other shards'
    /// snapshots may have changed while this one was being built.
    pub(crate) fn finish_onto(mut self, current: Option<&ServingModel>, chain_start_offset: i64) -> ServingModel {
        let part = &mut self.part;
        if let Some(seen) = self.seen.take() {
            // A full snapshot replaces the part: rows it did not carry go.
            for (table, seen) in TableKind::ALL.into_iter().zip(seen) {
                let store = &part.tables[table.index()];
                let stale: Vec<u64> = store
                    .keys()
                    .filter(|&(_, position)| {
                        seen.get(position as usize / 64).is_none_or(|word| word & (1 << (position % 64)) == 0)
                    })
                    .map(|(key, _)| key)
                    .collect();
                for key in stale {
                    if let Some(position) = part.tables[table.index()].remove(key)
                        && table == TableKind::Item
                    {
                        part.scan.clear(position);
                    }
                }
            }
        }
        for table in &mut part.tables {
            table.seal();
        }
        part.globals = self.header.globals;
        part.info = info(&self.header, chain_start_offset);
        part.info.rows =
            TableKind::ALL.iter().map(|table| (table.name().to_owned(), part.tables[table.index()].len())).collect();
        let base = current.filter(|current| current.spec == self.base.spec).unwrap_or(&self.base);
        let mut model = base.with_part(self.shard as usize, self.part);
        model.candidates = self.base.candidates;
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
        shards: Vec::new(),
    }
}

/// The model's [`VersionInfo`] from its parts' (see there): the stalest
/// part's, with the newest event time the lowest, the watermarks joined,
/// the rows summed and each part's own version listed.
fn compose_info(parts: &[Option<Arc<Part>>]) -> VersionInfo {
    let present = || present(parts);
    let Some((_, stalest)) = present().min_by_key(|(shard, part)| (part.info.version, *shard)) else {
        return VersionInfo::default();
    };
    let mut info = stalest.info.clone();
    info.newest_event_ms = present().map(|(_, part)| part.info.newest_event_ms).min().unwrap_or(0);
    info.watermark = present().flat_map(|(_, part)| part.info.watermark.clone()).collect();
    info.rows = TableKind::ALL
        .iter()
        .map(|table| {
            let name = table.name();
            (name.to_owned(), present().map(|(_, part)| part.info.rows.get(name).copied().unwrap_or(0)).sum())
        })
        .collect();
    info.shards = present().map(|(shard, part)| part.shard_version(shard as u32)).collect();
    info
}

/// The parts of `parts` there are, with their shard.
fn present(parts: &[Option<Arc<Part>>]) -> impl Iterator<Item = (usize, &Part)> {
    parts.iter().enumerate().filter_map(|(shard, part)| Some((shard, part.as_deref()?)))
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

    /// Rows of 24 users, 40 items and 6 feature values, with varied values.
    fn catalog() -> Vec<SnapshotRow> {
        let value = |n: usize, k: usize| ((n * 7 + k * 3) % 11) as f32 / 8.0 - 0.5;
        let mut rows = Vec::new();
        for n in 0..24 {
            let scalars = [value(n, 0), value(n, 1), 1.0 + value(n, 2) / 4.0, value(n, 3)];
            rows.push(row(TableKind::User, &format!("u{n}"), &scalars, value(n, 4)));
        }
        for n in 0..40 {
            rows.push(row(TableKind::Item, &format!("i{n}"), &[value(n, 5), value(n, 6)], value(n, 7)));
        }
        for device in ["ios", "android", "web", "tv", "car", "watch"] {
            rows.push(row(TableKind::Feature, device, &[0.25, -0.5], value(device.len(), 8)));
        }
        rows
    }

    fn sharded_spec() -> ModelSpec {
        ModelSpec { shards: 2, ..spec() }
    }

    fn shard_header(shard: u32, version: u64, kind: SnapshotKind, rows: &[SnapshotRow]) -> SnapshotHeader {
        let mut header = header(version, kind, sharded_spec(), counts(rows), 0);
        header.shard = shard;
        header.created_ms = 100 * version as i64 + i64::from(shard);
        header.watermark.newest_event_ms = 1_000 * version as i64 + i64::from(shard);
        if shard != 0 {
            // Only shard 0 owns the global biases: another shard's are not served.
            header.globals = [9.0, 9.0];
        }
        header
    }

    fn owned_by(shard: u32, rows: &[SnapshotRow]) -> Vec<SnapshotRow> {
        rows.iter().filter(|row| shard_of(row.key, 2) == shard).cloned().collect()
    }

    fn chunk(version: u64, rows: Vec<SnapshotRow>) -> SnapshotChunk {
        SnapshotChunk { version, index: 0, rows, tombstones: vec![] }
    }

    #[test]
    fn a_sharded_model_is_the_union_of_its_shards_chains_and_scores_as_the_whole_model_would() {
        let rows = catalog();
        for shard in [0, 1] {
            for table in TableKind::ALL {
                let owned = owned_by(shard, &rows).iter().filter(|row| row.table == table).count();
                assert!(owned > 0, "shard {shard} owns some {table:?} rows");
            }
        }
        let whole = build(None, 1, SnapshotKind::Full, rows.clone(), &[]);
        let mut first = Builder::full(&shard_header(1, 1, SnapshotKind::Full, &rows), None, DEFAULT_CANDIDATES)
            .expect("a full snapshot of shard 1");
        first.apply(&chunk(1, owned_by(1, &rows))).expect("applies");
        let half = first.finish(0);
        assert_eq!(half.missing_shards(), [0], "shard 0's rows are not there yet");
        let mut second = Builder::full(&shard_header(0, 1, SnapshotKind::Full, &rows), Some(&half), DEFAULT_CANDIDATES)
            .expect("a full snapshot of shard 0");
        second.apply(&chunk(1, owned_by(0, &rows))).expect("applies");
        let sharded = second.finish(0);
        assert!(sharded.missing_shards().is_empty());
        assert_eq!(sharded.globals(), whole.globals(), "shard 0's global biases");
        assert_eq!(sharded.info().rows, whole.info().rows, "the rows of both shards");
        let shards: Vec<(u32, u64)> = sharded.info().shards.iter().map(|s| (s.shard, s.version)).collect();
        assert_eq!(shards, [(0, 1), (1, 1)]);
        assert_eq!(sharded.info().newest_event_ms, 1_000, "the stalest shard's");
        for table in TableKind::ALL {
            assert_eq!(sharded.rows(table).count(), whole.rows(table).count());
            for (key, _, values) in whole.rows(table) {
                assert_eq!(sharded.row(table, key), Some(values), "{table:?} {key:#x}");
            }
        }
        let features = [("device", "ios"), ("device", "tv"), ("device", "unseen")]
            .map(|(name, value)| Features::from([(name.to_owned(), value.to_owned())]));
        let items: Vec<String> = (0..44).map(|n| format!("i{n}")).collect();
        let exclude = HashSet::from(["i3".to_owned(), "i8".to_owned()]);
        for context in features.iter().map(ScoreContext::new).chain([ScoreContext::none()]) {
            for head in Head::ALL {
                for user in (0..26).map(|n| format!("u{n}")) {
                    for item in &items {
                        let (a, b) =
                            (sharded.score(head, &user, item, &context), whole.score(head, &user, item, &context));
                        assert_eq!(a.to_bits(), b.to_bits(), "{head:?} {user} {item}");
                    }
                    let bits = |scores: Vec<f32>| scores.into_iter().map(f32::to_bits).collect::<Vec<_>>();
                    assert_eq!(
                        bits(sharded.rank(head, &user, &items, &context)),
                        bits(whole.rank(head, &user, &items, &context))
                    );
                    assert_eq!(
                        sharded.top_k(head, &user, 10, &context, &exclude),
                        whole.top_k(head, &user, 10, &context, &exclude)
                    );
                    assert_eq!(
                        sharded.top_k_exact(head, &user, 45, &context, &exclude),
                        whole.top_k_exact(head, &user, 45, &context, &exclude)
                    );
                }
            }
        }
    }

    #[test]
    fn a_delta_of_one_shard_keeps_the_others_and_a_chain_carries_only_its_shards_rows() {
        let rows = catalog();
        let mut model = None;
        for shard in [0, 1] {
            let mut builder =
                Builder::full(&shard_header(shard, 1, SnapshotKind::Full, &rows), model.as_ref(), DEFAULT_CANDIDATES)
                    .expect("full");
            builder.apply(&chunk(1, owned_by(shard, &rows))).expect("applies");
            model = Some(builder.finish(0));
        }
        let model = model.expect("built");
        let theirs = owned_by(0, &rows)[0].clone();
        let mut mine = owned_by(1, &rows)[0].clone();
        mine.values[0] += 1.0;
        let delta = SnapshotKind::Delta { base_version: 1 };
        // Shard 0's delta starts, shard 1's completes meanwhile; shard 0's then lands on it.
        let mut moved = theirs.clone();
        moved.values[0] -= 1.0;
        let mut slow = Builder::delta(&shard_header(0, 2, delta, &[]), &model).expect("on its base");
        let mut fast = Builder::delta(&shard_header(1, 2, delta, &[]), &model).expect("on its base");
        fast.apply(&chunk(2, vec![mine.clone()])).expect("its own row");
        let newer = fast.finish(0);
        assert_eq!((newer.shard_version(0), newer.shard_version(1), newer.version()), (Some(1), Some(2), 1));
        assert_eq!(newer.row(mine.table, mine.key), Some(mine.values.clone()));
        slow.apply(&chunk(2, vec![moved.clone()])).expect("its own row");
        let both = slow.finish_onto(Some(&newer), 0);
        assert_eq!((both.shard_version(0), both.shard_version(1), both.version()), (Some(2), Some(2), 2));
        assert_eq!(both.row(mine.table, mine.key), Some(mine.values.clone()), "shard 1's delta is kept");
        assert_eq!(both.row(moved.table, moved.key), Some(moved.values.clone()));
        assert_eq!(model.row(theirs.table, theirs.key), Some(theirs.values.clone()), "the served version is untouched");

        let mut wrong = Builder::delta(&shard_header(1, 3, SnapshotKind::Delta { base_version: 2 }, &[]), &both)
            .expect("on its base");
        let error = wrong.apply(&chunk(3, vec![theirs.clone()])).expect_err("shard 0's row in shard 1's chain");
        assert_eq!(error, ApplyError::NotOwned { table: theirs.table, key: theirs.key, owner: 0, shard: 1 }, "{error}");
        let stale = Builder::delta(&shard_header(0, 3, SnapshotKind::Delta { base_version: 1 }, &[]), &both);
        assert!(matches!(stale, Err(ApplyError::Mismatch { current: 2, .. })), "{stale:?}");
        let out_of_range = Builder::full(&shard_header(2, 1, SnapshotKind::Full, &[]), None, DEFAULT_CANDIDATES);
        assert!(matches!(out_of_range, Err(ApplyError::Spec(_))));
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
