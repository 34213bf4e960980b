//! Top-k at catalog scale: a compact copy of every item's factors, 4 bits a
//! factor, scanned to find the few hundred best candidates, which are then
//! scored exactly with the one scoring function. Exact scores, exact order;
//! only the choice of candidates is approximate (see docs/serving.md for the
//! recall measured).
//!
//! Items are quantized one at a time with their own scale, in blocks of
//! [`BLOCK`] items laid out factor-major so the scan runs over contiguous
//! bytes in small integers the compiler vectorises. Blocks are shared
//! copy-on-write between model versions like the rows themselves, so the
//! scan index follows every delta at the cost of the items it changes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use freshet_core::{Head, RowLayout, TableKind};

/// Items per block.
pub(crate) const BLOCK: usize = 32;
/// Factors per scan group: sums over a group stay inside `i16`.
const GROUP: usize = 32;
/// Largest magnitude of a quantized query factor: `15 · 63 · 32 < 2^15`.
const QUERY_MAX: f32 = 63.0;

/// The quantized factors and exact biases of [`BLOCK`] consecutive item positions.
#[derive(Debug, Clone, PartialEq)]
struct Block {
    /// `codes[j · BLOCK + t]`: factors `j` (low nibble) and `j + half` (high
    /// nibble) of item `t`, each `round(v / scale) + 8`, clamped to 0..=15.
    codes: Vec<u8>,
    /// Per item: the quantization scale, 0 for an empty position.
    scale: [f32; BLOCK],
    /// Per head and item: the item's exact bias.
    bias: [[f32; BLOCK]; 2],
    /// Which positions hold a live item.
    live: u32,
}

/// The scan index of an item table, aligned with its row positions.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct ItemScan {
    dim: usize,
    /// Code bytes per item: `ceil(dim / 2)`, padded to whole groups.
    half: usize,
    blocks: Vec<Arc<Block>>,
}

impl ItemScan {
    pub(crate) fn new(dim: usize) -> Self {
        let half = dim.div_ceil(GROUP) * GROUP / 2;
        ItemScan { dim, half, blocks: Vec::new() }
    }

    /// Indexes the item row `values` at `position` (replacing what was there).
    pub(crate) fn set(&mut self, position: u32, values: &[f32]) {
        let (b, t) = (position as usize / BLOCK, position as usize % BLOCK);
        while self.blocks.len() <= b {
            let block =
                Block { codes: vec![0; self.half * BLOCK], scale: [0.0; BLOCK], bias: [[0.0; BLOCK]; 2], live: 0 };
            self.blocks.push(Arc::new(block));
        }
        let block = Arc::make_mut(&mut self.blocks[b]);
        let factors = &values[TableKind::Item.scalars()..];
        let top = factors.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = if top > 0.0 { top / 7.5 } else { 1.0 };
        let code = |k: usize| match factors.get(k) {
            Some(v) => (v / scale + 8.0).round().clamp(0.0, 15.0) as u8,
            None => 8,
        };
        for j in 0..self.half {
            let (low, high) =
                (j % (GROUP / 2) + j / (GROUP / 2) * GROUP, j % (GROUP / 2) + j / (GROUP / 2) * GROUP + GROUP / 2);
            block.codes[j * BLOCK + t] = code(low) | (code(high) << 4);
        }
        block.scale[t] = scale;
        for head in Head::ALL {
            block.bias[head.index()][t] = values[RowLayout::bias(head)];
        }
        block.live |= 1 << t;
    }

    /// Whether `position` holds a live item.
    pub(crate) fn is_live(&self, position: u32) -> bool {
        let (b, t) = (position as usize / BLOCK, position as usize % BLOCK);
        self.blocks.get(b).is_some_and(|block| block.live & (1 << t) != 0)
    }

    /// Drops the item at `position` from the scan.
    pub(crate) fn clear(&mut self, position: u32) {
        let (b, t) = (position as usize / BLOCK, position as usize % BLOCK);
        if let Some(block) = self.blocks.get_mut(b) {
            Arc::make_mut(block).live &= !(1 << t);
        }
    }

    /// The positions of the best `count` items by approximate score for the
    /// query (`weight · bias[head] + ⟨vector, factors⟩`), skipping `excluded`.
    pub(crate) fn candidates(
        &self,
        head: Head,
        weight: f32,
        vector: &[f32],
        count: usize,
        excluded: &[u32],
    ) -> Vec<u32> {
        if count == 0 {
            return Vec::new();
        }
        let top = vector.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let step = if top > 0.0 { top / QUERY_MAX } else { 0.0 };
        // The query in the order the codes hold it: group g's factor j at
        // g·GROUP + j (low nibbles), g·GROUP + GROUP/2 + j (high nibbles).
        let query: Vec<i16> = (0..self.half * 2)
            .map(|k| match vector.get(k) {
                Some(v) if step > 0.0 => (v / step).round() as i16,
                _ => 0,
            })
            .collect();
        let offset: i32 = 8 * query.iter().map(|&q| i32::from(q)).sum::<i32>();
        let mut best: BinaryHeap<Reverse<(Ordered, u32)>> = BinaryHeap::with_capacity(count + 1);
        let mut scores = [0.0f32; BLOCK];
        for (b, block) in self.blocks.iter().enumerate() {
            if block.live == 0 {
                continue;
            }
            score_block(block, &query, self.half, offset, step, weight, &block.bias[head.index()], &mut scores);
            let base = (b * BLOCK) as u32;
            for (t, &score) in scores.iter().enumerate() {
                if block.live & (1 << t) == 0 {
                    continue;
                }
                if best.len() == count && best.peek().is_some_and(|Reverse((worst, _))| score <= worst.0) {
                    continue;
                }
                let position = base + t as u32;
                if excluded.contains(&position) {
                    continue;
                }
                if best.len() == count {
                    best.pop();
                }
                best.push(Reverse((Ordered(score), position)));
            }
        }
        best.into_iter().map(|Reverse((_, position))| position).collect()
    }

    /// Heap bytes of the scan index.
    pub(crate) fn bytes(&self) -> usize {
        self.blocks.len() * (size_of::<Block>() + 16 + self.half * BLOCK + size_of::<Arc<Block>>())
    }

    /// The factor count indexed.
    #[cfg(test)]
    fn dim(&self) -> usize {
        self.dim
    }
}

/// Approximate scores of one block's items.
#[allow(clippy::too_many_arguments)]
#[inline]
fn score_block(
    block: &Block,
    query: &[i16],
    half: usize,
    offset: i32,
    step: f32,
    weight: f32,
    bias: &[f32; BLOCK],
    scores: &mut [f32; BLOCK],
) {
    let mut total = [0i32; BLOCK];
    if step > 0.0 {
        for group in 0..half / (GROUP / 2) {
            let mut sums = [0i16; BLOCK];
            for j in 0..GROUP / 2 {
                let (low, high) = (query[group * GROUP + j], query[group * GROUP + GROUP / 2 + j]);
                let codes: &[u8; BLOCK] =
                    block.codes[(group * GROUP / 2 + j) * BLOCK..][..BLOCK].try_into().expect("a block row");
                for t in 0..BLOCK {
                    let code = codes[t];
                    sums[t] = sums[t]
                        .wrapping_add(i16::from(code & 15).wrapping_mul(low))
                        .wrapping_add(i16::from(code >> 4).wrapping_mul(high));
                }
            }
            for t in 0..BLOCK {
                total[t] += i32::from(sums[t]);
            }
        }
    }
    for t in 0..BLOCK {
        scores[t] = weight * bias[t] + (total[t] - offset) as f32 * (block.scale[t] * step);
    }
}

/// An f32 ordered totally.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ordered(f32);

impl Eq for Ordered {}

impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ordered {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random value in [-1, 1).
    fn noise(state: &mut u64) -> f32 {
        *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn exact(row: &[f32], head: Head, weight: f32, vector: &[f32]) -> f32 {
        weight * row[head.index()] + row[2..].iter().zip(vector).map(|(a, b)| a * b).sum::<f32>()
    }

    #[test]
    fn candidates_hold_the_exact_best_items() {
        for dim in [8usize, 32, 33, 64] {
            let mut state = dim as u64;
            let rows: Vec<Vec<f32>> = (0..3_000).map(|_| (0..2 + dim).map(|_| noise(&mut state)).collect()).collect();
            let mut scan = ItemScan::new(dim);
            for (position, row) in rows.iter().enumerate() {
                scan.set(position as u32, row);
            }
            assert_eq!(scan.dim(), dim);
            scan.clear(7);
            let vector: Vec<f32> = (0..dim).map(|_| noise(&mut state)).collect();
            for head in Head::ALL {
                let candidates = scan.candidates(head, 1.5, &vector, 200, &[11]);
                assert_eq!(candidates.len(), 200);
                assert!(!candidates.contains(&7) && !candidates.contains(&11), "cleared and excluded");
                let mut ranked: Vec<u32> = (0..3_000u32).filter(|p| ![7, 11].contains(p)).collect();
                ranked.sort_by(|&a, &b| {
                    exact(&rows[b as usize], head, 1.5, &vector).total_cmp(&exact(
                        &rows[a as usize],
                        head,
                        1.5,
                        &vector,
                    ))
                });
                let found = ranked[..10].iter().filter(|p| candidates.contains(p)).count();
                assert_eq!(found, 10, "dim {dim} {head:?}: the exact top 10 are among the candidates");
            }
        }
    }

    #[test]
    fn a_zero_query_ranks_by_bias() {
        let mut scan = ItemScan::new(8);
        for position in 0..100u32 {
            let mut row = vec![position as f32, -(position as f32)];
            row.extend([0.5; 8]);
            scan.set(position, &row);
        }
        let mut best = scan.candidates(Head::Rating, 1.0, &[0.0; 8], 3, &[]);
        best.sort_unstable();
        assert_eq!(best, [97, 98, 99]);
        let mut best = scan.candidates(Head::Click, 1.0, &[0.0; 8], 2, &[0]);
        best.sort_unstable();
        assert_eq!(best, [1, 2]);
    }
}
