//! One dynamic embedding table: rows laid out as [`freshet_core::RowLayout`]
//! says (the scalars, then the factors) with the optimizer's moments beside them in one contiguous f32 arena,
//! per-row step and update counters and last-update time, a 64-bit key → row
//! map, and the record of what changed since the last drain. Removing a row
//! moves the last row into its place, so the arena stays dense.
//!
//! In a sharded model a table also holds replica rows: rows another shard
//! owns, kept to score with and never stepped, changed, expired, evicted,
//! exported or counted here (their owner does all that).

use freshet_core::score::session_active;
use freshet_core::snapshot::TableColumns;
use freshet_core::{RowLayout, TableKind};
use ndarray::{ArrayView2, ShapeBuilder};

use crate::arena::Arena;
use crate::bitset::BitSet;
use crate::keymap::KeyMap;
use crate::optimizer::RowMut;
use crate::row_index::RowIndex;
use crate::state::{Removal, RowRef, RowState, Tombstone};

/// What a table knows about a row besides its floats. Exactly 32 bytes and
/// aligned to them, so it never straddles two cache lines.
#[derive(Debug, Clone, Copy)]
#[repr(align(32))]
struct RowMeta {
    key: u64,
    updates: u64,
    last_update: i64,
    steps: u32,
    /// The row's gradient slot in the current step, or [`NO_SLOT`].
    slot: u32,
}

/// Marks a row without a gradient slot in the current step.
pub(crate) const NO_SLOT: u32 = u32::MAX;

/// The arena of one table. Each row's floats are contiguous — parameters,
/// then the first moment (if kept), then the second (if kept) — and so is
/// its metadata, so touching a row costs two cache misses, not one per array.
/// Whether a row changed since the last drain is one bit per row beside them.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    kind: TableKind,
    width: usize,
    scalars: usize,
    moments: usize,
    /// Floats per row in the arena: `width × (1 + moments)`.
    stride: usize,
    arena: Arena,
    meta: Vec<RowMeta>,
    dirty: BitSet,
    /// Whether each row is a replica of a row another shard owns.
    replica: BitSet,
    /// How many rows are replicas.
    replicas: usize,
    ids: Vec<Box<str>>,
    index: RowIndex,
    dirty_keys: Vec<u64>,
    tombstones: KeyMap<Removal>,
}

impl Table {
    /// An empty table of `kind`'s rows for a `dim`-dimensional model, with `moments` moment slots per parameter (2: first and second
    /// moment; 1: second only; 0: none).
    pub(crate) fn new(kind: TableKind, dim: usize, moments: usize) -> Self {
        let width = kind.scalars() + dim;
        Table {
            kind,
            width,
            scalars: kind.scalars(),
            moments,
            stride: width * (1 + moments),
            arena: Arena::default(),
            meta: Vec::new(),
            dirty: BitSet::default(),
            replica: BitSet::default(),
            replicas: 0,
            ids: Vec::new(),
            index: RowIndex::default(),
            dirty_keys: Vec::new(),
            tombstones: KeyMap::default(),
        }
    }

    /// Floats before the factors in each row.
    #[inline]
    pub(crate) fn scalars(&self) -> usize {
        self.scalars
    }

    /// Number of rows, replicas included.
    pub(crate) fn len(&self) -> usize {
        self.meta.len()
    }

    /// Number of rows this shard owns (all of them, unsharded).
    pub(crate) fn owned_len(&self) -> usize {
        self.meta.len() - self.replicas
    }

    /// Whether a row is a replica of a row another shard owns.
    #[inline]
    pub(crate) fn is_replica(&self, row: u32) -> bool {
        self.replicas > 0 && self.replica.get(row as usize)
    }

    /// Adds a replica row for `key` (which must not have a row) filled by
    /// `init`, not marked changed: a row another shard owns, provisional
    /// until its owner's values replace it ([`Table::set_replica`]).
    pub(crate) fn insert_replica(&mut self, key: u64, id: &str, now_ms: i64, init: impl FnOnce(&mut [f32])) -> u32 {
        let row = self.push_row(key, id);
        let start = row as usize * self.stride;
        init(&mut self.arena[start..start + self.width]);
        self.meta[row as usize].last_update = now_ms;
        self.replica.replace(row as usize, true);
        self.replicas += 1;
        row
    }

    /// Sets a replica row to its owner's `values` (a row's width), adding it
    /// if `key` has no row; returns false (changing nothing) if `key` has a
    /// row of this shard's own.
    pub(crate) fn set_replica(&mut self, key: u64, id: Option<&str>, updated_ms: i64, values: &[f32]) -> bool {
        debug_assert_eq!(values.len(), self.width);
        let row = match self.get(key) {
            Some(row) if !self.is_replica(row) => return false,
            Some(row) => row,
            None => self.insert_replica(key, id.unwrap_or_default(), updated_ms, |_| {}),
        };
        self.row_mut(row).params.copy_from_slice(values);
        self.meta[row as usize].last_update = updated_ms;
        true
    }

    /// Removes the replica row of `key`, if it has one (a row of this
    /// shard's own stays); returns whether it did.
    pub(crate) fn remove_replica(&mut self, key: u64) -> bool {
        match self.get(key) {
            Some(row) if self.is_replica(row) => {
                self.remove(row, Removal::Evicted);
                true
            }
            _ => false,
        }
    }

    /// The row of `key`, if it has one.
    #[inline]
    pub(crate) fn get(&self, key: u64) -> Option<u32> {
        self.index.get(key)
    }

    /// Adds a row for `key` (which must not have one), filled by `init`, and
    /// marks it changed.
    pub(crate) fn insert(&mut self, key: u64, id: &str, now_ms: i64, init: impl FnOnce(&mut [f32])) -> u32 {
        let row = self.push_row(key, id);
        let start = row as usize * self.stride;
        init(&mut self.arena[start..start + self.width]);
        self.meta[row as usize].last_update = now_ms;
        self.mark_dirty(row);
        row
    }

    /// Adds a row from saved state; moments that do not fit the configured
    /// algorithms start at zero. The row is not marked changed.
    pub(crate) fn insert_state(&mut self, state: &RowRef<'_>) -> u32 {
        let row = self.push_row(state.key, state.id.unwrap_or_default());
        let RowMut { params, m, v, .. } = self.row_mut(row);
        params.copy_from_slice(state.params);
        if m.len() == state.m.len() {
            m.copy_from_slice(state.m);
        }
        if v.len() == state.v.len() {
            v.copy_from_slice(state.v);
        }
        let meta = &mut self.meta[row as usize];
        meta.steps = state.steps;
        meta.updates = state.updates;
        meta.last_update = state.last_update_ms;
        row
    }

    /// Makes room for `rows` more rows at once, so a restore grows each
    /// array once instead of doubling (and copying) it repeatedly.
    pub(crate) fn reserve(&mut self, rows: usize) {
        self.arena.reserve_exact(rows * self.stride);
        self.meta.reserve_exact(rows);
        self.dirty.reserve(rows);
        self.index.reserve(rows);
        if self.kind.keeps_ids() {
            self.ids.reserve_exact(rows);
        }
    }

    fn push_row(&mut self, key: u64, id: &str) -> u32 {
        let row = u32::try_from(self.meta.len()).expect("a table holds fewer than 2^32 rows");
        self.index.insert(key, row);
        self.tombstones.remove(&key);
        if self.kind.keeps_ids() {
            self.ids.push(id.into());
        }
        self.arena.push_zeros(self.stride);
        self.meta.push(RowMeta { key, updates: 0, last_update: 0, steps: 0, slot: NO_SLOT });
        self.dirty.push(false);
        self.replica.push(false);
        row
    }

    /// `[scalars..., factors...]` of a row.
    #[inline]
    pub(crate) fn params(&self, row: u32) -> &[f32] {
        let start = row as usize * self.stride;
        &self.arena[start..start + self.width]
    }

    /// Loads one float from each cache line of a row (its last float
    /// included) and its metadata, so a later access finds them cached.
    #[inline]
    pub(crate) fn touch(&self, row: u32) -> f32 {
        const FLOATS_PER_LINE: usize = 16;
        let floats = &self.arena[row as usize * self.stride..][..self.stride];
        let lines: f32 = floats.iter().step_by(FLOATS_PER_LINE).sum();
        lines + floats[self.stride - 1] + self.meta[row as usize].steps as f32
    }

    /// A row's parameters and moments, for one optimizer step.
    #[inline]
    pub(crate) fn row_mut(&mut self, row: u32) -> RowMut<'_> {
        let start = row as usize * self.stride;
        let floats = &mut self.arena[start..start + self.stride];
        let (params, moments) = floats.split_at_mut(self.width);
        let (m, v) = if self.moments >= 2 { moments.split_at_mut(self.width) } else { (&mut [][..], moments) };
        RowMut { scalars: self.scalars, params, m, v }
    }

    /// The key of a row.
    #[inline]
    pub(crate) fn key(&self, row: u32) -> u64 {
        self.meta[row as usize].key
    }

    /// The id of a row, for a table that keeps ids (else empty).
    pub(crate) fn id_of(&self, row: u32) -> &str {
        self.ids.get(row as usize).map_or("", |id| id)
    }

    /// The table's kind.
    pub(crate) fn kind(&self) -> TableKind {
        self.kind
    }

    /// Optimizer steps taken by a row.
    #[inline]
    pub(crate) fn steps(&self, row: u32) -> u32 {
        self.meta[row as usize].steps
    }

    /// Events whose gradient reached a row.
    #[inline]
    pub(crate) fn updates(&self, row: u32) -> u64 {
        self.meta[row as usize].updates
    }

    /// The row's gradient slot in the current step (see [`NO_SLOT`]).
    #[inline]
    pub(crate) fn slot_mut(&mut self, row: u32) -> &mut u32 {
        &mut self.meta[row as usize].slot
    }

    /// Records a written step that `events` events contributed to.
    #[inline]
    pub(crate) fn record_update(&mut self, row: u32, events: u32, now_ms: i64) {
        let meta = &mut self.meta[row as usize];
        meta.steps = meta.steps.saturating_add(1);
        meta.updates += u64::from(events);
        meta.last_update = now_ms;
        self.mark_dirty(row);
    }

    /// Trainer clock at a row's last update.
    #[inline]
    pub(crate) fn last_update(&self, row: u32) -> i64 {
        self.meta[row as usize].last_update
    }

    /// Starts a new session for a user row when an event at `ts` does not
    /// continue its session ([`session_active`]): its session offset
    /// restarts at 0. Returns whether a session began.
    #[inline]
    pub(crate) fn start_session_if_idle(&mut self, row: u32, ts: i64, gap_ms: i64) -> bool {
        debug_assert_eq!(self.kind, TableKind::User);
        if session_active(self.meta[row as usize].last_update, ts, gap_ms) {
            return false;
        }
        let start = row as usize * self.stride;
        let offset = &mut self.arena[start + RowLayout::SESSION_OFFSET];
        if *offset != 0.0 {
            *offset = 0.0;
            self.mark_dirty(row);
        }
        true
    }

    /// At most how many rows [`Table::drain`] would hand over now.
    pub(crate) fn dirty_len(&self) -> usize {
        self.dirty_keys.len()
    }

    #[inline]
    fn mark_dirty(&mut self, row: u32) {
        if !self.dirty.replace(row as usize, true) {
            self.dirty_keys.push(self.meta[row as usize].key);
        }
    }

    /// Removes the row of `key` if there is one; returns whether it existed.
    pub(crate) fn remove_key(&mut self, key: u64, cause: Removal) -> bool {
        match self.get(key) {
            Some(row) => {
                self.remove(row, cause);
                true
            }
            None => false,
        }
    }

    /// Removes a row (the last row takes its place) and records a tombstone
    /// (not for a replica: its owner records its removal).
    fn remove(&mut self, row: u32, cause: Removal) {
        let r = row as usize;
        let last = self.len() - 1;
        let key = self.meta[r].key;
        self.index.remove(key);
        if self.is_replica(row) {
            self.replicas -= 1;
        } else {
            self.tombstones.insert(key, cause);
        }
        if r != last {
            self.index.insert(self.meta[last].key, row);
            self.meta[r] = self.meta[last];
            let moved = self.dirty.get(last);
            self.dirty.replace(r, moved);
            let moved = self.replica.get(last);
            self.replica.replace(r, moved);
            if self.kind.keeps_ids() {
                self.ids.swap(r, last);
            }
            self.arena.copy_within(last * self.stride..(last + 1) * self.stride, r * self.stride);
        }
        self.meta.truncate(last);
        self.dirty.truncate(last);
        self.replica.truncate(last);
        self.ids.truncate(if self.kind.keeps_ids() { last } else { 0 });
        self.arena.truncate(last * self.stride);
    }

    /// Removes several rows, highest index first so no pending index moves.
    fn remove_rows(&mut self, mut rows: Vec<u32>, cause: Removal) -> usize {
        rows.sort_unstable_by(|a, b| b.cmp(a));
        for &row in &rows {
            self.remove(row, cause);
        }
        rows.len()
    }

    /// The rows this shard owns, in arena order.
    fn owned_rows(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len() as u32).filter(|&row| !self.is_replica(row))
    }

    /// Removes owned rows last updated before `cutoff_ms`; returns how many.
    pub(crate) fn expire(&mut self, cutoff_ms: i64) -> usize {
        let stale: Vec<u32> =
            self.owned_rows().filter(|&row| self.meta[row as usize].last_update < cutoff_ms).collect();
        self.remove_rows(stale, Removal::Expired)
    }

    /// Evicts the least recently updated owned rows (ties: lower key first)
    /// until `target` owned rows remain; returns how many left.
    pub(crate) fn evict_to(&mut self, target: usize) -> usize {
        let excess = self.owned_len().saturating_sub(target);
        if excess == 0 {
            return 0;
        }
        let mut order: Vec<(i64, u64, u32)> = self
            .owned_rows()
            .map(|row| {
                let meta = &self.meta[row as usize];
                (meta.last_update, meta.key, row)
            })
            .collect();
        order.select_nth_unstable(excess - 1);
        let victims = order[..excess].iter().map(|&(_, _, row)| row).collect();
        self.remove_rows(victims, Removal::Evicted)
    }

    /// The full state of a row.
    pub(crate) fn row_state(&self, row: u32) -> RowState {
        let r = row as usize;
        let start = r * self.stride;
        let floats = &self.arena[start..start + self.stride];
        let (params, moments) = floats.split_at(self.width);
        let (m, v) = if self.moments >= 2 { moments.split_at(self.width) } else { (&[][..], moments) };
        let meta = &self.meta[r];
        RowState {
            table: self.kind,
            key: meta.key,
            id: self.id(r),
            params: params.to_vec(),
            m: m.to_vec(),
            v: v.to_vec(),
            steps: meta.steps,
            updates: meta.updates,
            last_update_ms: meta.last_update,
        }
    }

    fn id(&self, r: usize) -> Option<String> {
        self.ids.get(r).map(|id| id.to_string())
    }

    /// Appends the state of every row changed since the last drain and every
    /// tombstone of a key that has no row now, both sorted by key, and forgets them.
    pub(crate) fn drain(&mut self, rows: &mut Vec<RowState>, tombstones: &mut Vec<Tombstone>) {
        let mut keys = std::mem::take(&mut self.dirty_keys);
        keys.sort_unstable();
        keys.dedup();
        for &key in &keys {
            if let Some(row) = self.get(key) {
                self.dirty.replace(row as usize, false);
                rows.push(self.row_state(row));
            }
        }
        keys.clear();
        self.dirty_keys = keys; // its room, for the next
        let mut removed: Vec<Tombstone> =
            self.tombstones.drain().map(|(key, cause)| Tombstone { table: self.kind, key, cause }).collect();
        removed.sort_unstable_by_key(|t| t.key);
        tombstones.extend(removed);
    }

    /// Appends the state of every owned row, sorted by key.
    pub(crate) fn export(&self, rows: &mut Vec<RowState>) {
        let start = rows.len();
        rows.extend(self.owned_rows().map(|row| self.row_state(row)));
        rows[start..].sort_unstable_by_key(|row| row.key);
    }

    /// Every owned row's parameters as columns, in arena order: bulk copies
    /// of the keys, update times, ids and the parameter floats of each row
    /// (not its optimizer moments).
    pub(crate) fn param_columns(&self) -> TableColumns {
        let mut values = Vec::with_capacity(self.owned_len() * self.width);
        self.owned_rows().for_each(|row| values.extend_from_slice(self.params(row)));
        let ids = match self.kind.keeps_ids() {
            true => self.per_owned_row(|row| self.ids[row].clone()),
            false => Vec::new(),
        };
        TableColumns {
            table: self.kind,
            width: self.width,
            keys: self.per_owned_row(|row| self.meta[row].key),
            updated_ms: self.per_owned_row(|row| self.meta[row].last_update),
            ids,
            values,
        }
    }

    /// `value` of every owned row, in arena order.
    fn per_owned_row<T>(&self, value: impl Fn(usize) -> T) -> Vec<T> {
        let mut out = Vec::with_capacity(self.owned_len());
        out.extend(self.owned_rows().map(|row| value(row as usize)));
        out
    }

    /// Every row's `[scalars..., factors...]` (replicas included), one row per table row, in arena
    /// order (which changes as rows are removed; see [`Table::keys`]). A
    /// strided view into the arena: no copy.
    pub(crate) fn params_view(&self) -> ArrayView2<'_, f32> {
        let shape = (self.len(), self.width).strides((self.stride, 1));
        let used = if self.len() == 0 { 0 } else { (self.len() - 1) * self.stride + self.width };
        ArrayView2::from_shape(shape, &self.arena[..used]).expect("the arena holds len rows of stride floats")
    }

    /// The key of each arena row, aligned with [`Table::params_view`].
    pub(crate) fn keys(&self) -> Vec<u64> {
        self.meta.iter().map(|meta| meta.key).collect()
    }

    /// Sum of the owned rows' update counters (a replica's is always 0).
    pub(crate) fn update_count_sum(&self) -> u64 {
        self.meta.iter().map(|meta| meta.updates).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        Table::new(TableKind::Item, 1, 2)
    }

    fn fill(value: f32) -> impl FnOnce(&mut [f32]) {
        move |row: &mut [f32]| row.fill(value)
    }

    #[test]
    fn removal_moves_the_last_row_and_keeps_the_index_right() {
        let mut t = table();
        for key in 1..=4u64 {
            t.insert(key, &format!("i{key}"), key as i64, fill(key as f32));
        }
        assert!(t.remove_key(2, Removal::Forgotten));
        assert!(!t.remove_key(2, Removal::Forgotten));
        assert_eq!(t.len(), 3);
        for key in [1u64, 3, 4] {
            let row = t.get(key).expect("row kept");
            assert_eq!(t.params(row), &[key as f32; 3]);
            assert_eq!(t.row_state(row).id.as_deref(), Some(format!("i{key}").as_str()));
            assert_eq!(t.row_state(row).last_update_ms, key as i64);
        }
    }

    #[test]
    fn eviction_takes_least_recently_updated_rows() {
        let mut t = table();
        for key in 1..=6u64 {
            t.insert(key, "", 100 - key as i64, fill(0.0));
        }
        assert_eq!(t.evict_to(4), 2);
        let mut kept: Vec<u64> = t.keys();
        kept.sort_unstable();
        assert_eq!(kept, [1, 2, 3, 4]);
        assert_eq!(t.expire(97), 1); // key 4 was last updated at 96
    }

    #[test]
    fn drain_reports_changes_once_and_tombstones_of_absent_keys() {
        let mut t = table();
        t.insert(5, "a", 0, fill(1.0));
        t.insert(6, "b", 0, fill(1.0));
        t.remove_key(6, Removal::Evicted);
        let (mut rows, mut tombs) = (Vec::new(), Vec::new());
        t.drain(&mut rows, &mut tombs);
        assert_eq!(rows.iter().map(|r| r.key).collect::<Vec<_>>(), [5]);
        assert_eq!(tombs, [Tombstone { table: TableKind::Item, key: 6, cause: Removal::Evicted }]);
        let (mut rows, mut tombs) = (Vec::new(), Vec::new());
        t.drain(&mut rows, &mut tombs);
        assert!(rows.is_empty() && tombs.is_empty());
        // A re-admitted key is a row again, not a tombstone.
        t.remove_key(5, Removal::Expired);
        t.insert(5, "a", 1, fill(2.0));
        t.drain(&mut rows, &mut tombs);
        assert_eq!((rows.len(), tombs.len()), (1, 0));
    }
}
