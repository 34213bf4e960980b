//! A growable set of row indices, one bit per row.

/// One bit per index, packed 64 to a word.
#[derive(Debug, Clone, Default)]
pub(crate) struct BitSet {
    words: Vec<u64>,
    len: usize,
}

impl BitSet {
    /// Appends an index holding `value`.
    pub(crate) fn push(&mut self, value: bool) {
        if self.len % 64 == 0 {
            self.words.push(0);
        }
        self.len += 1;
        self.replace(self.len - 1, value);
    }

    /// The bit at `index`.
    pub(crate) fn get(&self, index: usize) -> bool {
        debug_assert!(index < self.len);
        self.words[index / 64] >> (index % 64) & 1 == 1
    }

    /// Sets the bit at `index` to `value`; returns its previous value.
    pub(crate) fn replace(&mut self, index: usize, value: bool) -> bool {
        debug_assert!(index < self.len);
        let (word, bit) = (&mut self.words[index / 64], 1u64 << (index % 64));
        let old = *word & bit != 0;
        if value {
            *word |= bit;
        } else {
            *word &= !bit;
        }
        old
    }

    /// Keeps the first `len` bits.
    pub(crate) fn truncate(&mut self, len: usize) {
        if len < self.len {
            self.len = len;
            self.words.truncate(len.div_ceil(64));
            if len % 64 != 0 {
                self.words[len / 64] &= (1u64 << (len % 64)) - 1;
            }
        }
    }

    /// Makes room for `additional` more bits.
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.words.reserve_exact((self.len + additional).div_ceil(64).saturating_sub(self.words.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_replace_truncate() {
        let mut bits = BitSet::default();
        for i in 0..130 {
            bits.push(i % 3 == 0);
        }
        assert!(bits.get(129) && !bits.get(128) && bits.get(0));
        assert!(!bits.replace(128, true));
        assert!(bits.replace(128, false));
        bits.truncate(65);
        bits.push(false);
        assert!(!bits.get(65) && bits.get(63));
        assert_eq!(bits.words.len(), 2);
    }
}
