//! Fixed-size pages of one table's rows, shared between the model versions
//! of one lineage without a reference count per page.
//!
//! Why: a version is a copy of the page table, and with a counted pointer
//! per page, making a version and freeing one touch every page's counter, a
//! cache miss apiece. Measured at 5M users (106k pages), that was 40% of the
//! time a delta took to apply. Here a version copies page numbers (4 bytes
//! each, contiguous) and never touches the pages it does not change.
//!
//! How pages are reclaimed instead. Versions of a lineage form a chain:
//! each is written once, by one writer, from the newest sealed one (its
//! *generation* numbers increase along the chain). A page the writer of
//! generation `g` replaced is reached only by tables of generations before
//! `g`; it is reused once no live table is of such a generation. Every live
//! table registers the generation it reaches, so that is a look at the
//! oldest registration. A table written from anything but the newest sealed
//! generation (a second writer, an older version) copies its pages into a
//! lineage of its own first: rare, and it keeps the chain a chain.
//!
//! **Invariant**: a page is written only by the writer that took it from the
//! free list in its open generation, before that generation is sealed; so a
//! page is never written while a reader can reach it. Pages are words of
//! `AtomicU32` read and written `Relaxed` (the swap of versions orders
//! them), so a bug in this bookkeeping could serve wrong numbers but can
//! never be undefined behaviour: the crate has no `unsafe`.
//!
//! Freed pages are kept for reuse by the lineage (not returned to the
//! allocator), so applying deltas neither allocates nor faults in memory
//! once the lineage has grown to its working size; all of it is released
//! when the lineage's last table goes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

/// The largest allocation of pages: large against the allocator's own
/// rounding of large blocks, so that little of the model's memory is lost
/// to it.
const CHUNK_BYTES: usize = 4 << 20;
/// The fewest pages in an allocation: chunks grow with the table, from this.
const MIN_CHUNK_PAGES: usize = 8;
/// Bits of a [`PageNumber`] that number the page within its chunk.
const SLOT_BITS: u32 = 18;

/// Pages back to back.
type Chunk = Arc<[AtomicU32]>;

/// Where a page lies: chunk `n >> SLOT_BITS`, page `n % 2^SLOT_BITS` of it.
type PageNumber = u32;

/// The words of page `number` among `chunks`.
#[inline]
fn words_of(chunks: &[Chunk], number: PageNumber, page_words: usize) -> &[AtomicU32] {
    let at = (number as usize & ((1 << SLOT_BITS) - 1)) * page_words;
    &chunks[(number >> SLOT_BITS) as usize][at..at + page_words]
}

/// The pages of one lineage and who reaches them.
#[derive(Debug)]
struct Lineage {
    page_words: usize,
    state: Mutex<LineageState>,
}

#[derive(Debug)]
struct LineageState {
    /// Every allocation (replaced by a longer list when one is added, so a
    /// version shares the list with one reference count, not one per chunk).
    chunks: Arc<[Chunk]>,
    /// Pages in them.
    pages: usize,
    /// Pages no table reaches, reused first.
    free: Vec<PageNumber>,
    /// How many live tables reach each generation.
    live: BTreeMap<u64, usize>,
    /// Per sealed generation, the pages its writer replaced (in generation order).
    retired: VecDeque<(u64, Vec<PageNumber>)>,
    /// The newest sealed generation (0: none yet).
    head: u64,
    /// Whether a generation is open for writing.
    writing: bool,
    /// The generation the next writer opens.
    next: u64,
    /// Page tables of dropped versions, for the next clones to fill: a
    /// version's page table is megabytes, and fresh memory costs faults.
    spare_tables: Vec<Vec<PageNumber>>,
}

/// Most page tables kept spare: a version being built, the served one and the one before.
const SPARE_TABLES: usize = 2;

impl Lineage {
    fn new(page_words: usize) -> Arc<Self> {
        let state = LineageState {
            chunks: Arc::new([]),
            pages: 0,
            free: Vec::new(),
            live: BTreeMap::new(),
            retired: VecDeque::new(),
            head: 0,
            writing: false,
            next: 1,
            spare_tables: Vec::new(),
        };
        Arc::new(Lineage { page_words, state: Mutex::new(state) })
    }

    fn lock(&self) -> MutexGuard<'_, LineageState> {
        // The state is consistent between statements: a panic elsewhere leaves nothing half-done.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl LineageState {
    fn register(&mut self, generation: u64) {
        *self.live.entry(generation).or_default() += 1;
    }

    fn release(&mut self, generation: u64) {
        if let Some(count) = self.live.get_mut(&generation) {
            *count -= 1;
            if *count == 0 {
                self.live.remove(&generation);
            }
        }
        self.collect();
    }

    /// Frees the pages replaced at generations no live table is older than.
    fn collect(&mut self) {
        let oldest = self.live.keys().next().copied().unwrap_or(u64::MAX);
        while self.retired.front().is_some_and(|(generation, _)| *generation <= oldest) {
            if let Some((_, pages)) = self.retired.pop_front() {
                self.free.extend(pages);
            }
        }
    }

    /// A page for the writer: a free one, or a new one.
    fn take(&mut self, page_words: usize) -> PageNumber {
        if let Some(page) = self.free.pop() {
            return page;
        }
        let largest = (CHUNK_BYTES / (4 * page_words)).clamp(1, 1 << SLOT_BITS);
        let pages = self.pages.clamp(MIN_CHUNK_PAGES, largest.max(MIN_CHUNK_PAGES)).min(1 << SLOT_BITS);
        let chunk = PageNumber::try_from(self.chunks.len())
            .ok()
            .filter(|&chunk| chunk < 1 << (PageNumber::BITS - SLOT_BITS))
            .expect("a table's pages fit in 2^14 chunks of up to 4 MiB");
        let fresh: Chunk = (0..pages * page_words).map(|_| AtomicU32::new(0)).collect();
        self.chunks = self.chunks.iter().cloned().chain([fresh]).collect();
        self.pages += pages;
        let number = |slot: usize| (chunk << SLOT_BITS) | slot as PageNumber;
        self.free.extend((1..pages).rev().map(number));
        number(0)
    }
}

/// The open generation of a table being written.
#[derive(Debug)]
struct Writing {
    generation: u64,
    /// Which of the table's pages this generation took (bit per page index).
    owned: Vec<u64>,
    /// The pages of the generation before that it replaced.
    replaced: Vec<PageNumber>,
}

impl Writing {
    fn owns(&self, index: usize) -> bool {
        self.owned.get(index / 64).is_some_and(|word| word & (1 << (index % 64)) != 0)
    }

    fn own(&mut self, index: usize) {
        if self.owned.len() <= index / 64 {
            self.owned.resize(index / 64 + 1, 0);
        }
        self.owned[index / 64] |= 1 << (index % 64);
    }
}

/// One table's pages, as one version sees them: page `i` is the `i`-th
/// block of `page_words` words.
#[derive(Debug)]
pub(crate) struct PageTable {
    lineage: Arc<Lineage>,
    /// The lineage's chunks (as they were when this table last took a page).
    chunks: Arc<[Chunk]>,
    pages: Vec<PageNumber>,
    /// The generation this table reaches, registered with the lineage.
    reach: u64,
    writing: Option<Writing>,
}

impl PageTable {
    /// An empty table of pages of `page_words` words, in a lineage of its own.
    pub(crate) fn new(page_words: usize) -> Self {
        let lineage = Lineage::new(page_words);
        lineage.lock().register(0);
        PageTable { lineage, chunks: Arc::new([]), pages: Vec::new(), reach: 0, writing: None }
    }

    /// Pages in the table.
    pub(crate) fn len(&self) -> usize {
        self.pages.len()
    }

    /// Words per page.
    pub(crate) fn page_words(&self) -> usize {
        self.lineage.page_words
    }

    /// Makes room for `pages` pages in the table itself.
    pub(crate) fn reserve(&mut self, pages: usize) {
        let _ = self.pages.try_reserve_exact(pages.saturating_sub(self.pages.len()));
    }

    /// Page `index`.
    #[inline]
    pub(crate) fn page(&self, index: usize) -> &[AtomicU32] {
        words_of(&self.chunks, self.pages[index], self.lineage.page_words)
    }

    /// Page `index`, to write: the page is this generation's own (copied
    /// from the version before if it was that version's).
    pub(crate) fn page_mut(&mut self, index: usize) -> &[AtomicU32] {
        self.open();
        if !self.writing.as_ref().is_some_and(|writing| writing.owns(index)) {
            let fresh = self.take();
            copy(self.page(index), self.page_of(fresh));
            let old = std::mem::replace(&mut self.pages[index], fresh);
            if let Some(writing) = &mut self.writing {
                writing.replaced.push(old);
                writing.own(index);
            }
        }
        self.page(index)
    }

    /// Appends a zeroed page.
    pub(crate) fn push(&mut self) {
        self.open();
        let fresh = self.take();
        for word in self.page_of(fresh) {
            word.store(0, Relaxed);
        }
        self.pages.push(fresh);
        let index = self.pages.len() - 1;
        if let Some(writing) = &mut self.writing {
            writing.own(index);
        }
    }

    /// Ends the open generation (if any): from now on the table only reads,
    /// and the pages it replaced are freed once no older version lives.
    pub(crate) fn seal(&mut self) {
        let Some(writing) = self.writing.take() else { return };
        let mut state = self.lineage.lock();
        state.writing = false;
        state.head = writing.generation;
        state.retired.push_back((writing.generation, writing.replaced));
        state.register(writing.generation);
        state.release(self.reach);
        self.reach = writing.generation;
    }

    /// Bytes of the pages this table reaches (shared ones counted in full)
    /// and of its page table.
    pub(crate) fn bytes(&self) -> usize {
        self.pages.len() * (4 * self.lineage.page_words + 4)
    }

    /// How many pages this table shares with `other`, page by page.
    #[cfg(test)]
    pub(crate) fn shared_with(&self, other: &PageTable) -> usize {
        if !Arc::ptr_eq(&self.lineage, &other.lineage) {
            return 0;
        }
        self.pages.iter().zip(&other.pages).filter(|(a, b)| a == b).count()
    }

    fn page_of(&self, number: PageNumber) -> &[AtomicU32] {
        words_of(&self.chunks, number, self.lineage.page_words)
    }

    /// Opens a generation for writing, unless one is open. Only the newest
    /// sealed generation is written from in place; anything else is copied
    /// to a lineage of its own first.
    fn open(&mut self) {
        if self.writing.is_some() {
            return;
        }
        let generation = {
            let mut state = self.lineage.lock();
            if !state.writing && state.head == self.reach {
                state.writing = true;
                state.next += 1;
                Some(state.next - 1)
            } else {
                None
            }
        };
        match generation {
            Some(generation) => self.writing = Some(Writing { generation, owned: Vec::new(), replaced: Vec::new() }),
            None => {
                *self = self.detached();
                self.open();
            }
        }
    }

    /// A copy of this table's pages in a lineage of its own.
    fn detached(&self) -> PageTable {
        let mut copy = PageTable::new(self.lineage.page_words);
        for index in 0..self.pages.len() {
            copy.push();
            self::copy(self.page(index), copy.page(index));
        }
        copy.seal();
        copy
    }

    /// A page from the lineage for the open generation.
    fn take(&mut self) -> PageNumber {
        let mut state = self.lineage.lock();
        let number = state.take(self.lineage.page_words);
        if self.chunks.len() < state.chunks.len() {
            self.chunks = Arc::clone(&state.chunks);
        }
        number
    }
}

fn copy(from: &[AtomicU32], to: &[AtomicU32]) {
    for (from, to) in from.iter().zip(to) {
        to.store(from.load(Relaxed), Relaxed);
    }
}

impl Clone for PageTable {
    /// Another table reaching the same pages. A table being written is
    /// copied instead: the pages its open generation owns are not sealed.
    fn clone(&self) -> Self {
        if self.writing.is_some() {
            return self.detached();
        }
        let mut pages = {
            let mut state = self.lineage.lock();
            state.register(self.reach);
            state.spare_tables.pop().unwrap_or_default()
        };
        pages.clear();
        pages.extend_from_slice(&self.pages);
        PageTable {
            lineage: Arc::clone(&self.lineage),
            chunks: Arc::clone(&self.chunks),
            pages,
            reach: self.reach,
            writing: None,
        }
    }
}

impl Drop for PageTable {
    fn drop(&mut self) {
        let mut state = self.lineage.lock();
        if let Some(writing) = self.writing.take() {
            // Never sealed: what it took no one else reaches.
            state.writing = false;
            let owned = self.pages.iter().enumerate().filter(|(index, _)| writing.owns(*index));
            let owned: Vec<PageNumber> = owned.map(|(_, &number)| number).collect();
            state.free.extend(owned);
        }
        state.release(self.reach);
        if state.spare_tables.len() < SPARE_TABLES {
            state.spare_tables.push(std::mem::take(&mut self.pages));
        }
    }
}

impl PartialEq for PageTable {
    /// Same pages' contents.
    fn eq(&self, other: &Self) -> bool {
        self.page_words() == other.page_words()
            && self.len() == other.len()
            && (0..self.len()).all(|index| {
                self.page(index).iter().zip(other.page(index)).all(|(a, b)| a.load(Relaxed) == b.load(Relaxed))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(table: &mut PageTable, index: usize, value: u32) {
        for word in table.page_mut(index) {
            word.store(value, Relaxed);
        }
    }

    fn read(table: &PageTable, index: usize) -> Vec<u32> {
        table.page(index).iter().map(|word| word.load(Relaxed)).collect()
    }

    fn free_pages(table: &PageTable) -> usize {
        table.lineage.lock().free.len()
    }

    /// A sealed version of one page of two words, each `value`.
    fn one_page(value: u32) -> PageTable {
        let mut table = PageTable::new(2);
        table.push();
        write(&mut table, 0, value);
        table.seal();
        table
    }

    #[test]
    fn a_version_never_changes_under_its_reader_and_its_pages_return_when_it_goes() {
        let mut table = PageTable::new(4);
        for index in 0..3 {
            table.push();
            write(&mut table, index, index as u32 + 1);
        }
        table.seal();
        let served = table.clone();
        let mut next = served.clone();
        drop(table);
        write(&mut next, 1, 20);
        write(&mut next, 1, 21);
        next.seal();
        assert_eq!(read(&served, 1), [2; 4], "the served version is untouched");
        assert_eq!(read(&next, 1), [21; 4]);
        assert_eq!((read(&next, 0), read(&next, 2)), (vec![1; 4], vec![3; 4]), "unchanged pages shared");
        let before = free_pages(&next);
        drop(served);
        assert_eq!(free_pages(&next), before + 1, "the replaced page is free once no older version lives");
        let mut third = next.clone();
        write(&mut third, 0, 30);
        assert_eq!(free_pages(&third), before, "and reused");
        third.seal();
        assert_eq!((read(&next, 0), read(&third, 0)), (vec![1; 4], vec![30; 4]));
    }

    #[test]
    fn an_old_version_keeps_pages_a_newer_one_replaced_until_it_goes() {
        let v1 = one_page(1);
        let mut v2 = v1.clone();
        write(&mut v2, 0, 2);
        v2.seal();
        let mut v3 = v2.clone();
        write(&mut v3, 0, 3);
        v3.seal();
        drop(v2);
        // v1's page was replaced at v2, v2's at v3: v1 still lives, so neither is free.
        let mut v4 = v3.clone();
        write(&mut v4, 0, 4);
        assert_eq!(read(&v1, 0), [1, 1], "v1 reads its own page");
        v4.seal();
        let free = free_pages(&v4);
        drop(v1);
        assert_eq!(free_pages(&v4), free + 2);
        assert_eq!(read(&v3, 0), [3, 3]);
        assert_eq!(read(&v4, 0), [4, 4]);
    }

    #[test]
    fn a_second_writer_or_an_old_version_written_gets_pages_of_its_own() {
        let base = one_page(1);
        let mut first = base.clone();
        let mut second = base.clone();
        write(&mut first, 0, 10);
        write(&mut second, 0, 20);
        assert!(!Arc::ptr_eq(&first.lineage, &second.lineage), "the second writer copied");
        first.seal();
        second.seal();
        let mut old = base.clone();
        write(&mut old, 0, 30);
        old.seal();
        assert_eq!(
            [read(&base, 0), read(&first, 0), read(&second, 0), read(&old, 0)],
            [[1, 1], [10, 10], [20, 20], [30, 30]]
        );
    }

    #[test]
    fn a_writer_dropped_before_sealing_gives_back_what_it_took() {
        let mut base = PageTable::new(2);
        base.push();
        base.seal();
        let free = free_pages(&base);
        let mut writer = base.clone();
        write(&mut writer, 0, 5);
        writer.push();
        assert_eq!(free_pages(&base), free - 2);
        drop(writer);
        assert_eq!(free_pages(&base), free);
        assert_eq!(read(&base, 0), [0, 0]);
        let mut next = base.clone();
        write(&mut next, 0, 6);
        assert!(Arc::ptr_eq(&next.lineage, &base.lineage), "the chain goes on from the head");
    }
}
