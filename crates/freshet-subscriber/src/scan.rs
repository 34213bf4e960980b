//! Top-k at catalog scale: a compact copy of every item's factors, 4 bits a
//! factor, scanned to find the few hundred best candidates, which are then
//! scored exactly with the one scoring function. Exact scores, exact order;
//! only the choice of candidates is approximate (see docs/serving.md for the
//! recall measured).
//!
//! Items are quantized one at a time with their own scale, in blocks of
//! [`BLOCK`] items laid out factor-major so the scan runs over contiguous
//! bytes in small integers: an AVX2 kernel (`vpmaddubsw`) where the CPU has
//! it, chosen at run time through `pulp`, else a loop the compiler
//! vectorises. Scales and biases are kept as bf16 (enough to choose
//! candidates; the re-rank is exact). Segments of blocks are shared
//! copy-on-write between model versions like the rows themselves, so the
//! scan index follows every delta at the cost of the segments it changes.

use std::sync::{Arc, Mutex};

use freshet_core::{Head, RowLayout, TableKind};

/// Items per block.
pub(crate) const BLOCK: usize = 64;
/// Factors per scan group: sums over a group stay inside `i16`.
const GROUP: usize = 32;
/// Largest magnitude of a quantized query factor: `15 · 63 · 32 < 2^15`.
const QUERY_MAX: f32 = 63.0;
/// Blocks per allocation (4,096 items, ~110 KB at dim 32): the scan streams
/// through each without a pointer to follow (every new allocation costs the
/// scan a stall, measured: 16 blocks a segment scanned 1M items 1.5x slower),
/// while a changed item copies only its own allocation.
const SEGMENT_BLOCKS: usize = 64;
/// Words before a block's codes: the live mask (2), then the scales and the
/// biases of both heads ([`BLOCK`] 16-bit values each).
const CODES_AT: usize = 2 + 3 * BLOCK / 2;
/// Where a block's 16-bit values start (in 16-bit units): scales, then the
/// rating head's biases, then the click head's.
const SCALES_AT: usize = 4;

/// The quantized factors and exact biases of [`BLOCK`] consecutive item
/// positions, in one allocation (one pointer to follow per block):
///
/// | words | content |
/// |---|---|
/// | `0..2` | which positions hold a live item (a `u64`, low word first) |
/// | `2..2 + BLOCK/2` | per item, the quantization scale (`bf16`: an `f32`'s upper half; 0 when empty) |
/// | `2 + BLOCK/2..2 + 3·BLOCK/2` | per head and item, the item's bias (`bf16`) |
/// | `CODES_AT..` | `codes[j · BLOCK + t]` (bytes): factors `j` (low nibble) and `j + 16` (high nibble) of group `j / 16` of item `t`, each `round(v / scale) + 8` clamped to 0..=15 |
type Segment = Arc<[u32]>;

fn live(block: &[u32]) -> u64 {
    u64::from(block[0]) | (u64::from(block[1]) << 32)
}

fn set_live(block: &mut [u32], mask: u64) {
    block[0] = mask as u32;
    block[1] = (mask >> 32) as u32;
}

/// The block's [`BLOCK`] 16-bit values of kind `kind` (0: scales, 1 + h: head h's biases).
fn halves(block: &[u32], kind: usize) -> &[u16; BLOCK] {
    let from = SCALES_AT + kind * BLOCK;
    bytemuck::cast_slice::<u32, u16>(&block[..CODES_AT])[from..from + BLOCK].try_into().expect("a block's values")
}

fn halves_mut(block: &mut [u32], kind: usize) -> &mut [u16] {
    let from = SCALES_AT + kind * BLOCK;
    &mut bytemuck::cast_slice_mut::<u32, u16>(&mut block[..CODES_AT])[from..from + BLOCK]
}

/// `x` as a bf16 (rounded to nearest; enough for choosing candidates).
fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// A bf16 as an f32 (exact).
#[inline(always)]
fn from_bf16(x: u16) -> f32 {
    f32::from_bits(u32::from(x) << 16)
}

/// The scan index of an item table, aligned with its row positions.
#[derive(Debug, Clone, Default)]
pub(crate) struct ItemScan {
    dim: usize,
    /// Code bytes per item: `ceil(dim / 2)`, padded to whole groups.
    half: usize,
    /// Words per block.
    block_words: usize,
    /// [`SEGMENT_BLOCKS`] blocks back to back, each laid out as [`Segment`] says.
    segments: Vec<Segment>,
    /// Segments the versions of this scan no longer use, shared by them.
    spare: Spare,
}

/// Most segments kept spare (~35 MB at dim 32): about what a delta that
/// changes a few hundred items of a million copies.
const MAX_SPARE: usize = 320;

/// Segments a dropped version alone held, reused by the next copy-on-write
/// instead of a new allocation: a delta that changes a few hundred items
/// copies as many segments, and fresh memory for each costs page faults
/// (a fifth of a delta's time, measured at 1M items).
#[derive(Debug, Clone, Default)]
struct Spare(Arc<Mutex<Vec<Segment>>>);

impl Spare {
    fn take(&self, words: usize) -> Option<Segment> {
        let mut spare = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        spare.pop().filter(|segment| segment.len() == words)
    }

    fn keep(&self, segments: impl Iterator<Item = Segment>) {
        let mut spare = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for segment in segments {
            if spare.len() < MAX_SPARE && Arc::strong_count(&segment) == 1 {
                spare.push(segment);
            }
        }
    }
}

impl Drop for ItemScan {
    fn drop(&mut self) {
        self.spare.keep(self.segments.drain(..));
    }
}

impl PartialEq for ItemScan {
    fn eq(&self, other: &Self) -> bool {
        (self.dim, self.half, self.block_words, &self.segments)
            == (other.dim, other.half, other.block_words, &other.segments)
    }
}

impl ItemScan {
    pub(crate) fn new(dim: usize) -> Self {
        let half = dim.div_ceil(GROUP) * GROUP / 2;
        ItemScan { dim, half, block_words: CODES_AT + half * BLOCK / 4, segments: Vec::new(), spare: Spare::default() }
    }

    /// The block holding `position`, and the position's slot in it.
    fn block(&self, position: u32) -> Option<(&[u32], usize)> {
        let (b, t) = (position as usize / BLOCK, position as usize % BLOCK);
        let segment = self.segments.get(b / SEGMENT_BLOCKS)?;
        let at = (b % SEGMENT_BLOCKS) * self.block_words;
        Some((&segment[at..at + self.block_words], t))
    }

    /// The block holding `position` to change (copied first if a served
    /// version shares it), and the slot; the block is created if need be.
    fn block_mut(&mut self, position: u32) -> (&mut [u32], usize) {
        let (b, t) = (position as usize / BLOCK, position as usize % BLOCK);
        while self.segments.len() <= b / SEGMENT_BLOCKS {
            self.segments.push(Arc::from(vec![0u32; SEGMENT_BLOCKS * self.block_words]));
        }
        let at = (b % SEGMENT_BLOCKS) * self.block_words;
        let words = self.block_words;
        let segment = &mut self.segments[b / SEGMENT_BLOCKS];
        if Arc::get_mut(segment).is_none()
            && let Some(mut copy) = self.spare.take(segment.len())
            && let Some(words) = Arc::get_mut(&mut copy)
        {
            words.copy_from_slice(segment);
            *segment = copy;
        }
        (&mut Arc::make_mut(segment)[at..at + words], t)
    }

    /// Indexes the item row `values` at `position` (replacing what was there).
    pub(crate) fn set(&mut self, position: u32, values: &[f32]) {
        let half = self.half;
        let (block, t) = self.block_mut(position);
        let factors = &values[TableKind::Item.scalars()..];
        let top = factors.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = if top > 0.0 { top / 7.5 } else { 1.0 };
        let code = |k: usize| match factors.get(k) {
            Some(v) => (v / scale + 8.0).round().clamp(0.0, 15.0) as u8,
            None => 8,
        };
        let codes: &mut [u8] = bytemuck::cast_slice_mut(&mut block[CODES_AT..]);
        for j in 0..half {
            let low = j % (GROUP / 2) + j / (GROUP / 2) * GROUP;
            codes[j * BLOCK + t] = code(low) | (code(low + GROUP / 2) << 4);
        }
        halves_mut(block, 0)[t] = to_bf16(scale);
        for head in Head::ALL {
            halves_mut(block, 1 + head.index())[t] = to_bf16(values[RowLayout::bias(head)]);
        }
        let mask = live(block) | 1 << t;
        set_live(block, mask);
    }

    /// Whether `position` holds a live item.
    pub(crate) fn is_live(&self, position: u32) -> bool {
        self.block(position).is_some_and(|(block, t)| live(block) & (1 << t) != 0)
    }

    /// Drops the item at `position` from the scan.
    pub(crate) fn clear(&mut self, position: u32) {
        if !self.is_live(position) {
            return;
        }
        let (block, t) = self.block_mut(position);
        let mask = live(block) & !(1 << t);
        set_live(block, mask);
        // An empty position scores 0 and rarely makes its block look worth a look.
        for kind in 0..3 {
            halves_mut(block, kind)[t] = 0;
        }
    }

    /// The positions of the best `count` items by approximate score for the
    /// query (`weight · bias[head] + ⟨vector, factors⟩`), skipping `excluded`
    /// (sorted).
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
        let quantized = Quantized::new(vector, self.half);
        #[cfg(target_arch = "x86_64")]
        let v3 = pulp::x86::V3::try_new();
        let scan = Scan {
            query: &quantized.query,
            pairs: &quantized.pairs,
            half: self.half,
            offset: quantized.offset,
            step: quantized.step,
            weight,
            head,
            #[cfg(target_arch = "x86_64")]
            v3,
        };
        // The scan is compiled for the best vector instructions this CPU has
        // (AVX2 on current x86), chosen at run time.
        // (With AVX2 the job runs inside the function `pulp` compiled for it,
        // where the kernel's intrinsics compile to single instructions.)
        let job = ScanJob { scan, segments: &self.segments, block_words: self.block_words, count, excluded };
        pulp::Arch::new().dispatch(job)
    }

    /// Heap bytes of the scan index.
    pub(crate) fn bytes(&self) -> usize {
        self.segments.len() * (16 + 4 * SEGMENT_BLOCKS * self.block_words + size_of::<Segment>())
    }

    /// The factor count indexed.
    #[cfg(test)]
    fn dim(&self) -> usize {
        self.dim
    }
}

/// A scan to run with the vector instructions [`pulp::Arch`] picked.
struct ScanJob<'a> {
    scan: Scan<'a>,
    segments: &'a [Segment],
    block_words: usize,
    count: usize,
    excluded: &'a [u32],
}

impl pulp::WithSimd for ScanJob<'_> {
    type Output = Vec<u32>;

    // Inlined into the function compiled for the chosen instruction set, so
    // the compiler vectorises the plain loops below with those instructions.
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) -> Vec<u32> {
        let blocks = self.segments.iter().flat_map(|segment| segment.chunks_exact(self.block_words));
        self.scan.run(blocks, self.count, self.excluded)
    }
}

/// A query vector quantized for the scan.
struct Quantized {
    /// Per factor, in the order the codes hold them: group g's factor j at
    /// g·GROUP + j (low nibbles), g·GROUP + GROUP/2 + j (high nibbles).
    query: Vec<i16>,
    /// Each code byte's (low, high) factor weights as one 16-bit pattern of
    /// two signed bytes, for the AVX2 kernel.
    pairs: Vec<i16>,
    /// What the codes' +8 bias adds to every sum.
    offset: i32,
    /// The value of one query unit.
    step: f32,
}

impl Quantized {
    fn new(vector: &[f32], half: usize) -> Self {
        let top = vector.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let step = if top > 0.0 { top / QUERY_MAX } else { 0.0 };
        let query: Vec<i16> = (0..half * 2)
            .map(|k| match vector.get(k) {
                Some(v) if step > 0.0 => (v / step).round().clamp(-QUERY_MAX, QUERY_MAX) as i16,
                _ => 0,
            })
            .collect();
        let offset: i32 = 8 * query.iter().map(|&q| i32::from(q)).sum::<i32>();
        let pairs: Vec<i16> = query
            .chunks_exact(GROUP)
            .flat_map(|group| {
                let (lows, highs) = group.split_at(GROUP / 2);
                lows.iter().zip(highs).map(|(&low, &high)| i16::from_le_bytes([low as i8 as u8, high as i8 as u8]))
            })
            .collect();
        Quantized { query, pairs, offset, step }
    }
}

/// One query's scan over the blocks.
struct Scan<'a> {
    query: &'a [i16],
    /// Per group and code row: the (low, high) weights as two bytes.
    pairs: &'a [i16],
    half: usize,
    offset: i32,
    step: f32,
    weight: f32,
    head: Head,
    /// AVX2 and friends, when the CPU has them.
    #[cfg(target_arch = "x86_64")]
    v3: Option<pulp::x86::V3>,
}

impl Scan<'_> {
    /// The best `count` live, not excluded positions. Candidates collect in
    /// a pool of up to twice `count`, trimmed to the best `count` when full
    /// (which raises the bar a score must pass), so each costs O(1).
    #[inline(always)]
    fn run<'b>(&self, blocks: impl Iterator<Item = &'b [u32]>, count: usize, excluded: &[u32]) -> Vec<u32> {
        let mut pool: Vec<(f32, u32)> = Vec::with_capacity(2 * count);
        let mut threshold = f32::NEG_INFINITY;
        let mut scores = [0.0f32; BLOCK];
        let by_score = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0);
        for (b, block) in blocks.enumerate() {
            let mask = live(block);
            if mask == 0 {
                continue;
            }
            self.score_block(block, &mut scores);
            // Which live items beat the bar: for most blocks none.
            let mut above = self.above(&scores, threshold) & mask;
            let base = (b * BLOCK) as u32;
            while above != 0 {
                let t = above.trailing_zeros() as usize;
                above &= above - 1;
                let score = scores[t];
                if score <= threshold {
                    continue; // the bar rose since the bits were taken
                }
                let position = base + t as u32;
                if excluded.binary_search(&position).is_ok() {
                    continue;
                }
                pool.push((score, position));
                if pool.len() == 2 * count {
                    pool.select_nth_unstable_by(count - 1, by_score);
                    pool.truncate(count);
                    threshold = pool[count - 1].0;
                }
            }
        }
        if pool.len() > count {
            pool.select_nth_unstable_by(count - 1, by_score);
            pool.truncate(count);
        }
        pool.into_iter().map(|(_, position)| position).collect()
    }

    /// Bit `t` set where `scores[t] > threshold`.
    #[inline(always)]
    fn above(&self, scores: &[f32; BLOCK], threshold: f32) -> u64 {
        #[cfg(target_arch = "x86_64")]
        if let Some(v3) = self.v3 {
            return avx2::above(v3, scores, threshold);
        }
        scores.iter().enumerate().fold(0u64, |bits, (t, &s)| bits | (u64::from(s > threshold) << t))
    }

    /// Approximate scores of one block's items.
    #[inline(always)]
    fn score_block(&self, block: &[u32], scores: &mut [f32; BLOCK]) {
        let mut total = [0i32; BLOCK];
        if self.step > 0.0 {
            let codes: &[u8] = bytemuck::cast_slice(&block[CODES_AT..]);
            let rows = codes.chunks_exact(GROUP / 2 * BLOCK);
            for (group, (rows, query)) in rows.zip(self.query.chunks_exact(GROUP)).enumerate() {
                debug_assert!(group < self.half / (GROUP / 2));
                let mut sums = [0i16; BLOCK];
                #[cfg(target_arch = "x86_64")]
                if let Some(v3) = self.v3 {
                    avx2::group_sums(v3, rows, &self.pairs[group * GROUP / 2..][..GROUP / 2], &mut sums);
                    for (total, sum) in total.iter_mut().zip(sums) {
                        *total += i32::from(sum);
                    }
                    continue;
                }
                let (lows, highs) = query.split_at(GROUP / 2);
                for ((row, &low), &high) in rows.chunks_exact(BLOCK).zip(lows).zip(highs) {
                    let row: &[u8; BLOCK] = row.try_into().expect("chunks of a block row");
                    for (sum, &code) in sums.iter_mut().zip(row) {
                        *sum = sum
                            .wrapping_add(i16::from(code & 15).wrapping_mul(low))
                            .wrapping_add(i16::from(code >> 4).wrapping_mul(high));
                    }
                }
                for (total, sum) in total.iter_mut().zip(sums) {
                    *total += i32::from(sum);
                }
            }
        }
        let (scale, bias) = (halves(block, 0), halves(block, 1 + self.head.index()));
        for t in 0..BLOCK {
            scores[t] =
                self.weight * from_bf16(bias[t]) + (total[t] - self.offset) as f32 * (from_bf16(scale[t]) * self.step);
        }
    }
}

/// The group sums with AVX2: `vpmaddubsw` multiplies each code byte's two
/// nibbles by their factor weights and adds them in one instruction.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{__m256, __m256i, _CMP_GT_OQ};

    use pulp::x86::V3;

    use super::BLOCK;

    /// Bit `t` set where `scores[t] > threshold`, eight compares at a time.
    #[inline(always)]
    pub(super) fn above(v3: V3, scores: &[f32; BLOCK], threshold: f32) -> u64 {
        let bar = v3.avx._mm256_set1_ps(threshold);
        scores.chunks_exact(8).enumerate().fold(0u64, |bits, (c, eight)| {
            let eight: [f32; 8] = eight.try_into().expect("eight scores");
            let eight: __m256 = bytemuck::cast(eight);
            let over = v3.avx._mm256_movemask_ps(v3.avx._mm256_cmp_ps::<_CMP_GT_OQ>(eight, bar));
            bits | (u64::from(over as u8) << (8 * c))
        })
    }

    /// `Σ_j low_j · q_low_j + high_j · q_high_j` over a group's code rows, per
    /// item of the block, in item order (`pairs` holds `q_low, q_high` bytes).
    #[inline(always)]
    pub(super) fn group_sums(v3: V3, rows: &[u8], pairs: &[i16], sums: &mut [i16; BLOCK]) {
        let (avx, avx2) = (v3.avx, v3.avx2);
        let nibble = avx._mm256_set1_epi8(0x0f);
        let mut acc = [avx._mm256_setzero_si256(); 4];
        for (row, &pair) in rows.chunks_exact(BLOCK).zip(pairs) {
            let weights = avx._mm256_set1_epi16(pair);
            for (half, codes) in row.chunks_exact(32).enumerate() {
                let codes: [u8; 32] = codes.try_into().expect("32 code bytes");
                let codes: __m256i = bytemuck::cast(codes);
                let low = avx2._mm256_and_si256(codes, nibble);
                let high = avx2._mm256_and_si256(avx2._mm256_srli_epi16::<4>(codes), nibble);
                let first = avx2._mm256_maddubs_epi16(avx2._mm256_unpacklo_epi8(low, high), weights);
                let second = avx2._mm256_maddubs_epi16(avx2._mm256_unpackhi_epi8(low, high), weights);
                acc[2 * half] = avx2._mm256_add_epi16(acc[2 * half], first);
                acc[2 * half + 1] = avx2._mm256_add_epi16(acc[2 * half + 1], second);
            }
        }
        // The unpacks work within 128-bit lanes: of the 32 items of a half,
        // the first sum holds items 0..8 and 16..24, the second 8..16 and 24..32.
        for half in 0..2 {
            let first: [i16; 16] = bytemuck::cast(acc[2 * half]);
            let second: [i16; 16] = bytemuck::cast(acc[2 * half + 1]);
            let items = &mut sums[32 * half..32 * half + 32];
            items[..8].copy_from_slice(&first[..8]);
            items[16..24].copy_from_slice(&first[8..]);
            items[8..16].copy_from_slice(&second[..8]);
            items[24..].copy_from_slice(&second[8..]);
        }
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
    fn a_dropped_version_s_own_segments_are_reused_by_the_next_copy() {
        let row = |v: f32| [0.0, 0.0].into_iter().chain(std::iter::repeat_n(v, 8)).collect::<Vec<f32>>();
        let mut served = ItemScan::new(8);
        for position in 0..(2 * SEGMENT_BLOCKS * BLOCK) as u32 {
            served.set(position, &row(1.0));
        }
        let mut next = served.clone();
        next.set(0, &row(2.0));
        assert_eq!(next.spare.0.lock().map(|s| s.len()).ok(), Some(0));
        drop(served);
        // The served version alone held its first segment (the next copied it); the second is shared.
        assert_eq!(next.spare.0.lock().map(|s| s.len()).ok(), Some(1));
        let mut third = next.clone();
        third.set(1, &row(3.0));
        assert_eq!(third.spare.0.lock().map(|s| s.len()).ok(), Some(0), "the spare segment took the copy");
        let decoded = |scan: &ItemScan, position| scan.block(position).map(|(block, t)| halves(block, 0)[t]);
        assert_eq!(decoded(&next, 1), decoded(&next, 2), "the version read is unchanged");
        assert_ne!(decoded(&third, 1), decoded(&third, 2));
        assert!(third.is_live(5) && third.is_live(0));
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
                let candidates = scan.candidates(head, 1.5, &vector, 200, &[11, 12]);
                assert_eq!(candidates.len(), 200);
                assert!(![7, 11, 12].iter().any(|p| candidates.contains(p)), "cleared and excluded");
                let mut ranked: Vec<u32> = (0..3_000u32).filter(|p| ![7, 11, 12].contains(p)).collect();
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

    /// The AVX2 kernel computes exactly what the portable loop computes.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_kernel_equals_the_portable_loop() {
        let Some(v3) = pulp::x86::V3::try_new() else { return };
        for dim in [8usize, 32, 40, 64] {
            let mut state = 3 + dim as u64;
            let mut scan = ItemScan::new(dim);
            for position in 0..(2 * BLOCK as u32 + 5) {
                let row: Vec<f32> = (0..2 + dim).map(|_| noise(&mut state)).collect();
                scan.set(position, &row);
            }
            let vector: Vec<f32> = (0..dim).map(|_| noise(&mut state)).collect();
            let quantized = Quantized::new(&vector, scan.half);
            let scan_with = |v3| Scan {
                query: &quantized.query,
                pairs: &quantized.pairs,
                half: scan.half,
                offset: quantized.offset,
                step: quantized.step,
                weight: 1.25,
                head: Head::Click,
                v3,
            };
            for block in scan.segments.iter().flat_map(|s| s.chunks_exact(scan.block_words)) {
                let (mut portable, mut fast) = ([0.0f32; BLOCK], [0.0f32; BLOCK]);
                scan_with(None).score_block(block, &mut portable);
                scan_with(Some(v3)).score_block(block, &mut fast);
                assert_eq!(portable.map(f32::to_bits), fast.map(f32::to_bits), "dim {dim}");
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
