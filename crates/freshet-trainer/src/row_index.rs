//! The key → row map of a table: open addressing with linear probing over
//! inline `(key, row)` slots, 16 bytes each and four to a cache line, so a
//! lookup in a large table usually costs one cache miss (a general-purpose
//! map reads a control array and a bucket array: two).

/// Marks a free slot (no table holds `u32::MAX` rows).
const FREE: u32 = u32::MAX;
/// Smallest number of slots.
const MIN_SLOTS: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Slot {
    key: u64,
    row: u32,
}

const EMPTY: Slot = Slot { key: 0, row: FREE };

/// A map from a 64-bit key to a row number, at most half full.
#[derive(Debug, Clone)]
pub(crate) struct RowIndex {
    slots: Vec<Slot>,
    /// `64 − log2(slots.len())`: a key's home slot is the top bits of its Fibonacci hash.
    shift: u32,
    len: usize,
}

impl Default for RowIndex {
    fn default() -> Self {
        RowIndex { slots: vec![EMPTY; MIN_SLOTS], shift: 64 - MIN_SLOTS.trailing_zeros(), len: 0 }
    }
}

impl RowIndex {
    /// The row of `key`, if it has one.
    #[inline]
    pub(crate) fn get(&self, key: u64) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let mut at = self.home(key);
        loop {
            let slot = self.slots[at];
            if slot.row == FREE {
                return None;
            }
            if slot.key == key {
                return Some(slot.row);
            }
            at = (at + 1) & mask;
        }
    }

    /// Maps `key` to `row`, replacing any previous row of `key`.
    pub(crate) fn insert(&mut self, key: u64, row: u32) {
        debug_assert_ne!(row, FREE);
        if 2 * (self.len + 1) > self.slots.len() {
            self.grow_to(self.len + 1);
        }
        let at = self.find(key);
        if self.slots[at].row == FREE {
            self.len += 1;
        }
        self.slots[at] = Slot { key, row };
    }

    /// Removes `key`; returns its row, if it had one. Later slots of the
    /// probe run shift back, so no tombstones are left behind.
    pub(crate) fn remove(&mut self, key: u64) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let mut hole = self.find(key);
        let row = self.slots[hole].row;
        if row == FREE {
            return None;
        }
        self.len -= 1;
        let mut next = hole;
        loop {
            next = (next + 1) & mask;
            let slot = self.slots[next];
            if slot.row == FREE {
                break;
            }
            // The slot may fill the hole if the hole lies between its home and it.
            let home = self.home(slot.key);
            if next.wrapping_sub(home) & mask >= next.wrapping_sub(hole) & mask {
                self.slots[hole] = slot;
                hole = next;
            }
        }
        self.slots[hole] = EMPTY;
        Some(row)
    }

    /// Makes room for `additional` more keys without growing again.
    pub(crate) fn reserve(&mut self, additional: usize) {
        if 2 * (self.len + additional) > self.slots.len() {
            self.grow_to(self.len + additional);
        }
    }

    #[inline]
    fn home(&self, key: u64) -> usize {
        (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> self.shift) as usize
    }

    /// The slot holding `key`, or the free slot ending its probe run.
    fn find(&self, key: u64) -> usize {
        let mask = self.slots.len() - 1;
        let mut at = self.home(key);
        while self.slots[at].row != FREE && self.slots[at].key != key {
            at = (at + 1) & mask;
        }
        at
    }

    /// Rehashes into the smallest power-of-two slot count holding `keys` at most half full.
    fn grow_to(&mut self, keys: usize) {
        let count = (2 * keys).next_power_of_two().max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; count]);
        self.shift = 64 - count.trailing_zeros();
        for slot in old.into_iter().filter(|slot| slot.row != FREE) {
            let at = self.find(slot.key);
            self.slots[at] = slot;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keymap::KeyMap;

    /// Random inserts, overwrites and removals against a reference map,
    /// with keys crowded into few home slots to exercise long probe runs.
    #[test]
    fn matches_a_reference_map() {
        let mut index = RowIndex::default();
        let mut reference = KeyMap::default();
        let mut state = 7u64;
        for step in 0..20_000u32 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let key = (state >> 33) % 3000 * if step % 2 == 0 { 1 } else { 1 << 40 };
            match state % 5 {
                0 | 1 => assert_eq!(index.remove(key), reference.remove(&key)),
                _ => {
                    index.insert(key, step);
                    reference.insert(key, step);
                }
            }
            assert_eq!(index.len, reference.len());
        }
        for key in 0..3000u64 {
            for key in [key, key << 40] {
                assert_eq!(index.get(key), reference.get(&key).copied(), "key {key}");
            }
        }
        index.reserve(100_000);
        assert!(index.slots.len() >= 200_000);
        assert_eq!(index.len, reference.len());
        assert!(reference.iter().all(|(&key, &row)| index.get(key) == Some(row)));
    }
}
