//! The float storage of a table: a growable `f32` buffer in anonymous memory
//! that asks the kernel for transparent huge pages (Linux). Rows are read at
//! random across hundreds of megabytes, so with 4 KiB pages nearly every row
//! access also misses the TLB and walks the page tables; with 2 MiB pages the
//! translations of a whole table fit in the TLB.

use std::ops::{Deref, DerefMut};

use memmap2::MmapMut;

/// Bytes per float.
const FLOAT: usize = std::mem::size_of::<f32>();
/// Smallest mapping, in floats (one 4 KiB page).
const MIN_CAPACITY: usize = 1024;
/// Mappings at least this large (bytes) ask for huge pages.
const HUGE_PAGE: usize = 2 << 20;

/// A `Vec<f32>`-like buffer (length ≤ capacity, amortised doubling) backed
/// by an anonymous memory mapping. Dereferences to the used floats.
#[derive(Default)]
pub(crate) struct Arena {
    map: Option<MmapMut>,
    len: usize,
}

impl Arena {
    /// Floats the current mapping holds.
    pub(crate) fn capacity(&self) -> usize {
        self.map.as_ref().map_or(0, |map| map.len() / FLOAT)
    }

    /// Appends `count` zeros.
    pub(crate) fn push_zeros(&mut self, count: usize) {
        let len = self.len + count;
        if len > self.capacity() {
            self.reallocate(len.max(2 * self.capacity()).max(MIN_CAPACITY));
        }
        let start = self.len;
        self.len = len;
        // A fresh mapping is zeroed, but floats left by `truncate` are not.
        self[start..].fill(0.0);
    }

    /// Keeps the first `len` floats.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Makes room for exactly `additional` more floats.
    pub(crate) fn reserve_exact(&mut self, additional: usize) {
        if self.len + additional > self.capacity() {
            self.reallocate(self.len + additional);
        }
    }

    /// Moves the floats into a new mapping of `capacity` floats.
    fn reallocate(&mut self, capacity: usize) {
        let bytes = capacity.checked_mul(FLOAT).expect("arena size overflows usize");
        let mut map = MmapMut::map_anon(bytes).expect("out of memory: cannot map a table arena");
        #[cfg(target_os = "linux")]
        if bytes >= HUGE_PAGE {
            // Only advice: without huge pages the arena works the same, slower.
            let _ = map.advise(memmap2::Advice::HugePage);
        }
        let used = self.len * FLOAT;
        if let Some(old) = &self.map {
            map[..used].copy_from_slice(&old[..used]);
        }
        self.map = Some(map);
    }
}

impl Deref for Arena {
    type Target = [f32];

    #[inline]
    fn deref(&self) -> &[f32] {
        match &self.map {
            Some(map) => bytemuck::cast_slice(&map[..self.len * FLOAT]),
            None => &[],
        }
    }
}

impl DerefMut for Arena {
    #[inline]
    fn deref_mut(&mut self) -> &mut [f32] {
        match &mut self.map {
            Some(map) => bytemuck::cast_slice_mut(&mut map[..self.len * FLOAT]),
            None => &mut [],
        }
    }
}

impl Clone for Arena {
    fn clone(&self) -> Self {
        let mut copy = Arena::default();
        copy.reserve_exact(self.len);
        copy.len = self.len;
        copy.copy_from_slice(self);
        copy
    }
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena").field("len", &self.len).field("capacity", &self.capacity()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_truncates_and_clones_like_a_vec() {
        let mut arena = Arena::default();
        assert!(arena.is_empty());
        for i in 0..3000 {
            arena.push_zeros(1);
            arena[i] = i as f32;
        }
        assert_eq!(arena.len(), 3000);
        assert!(arena.capacity() >= 3000);
        arena.truncate(10);
        arena.push_zeros(5);
        assert_eq!(&arena[8..], &[8.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let copy = arena.clone();
        assert_eq!(&copy[..], &arena[..]);
        arena.reserve_exact(1 << 20);
        assert!(arena.capacity() >= 15 + (1 << 20));
        assert_eq!(&arena[..], &copy[..]);
    }
}
