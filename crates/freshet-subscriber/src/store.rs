//! Copy-on-write storage of one table's rows for serving.
//!
//! A model version is a set of tables; the next version is a clone of the
//! current one (page numbers and segment pointers only) with a snapshot's changes
//! written into it. Writing to a page or index segment that the served
//! version still shares copies that one page or segment, so applying a
//! delta costs the rows it changes, and serving never holds a second copy
//! of the model.
//!
//! - [`KeyIndex`]: key → row position, an extendible-hashing directory (by
//!   the key's top bits) over small sorted segments of keys. Segments split
//!   one at a time as they fill: the index never rebuilds, and it is densely
//!   packed (12 bytes a key).
//! - [`RowStore`]: the rows' floats (and, in user rows, the time of their
//!   last update) in pages of [`ROWS_PER_PAGE`] rows, shared between
//!   versions as [`crate::pages`] says. A removed row leaves a hole that the next new
//!   row fills, so rows never move and pages need not know their keys.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use freshet_core::snapshot::LeValues;
use freshet_core::{MAX_DIM, ModelSpec, RowLayout, TableKind};

use crate::pages::PageTable;

/// The widest row of any table (a user row at [`MAX_DIM`]).
pub(crate) const MAX_WIDTH: usize = TableKind::User.scalars() + MAX_DIM;

/// Most keys in one index segment before it splits: segments are few (a
/// version holds a pointer to each, a cache miss to copy), and a binary
/// search over one stays within a few cache lines' worth of probes.
const SEGMENT_KEYS: usize = 1024;
/// Directory entries always allowed; beyond, at most one per 16 keys.
const MIN_DIRECTORY: usize = 4096;

/// Where `key` is in sorted `keys` (as `binary_search` answers). Keys are
/// hashes, spread evenly over a segment's range, so the position is first
/// guessed from the key's value and searched for near the guess: a lookup
/// reads two or three cache lines of a segment instead of ten (a cold
/// segment per lookup while a delta applies). Keys that are not spread
/// evenly only fall back to a binary search over the whole segment.
fn search(keys: &[u64], key: u64) -> Result<usize, usize> {
    const WINDOW: usize = 32;
    let n = keys.len();
    if n > 4 * WINDOW {
        let (low, high) = (keys[0], keys[n - 1]);
        if low < key && key < high {
            let guess = (u128::from(key - low) * (n - 1) as u128 / u128::from(high - low)) as usize;
            let (start, end) = (guess.saturating_sub(WINDOW), (guess + WINDOW).min(n));
            if keys[start] < key && key <= keys[end - 1] {
                return match keys[start..end].binary_search(&key) {
                    Ok(at) => Ok(start + at),
                    Err(at) => Err(start + at),
                };
            }
        }
    }
    keys.binary_search(&key)
}

/// A sorted run of keys and the rows they map to.
#[derive(Debug, Clone, Default, PartialEq)]
struct Segment {
    /// How many leading key bits all its keys share (its directory prefix).
    depth: u32,
    keys: Vec<u64>,
    rows: Vec<u32>,
}

/// Key → row position.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KeyIndex {
    /// Directory bits: entry `key >> (64 - depth)` (entry 0 when 0).
    depth: u32,
    /// Per entry, its segment's number. The entries of one segment are
    /// consecutive: those that share its prefix.
    directory: Vec<u32>,
    /// Each segment once, so an `Arc` is shared only between versions.
    segments: Vec<Arc<Segment>>,
    len: usize,
}

impl Default for KeyIndex {
    fn default() -> Self {
        KeyIndex { depth: 0, directory: vec![0], segments: vec![Arc::new(Segment::default())], len: 0 }
    }
}

impl KeyIndex {
    /// Keys held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn segment_of(&self, key: u64) -> usize {
        let entry = if self.depth == 0 { 0 } else { (key >> (64 - self.depth)) as usize };
        self.directory[entry] as usize
    }

    /// The row of `key`.
    pub(crate) fn get(&self, key: u64) -> Option<u32> {
        let segment = &self.segments[self.segment_of(key)];
        search(&segment.keys, key).ok().map(|at| segment.rows[at])
    }

    /// Maps `key` (which must be absent) to `row`.
    pub(crate) fn insert(&mut self, key: u64, row: u32) {
        let number = self.segment_of(key);
        let segment = Arc::make_mut(&mut self.segments[number]);
        let at = search(&segment.keys, key).unwrap_or_else(|at| at);
        if segment.keys.len() == segment.keys.capacity() {
            // Grow by an eighth, not double: the index stays packed.
            let more = segment.keys.len() / 8 + 4;
            segment.keys.reserve_exact(more);
            segment.rows.reserve_exact(more);
        }
        segment.keys.insert(at, key);
        segment.rows.insert(at, row);
        self.len += 1;
        if segment.keys.len() > SEGMENT_KEYS && segment.depth < 64 {
            self.split(number, key);
        }
    }

    /// Forgets `key`; returns its row.
    pub(crate) fn remove(&mut self, key: u64) -> Option<u32> {
        let number = self.segment_of(key);
        let at = search(&self.segments[number].keys, key).ok()?;
        let segment = Arc::make_mut(&mut self.segments[number]);
        segment.keys.remove(at);
        let row = segment.rows.remove(at);
        if segment.keys.capacity() > segment.keys.len() + segment.keys.len() / 4 + 8 {
            segment.keys.shrink_to_fit();
            segment.rows.shrink_to_fit();
        }
        self.len -= 1;
        Some(row)
    }

    /// Splits segment `number` (which holds `key`) in two by its next key bit.
    fn split(&mut self, number: usize, key: u64) {
        let depth = self.segments[number].depth;
        if depth == self.depth && self.directory.len() * 2 > (self.len / 16).max(MIN_DIRECTORY) {
            // Keys crafted to share a long prefix must not blow the
            // directory up: past this size a segment grows instead.
            return;
        }
        if depth == self.depth {
            // Every entry doubles: entry e becomes 2e and 2e + 1.
            self.directory = self.directory.iter().flat_map(|&s| [s, s]).collect();
            self.depth += 1;
        }
        let old = &self.segments[number];
        let bit = 63 - depth;
        let cut = old.keys.partition_point(|key| (key >> bit) & 1 == 0);
        let half = |range: std::ops::Range<usize>| Segment {
            depth: depth + 1,
            keys: old.keys[range.clone()].to_vec(),
            rows: old.rows[range].to_vec(),
        };
        let (low, high) = (half(0..cut), half(cut..old.keys.len()));
        self.segments[number] = Arc::new(low);
        let high_number = u32::try_from(self.segments.len()).expect("fewer than 2^32 segments");
        self.segments.push(Arc::new(high));
        // The 2^(self.depth - depth) entries of the old segment: the second half take the high keys.
        let span = 1usize << (self.depth - depth);
        let first = ((key >> (64 - self.depth)) as usize) & !(span - 1);
        for slot in &mut self.directory[first + span / 2..first + span] {
            *slot = high_number;
        }
    }

    /// Every (key, row), in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        let mut previous = None;
        self.directory.iter().filter(move |&&number| previous.replace(number) != Some(number)).flat_map(|&number| {
            let segment = &self.segments[number as usize];
            segment.keys.iter().copied().zip(segment.rows.iter().copied())
        })
    }

    /// Heap bytes the index holds (segments shared with other versions counted in full).
    pub(crate) fn bytes(&self) -> usize {
        let segments: usize = self
            .segments
            .iter()
            .map(|s| size_of::<Segment>() + 16 + s.keys.capacity() * 8 + s.rows.capacity() * 4)
            .sum();
        segments + self.directory.capacity() * 4 + self.segments.capacity() * size_of::<Arc<Segment>>()
    }
}

/// Rows per page. A version copies 4 bytes per page (see [`crate::pages`])
/// and a delta copies a page per row it changes: at 16 rows, 5M users
/// make a 1.2 MB page table and a changed user row copies 2.4 KB.
const ROWS_PER_PAGE: usize = 16;
/// Item ids per id page: each is an `Arc` a version clone counts (at 16
/// ids a page, 1M items cost a version 62k of them), and changing an id
/// rewrites its page (a few kilobytes at 256).
const IDS_PER_PAGE: usize = 256;

/// The item ids of one page, joined.
#[derive(Debug, Clone, Default, PartialEq)]
struct IdPage {
    /// End of each slot's id in `text`.
    ends: Vec<u32>,
    text: String,
}

impl IdPage {
    fn new(rows: usize) -> Self {
        IdPage { ends: vec![0; rows], text: String::new() }
    }

    fn get(&self, slot: usize) -> &str {
        let start = if slot == 0 { 0 } else { self.ends[slot - 1] as usize };
        &self.text[start..self.ends[slot] as usize]
    }

    fn set(&mut self, slot: usize, id: &str) {
        if self.get(slot) == id {
            return;
        }
        let start = if slot == 0 { 0 } else { self.ends[slot - 1] as usize };
        let end = self.ends[slot] as usize;
        self.text.replace_range(start..end, id);
        let grown = id.len() as i64 - (end - start) as i64;
        for end in &mut self.ends[slot..] {
            *end = (i64::from(*end) + grown) as u32;
        }
    }
}

/// The rows of one table.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RowStore {
    table: TableKind,
    width: usize,
    /// Whether rows keep the time of their last update (users: the session rule).
    times: bool,
    per_page: usize,
    /// Pages of 32-bit words: times (two words each), then values.
    pages: PageTable,
    /// Items' id strings, [`IDS_PER_PAGE`] a page.
    ids: Vec<Arc<IdPage>>,
    /// Row positions ever used (live rows and holes).
    slots: usize,
    /// Holes left by removed rows, reused first.
    holes: Vec<u32>,
    index: KeyIndex,
}

/// A row as the store hands it out: a copy of its values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct StoredRow {
    values: [f32; MAX_WIDTH],
    width: usize,
    /// Trainer clock at the row's last update (users only; 0 otherwise).
    pub updated_ms: i64,
}

impl StoredRow {
    /// The row's values, laid out as [`RowLayout`] says.
    pub(crate) fn values(&self) -> &[f32] {
        &self.values[..self.width]
    }
}

impl RowStore {
    /// An empty table of `spec`'s `table` rows.
    pub(crate) fn new(spec: &ModelSpec, table: TableKind) -> Self {
        let width = RowLayout::new(table, spec.dim).width();
        let times = table == TableKind::User;
        let row_words = width + if times { 2 } else { 0 };
        let per_page = ROWS_PER_PAGE;
        RowStore {
            table,
            width,
            times,
            per_page,
            pages: PageTable::new(per_page * row_words),
            ids: Vec::new(),
            slots: 0,
            holes: Vec::new(),
            index: KeyIndex::default(),
        }
    }

    /// Live rows.
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// Row positions in use or free (the range a scan covers).
    pub(crate) fn slots(&self) -> usize {
        self.slots
    }

    /// Makes room for `rows` more rows in the page table, if memory allows.
    pub(crate) fn reserve(&mut self, rows: usize) {
        let pages = (self.slots + rows).div_ceil(self.per_page);
        self.pages.reserve(pages);
        if self.table.keeps_ids() {
            let pages = (self.slots + rows).div_ceil(IDS_PER_PAGE);
            let _ = self.ids.try_reserve_exact(pages.saturating_sub(self.ids.len()));
        }
    }

    /// The row position of `key`.
    #[inline]
    pub(crate) fn position(&self, key: u64) -> Option<u32> {
        self.index.get(key)
    }

    fn times_words(&self) -> usize {
        if self.times { 2 * self.per_page } else { 0 }
    }

    /// Values per row.
    pub(crate) fn width(&self) -> usize {
        self.width
    }

    /// Copies the values of the row at `position` (a live one: from
    /// [`Self::position`] or the index) into `out`, which holds at least
    /// [`Self::width`]; returns the time of its last update (users; else 0).
    #[inline]
    pub(crate) fn read(&self, position: u32, out: &mut [f32]) -> i64 {
        let (page, slot) = (position as usize / self.per_page, position as usize % self.per_page);
        let words = self.pages.page(page);
        let start = self.times_words() + slot * self.width;
        for (out, word) in out[..self.width].iter_mut().zip(&words[start..start + self.width]) {
            *out = f32::from_bits(word.load(Relaxed));
        }
        if self.times {
            (u64::from(words[2 * slot].load(Relaxed)) | (u64::from(words[2 * slot + 1].load(Relaxed)) << 32)) as i64
        } else {
            0
        }
    }

    /// The row at `position`.
    #[inline]
    pub(crate) fn row(&self, position: u32) -> StoredRow {
        let mut row = StoredRow { values: [0.0; MAX_WIDTH], width: self.width, updated_ms: 0 };
        row.updated_ms = self.read(position, &mut row.values);
        row
    }

    /// The row of `key`.
    pub(crate) fn get(&self, key: u64) -> Option<StoredRow> {
        self.position(key).map(|position| self.row(position))
    }

    /// The item id at `position` (empty for tables without ids).
    pub(crate) fn id(&self, position: u32) -> &str {
        match self.ids.get(position as usize / IDS_PER_PAGE) {
            Some(page) => page.get(position as usize % IDS_PER_PAGE),
            None => "",
        }
    }

    /// Every live row as (key, position), in key order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.index.iter()
    }

    /// Sets the row of `key`; returns its position and whether anything changed.
    pub(crate) fn set(&mut self, key: u64, id: Option<&str>, updated_ms: i64, values: Values<'_>) -> (u32, bool) {
        debug_assert_eq!(values.len(), self.width);
        let (position, fresh) = match self.index.get(key) {
            Some(position) => (position, false),
            None => {
                let position = self.allocate();
                self.index.insert(key, position);
                (position, true)
            }
        };
        if !fresh {
            let old = self.row(position);
            let same_values = values.equals(old.values());
            let same_id = !self.table.keeps_ids() || self.id(position) == id.unwrap_or_default();
            if same_values && same_id && (!self.times || old.updated_ms == updated_ms) {
                return (position, false);
            }
        }
        let (page, slot) = (position as usize / self.per_page, position as usize % self.per_page);
        let (width, times_words) = (self.width, self.times_words());
        let mut row = [0.0f32; MAX_WIDTH];
        values.copy_to(&mut row[..width]);
        let words = self.pages.page_mut(page);
        if self.times {
            words[2 * slot].store(updated_ms as u64 as u32, Relaxed);
            words[2 * slot + 1].store(((updated_ms as u64) >> 32) as u32, Relaxed);
        }
        let start = times_words + slot * width;
        for (word, value) in words[start..start + width].iter().zip(&row[..width]) {
            word.store(value.to_bits(), Relaxed);
        }
        if self.table.keeps_ids() {
            let (page, slot) = (position as usize / IDS_PER_PAGE, position as usize % IDS_PER_PAGE);
            Arc::make_mut(&mut self.ids[page]).set(slot, id.unwrap_or_default());
        }
        (position, true)
    }

    /// Ends this version's writing: from now on it is read (and shared) as
    /// it is, and the pages it replaced are freed once older versions go.
    pub(crate) fn seal(&mut self) {
        self.pages.seal();
    }

    /// Removes the row of `key`; returns the hole's position.
    pub(crate) fn remove(&mut self, key: u64) -> Option<u32> {
        let position = self.index.remove(key)?;
        self.holes.push(position);
        Some(position)
    }

    /// A free position: a hole, or a new one at the end.
    fn allocate(&mut self) -> u32 {
        if let Some(hole) = self.holes.pop() {
            return hole;
        }
        let position = self.slots;
        if position / self.per_page == self.pages.len() {
            self.pages.push();
        }
        if self.table.keeps_ids() && position / IDS_PER_PAGE == self.ids.len() {
            self.ids.push(Arc::new(IdPage::new(IDS_PER_PAGE)));
        }
        self.slots += 1;
        u32::try_from(position).expect("a table holds fewer than 2^32 rows")
    }

    /// Heap bytes of the rows and their index (shared pages counted in full).
    pub(crate) fn bytes(&self) -> usize {
        let ids: usize = self.ids.iter().map(|p| 64 + p.ends.capacity() * 4 + p.text.capacity()).sum();
        self.pages.bytes() + ids + self.index.bytes() + self.holes.capacity() * 4
    }
}

/// A row's values, decoded or as a chunk message holds them.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Values<'r> {
    Decoded(&'r [f32]),
    InPlace(LeValues<'r>),
}

impl Values<'_> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Values::Decoded(values) => values.len(),
            Values::InPlace(values) => values.len(),
        }
    }

    pub(crate) fn all_finite(&self) -> bool {
        match self {
            Values::Decoded(values) => values.iter().all(|v| v.is_finite()),
            Values::InPlace(values) => values.iter().all(f32::is_finite),
        }
    }

    /// Whether `stored` holds exactly these values.
    pub(crate) fn equals(&self, stored: &[f32]) -> bool {
        match self {
            Values::Decoded(values) => {
                values.len() == stored.len() && values.iter().zip(stored).all(|(a, b)| a.to_bits() == b.to_bits())
            }
            Values::InPlace(values) => values.equals(stored),
        }
    }

    pub(crate) fn copy_to(&self, out: &mut [f32]) {
        match self {
            Values::Decoded(values) => out.copy_from_slice(values),
            Values::InPlace(values) => values.copy_to(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn the_index_maps_every_key_through_splits_and_removals() {
        let mut index = KeyIndex::default();
        let mut reference = BTreeMap::new();
        let mut state = 7u64;
        for row in 0..20_000u32 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            index.insert(state, row);
            reference.insert(state, row);
        }
        assert!(index.depth > 4, "segments split");
        let removed: Vec<u64> = reference.keys().copied().step_by(3).collect();
        for key in &removed {
            assert_eq!(index.remove(*key), reference.remove(key));
        }
        assert_eq!(index.remove(removed[0]), None);
        assert_eq!(index.len(), reference.len());
        assert_eq!(index.iter().collect::<Vec<_>>(), reference.into_iter().collect::<Vec<_>>());
        assert!(index.bytes() < index.len() * 16, "{} bytes for {} keys", index.bytes(), index.len());
    }

    #[test]
    fn the_guessing_search_answers_as_a_binary_search_does() {
        let mut state = 11u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            state
        };
        let even: Vec<u64> = {
            let mut keys: Vec<u64> = (0..1000).map(|_| next()).collect();
            keys.sort_unstable();
            keys
        };
        // Skewed: most keys crowd one end, so guesses miss their window.
        let skewed: Vec<u64> = (0..1000u64).map(|i| if i < 990 { i * 3 } else { u64::MAX - (1000 - i) }).collect();
        for keys in [&even, &skewed] {
            let probes = keys.iter().flat_map(|&k| [k, k.wrapping_add(1), k.wrapping_sub(1)]).chain([0, u64::MAX]);
            for probe in probes.chain((0..1000).map(|_| next())) {
                assert_eq!(search(keys, probe), keys.binary_search(&probe), "{probe}");
            }
        }
    }

    #[test]
    fn a_cloned_index_keeps_its_keys_while_the_original_splits() {
        let mut index = KeyIndex::default();
        for key in 0..200u64 {
            index.insert(key.wrapping_mul(0x9e37_79b9_7f4a_7c15), key as u32);
        }
        let served = index.clone();
        for key in 200..5_000u64 {
            index.insert(key.wrapping_mul(0x9e37_79b9_7f4a_7c15), key as u32);
        }
        index.remove(7u64.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        assert!(index.depth > served.depth);
        assert_eq!(served.len(), 200);
        let expected: Vec<(u64, u32)> = {
            let mut pairs: Vec<(u64, u32)> =
                (0..200u64).map(|k| (k.wrapping_mul(0x9e37_79b9_7f4a_7c15), k as u32)).collect();
            pairs.sort_unstable();
            pairs
        };
        assert_eq!(served.iter().collect::<Vec<_>>(), expected, "the clone is unchanged");
        assert_eq!(index.len(), 4_999);
    }

    #[test]
    fn keys_sharing_a_long_prefix_cannot_blow_up_the_directory() {
        let mut index = KeyIndex::default();
        for low in 0..2_000u64 {
            index.insert((0xabcd_ef01 << 32) | low, low as u32);
        }
        assert!(index.directory.len() <= MIN_DIRECTORY, "{} directory entries", index.directory.len());
        assert_eq!(index.get((0xabcd_ef01 << 32) | 1_999), Some(1_999));
        assert_eq!(index.len(), 2_000);
    }

    #[test]
    fn a_clone_shares_until_written_and_never_changes_under_its_reader() {
        let spec = ModelSpec { dim: 8, ..ModelSpec::default() };
        let mut store = RowStore::new(&spec, TableKind::User);
        for key in 0..100u64 {
            store.set(key, None, key as i64, Values::Decoded(&[key as f32; 12]));
        }
        store.seal();
        let served = store.clone();
        let (position, changed) = store.set(5, None, 99, Values::Decoded(&[-1.0; 12]));
        assert!(changed);
        assert_eq!(
            store.set(5, None, 99, Values::Decoded(&[-1.0; 12])),
            (position, false),
            "same values: nothing to write"
        );
        assert_eq!(served.get(5).map(|r| (r.values()[0], r.updated_ms)), Some((5.0, 5)));
        assert_eq!(store.get(5).map(|r| (r.values()[0], r.updated_ms)), Some((-1.0, 99)));
        assert_eq!(store.pages.shared_with(&served.pages), store.pages.len() - 1, "one page copied");
    }

    #[test]
    fn holes_are_reused_and_ids_kept_per_slot() {
        let spec = ModelSpec { dim: 8, ..ModelSpec::default() };
        let mut items = RowStore::new(&spec, TableKind::Item);
        for key in 0..10u64 {
            items.set(key, Some(&format!("item-{key}")), 0, Values::Decoded(&[key as f32; 10]));
        }
        let hole = items.remove(3).expect("present");
        assert_eq!((items.len(), items.get(3)), (9, None));
        let (position, _) = items.set(42, Some("é-42"), 0, Values::Decoded(&[4.2; 10]));
        assert_eq!(position, hole);
        assert_eq!(items.id(position), "é-42");
        assert_eq!(items.id(items.position(4).expect("present")), "item-4");
        assert_eq!(items.slots(), 10);
        let keys: Vec<u64> = items.keys().map(|(key, _)| key).collect();
        assert_eq!(keys, [0, 1, 2, 4, 5, 6, 7, 8, 9, 42]);
    }
}
