//! Frequency admission: an id gets a row only at its `min_count`-th sighting.
//! Sightings of not-yet-admitted ids are counted exactly in a bounded map;
//! when it is full, the least recently seen half is dropped (ties: lower key
//! first), so the structure never outgrows `max_pending` entries.

use crate::keymap::{KeyMap, KeySet};
use crate::state::PendingAdmission;
use freshet_core::TableKind;

#[derive(Debug, Clone, Copy)]
struct Pending {
    count: u32,
    last_seen_ms: i64,
    dirty: bool,
}

/// The pending sightings of one table.
#[derive(Debug, Clone)]
pub(crate) struct Admission {
    table: TableKind,
    min_count: u32,
    max_pending: usize,
    pending: KeyMap<Pending>,
    dirty_keys: Vec<u64>,
    removed: KeySet,
}

impl Admission {
    /// Admission for `table` at `min_count` sightings, counting at most `max_pending` ids.
    pub(crate) fn new(table: TableKind, min_count: u32, max_pending: usize) -> Self {
        Admission {
            table,
            min_count,
            max_pending,
            pending: KeyMap::default(),
            dirty_keys: Vec::new(),
            removed: KeySet::default(),
        }
    }

    /// Records a sighting of an id without a row; returns whether it is
    /// admitted now, and how many pending ids were dropped to make room.
    pub(crate) fn sight(&mut self, key: u64, now_ms: i64) -> (bool, usize) {
        if self.min_count <= 1 {
            return (true, 0);
        }
        let mut dropped = 0;
        if !self.pending.contains_key(&key) && self.pending.len() >= self.max_pending {
            dropped = self.drop_oldest_half();
        }
        let entry = self.pending.entry(key).or_insert(Pending { count: 0, last_seen_ms: now_ms, dirty: false });
        entry.count += 1;
        entry.last_seen_ms = now_ms;
        if entry.count >= self.min_count {
            self.remove(key);
            return (true, dropped);
        }
        if !entry.dirty {
            entry.dirty = true;
            self.dirty_keys.push(key);
        }
        self.removed.remove(&key);
        (false, dropped)
    }

    /// Forgets the pending count of `key`, if any.
    pub(crate) fn remove(&mut self, key: u64) {
        if self.pending.remove(&key).is_some() {
            self.removed.insert(key);
        }
    }

    /// Drops entries last seen before `cutoff_ms`; returns how many.
    pub(crate) fn expire(&mut self, cutoff_ms: i64) -> usize {
        let stale: Vec<u64> =
            self.pending.iter().filter(|(_, p)| p.last_seen_ms < cutoff_ms).map(|(&k, _)| k).collect();
        for &key in &stale {
            self.remove(key);
        }
        stale.len()
    }

    fn drop_oldest_half(&mut self) -> usize {
        let mut order: Vec<(i64, u64)> = self.pending.iter().map(|(&k, p)| (p.last_seen_ms, k)).collect();
        let victims = order.len() / 2;
        if victims == 0 {
            return 0;
        }
        order.select_nth_unstable(victims - 1);
        for &(_, key) in &order[..victims] {
            self.remove(key);
        }
        victims
    }

    /// Number of ids being counted.
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }

    /// Appends the entries changed since the last drain (sorted by key) and
    /// the keys whose entry went away, and forgets both.
    pub(crate) fn drain(&mut self, changed: &mut Vec<PendingAdmission>, removed: &mut Vec<(TableKind, u64)>) {
        let mut keys = std::mem::take(&mut self.dirty_keys);
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            if let Some(entry) = self.pending.get_mut(&key) {
                entry.dirty = false;
                let entry = *entry;
                changed.push(self.row(key, entry));
            }
        }
        let mut gone: Vec<u64> = self.removed.drain().collect();
        gone.sort_unstable();
        removed.extend(gone.into_iter().map(|key| (self.table, key)));
    }

    /// Appends every entry, sorted by key.
    pub(crate) fn export(&self, rows: &mut Vec<PendingAdmission>) {
        let start = rows.len();
        rows.extend(self.pending.iter().map(|(&key, &entry)| self.row(key, entry)));
        rows[start..].sort_unstable_by_key(|row| row.key);
    }

    /// Restores an entry from saved state (not marked changed).
    pub(crate) fn insert_state(&mut self, row: &PendingAdmission) {
        self.pending.insert(row.key, Pending { count: row.count, last_seen_ms: row.last_seen_ms, dirty: false });
    }

    fn row(&self, key: u64, entry: Pending) -> PendingAdmission {
        PendingAdmission { table: self.table, key, count: entry.count, last_seen_ms: entry.last_seen_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_at_min_count() {
        let mut a = Admission::new(TableKind::User, 3, 100);
        assert_eq!(a.sight(9, 1), (false, 0));
        assert_eq!(a.sight(9, 2), (false, 0));
        assert_eq!(a.sight(9, 3), (true, 0));
        assert_eq!(a.len(), 0);
        assert_eq!(Admission::new(TableKind::User, 1, 100).sight(9, 1), (true, 0));
    }

    #[test]
    fn stays_bounded_by_dropping_the_least_recently_seen() {
        let mut a = Admission::new(TableKind::Item, 5, 8);
        for key in 0..8u64 {
            a.sight(key, key as i64);
        }
        assert_eq!(a.len(), 8);
        assert_eq!(a.sight(100, 100), (false, 4));
        assert_eq!(a.len(), 5);
        let mut kept = Vec::new();
        a.export(&mut kept);
        assert_eq!(kept.iter().map(|r| r.key).collect::<Vec<_>>(), [4, 5, 6, 7, 100]);
        for key in 0..1000u64 {
            a.sight(key + 1000, key as i64 + 200);
            assert!(a.len() <= 8);
        }
    }

    #[test]
    fn drain_reports_changes_and_removals() {
        let mut a = Admission::new(TableKind::User, 2, 10);
        a.sight(1, 0);
        a.sight(2, 0);
        a.sight(2, 1); // admitted: its entry goes away
        let (mut changed, mut removed) = (Vec::new(), Vec::new());
        a.drain(&mut changed, &mut removed);
        assert_eq!(changed.iter().map(|r| r.key).collect::<Vec<_>>(), [1]);
        assert_eq!(removed, [(TableKind::User, 2)]);
    }
}
