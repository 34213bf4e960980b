//! Progressive (predict-then-train) metrics: RMSE and MAE of the rating head,
//! log loss and AUC of the click head, each over a sliding window of the
//! latest events of that head and over everything seen.
//!
//! AUC ranks logits in [`AUC_BINS`] equal bins over [−[`AUC_LOGIT_RANGE`],
//! +[`AUC_LOGIT_RANGE`]]; pairs inside one bin count half. The pair count is
//! kept exactly, in integers, with Fenwick trees, so adding or removing an
//! event costs O(log bins) and the result never drifts.

use freshet_core::record::{RecordError, RecordReader, RecordWriter};
use freshet_core::snapshot::SnapshotMetrics;
use serde::{Deserialize, Serialize};

use freshet_core::Head;

/// Number of score bins of the AUC.
pub const AUC_BINS: usize = 4096;
/// Logits beyond ± this fall into the outermost AUC bins.
pub const AUC_LOGIT_RANGE: f32 = 16.0;
/// Probabilities are clamped to [ε, 1−ε] in the log loss.
const LOGLOSS_EPSILON: f64 = 1e-7;

/// Error statistics of the rating head over some span of events.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RatingStats {
    /// Events in the span.
    pub count: u64,
    /// Root mean squared error of the clipped predictions (`None` without events).
    pub rmse: Option<f64>,
    /// Mean absolute error (`None` without events).
    pub mae: Option<f64>,
}

/// Statistics of the click head over some span of events.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ClickStats {
    /// Events in the span.
    pub count: u64,
    /// Mean log loss (`None` without events).
    pub logloss: Option<f64>,
    /// Area under the ROC curve (`None` unless both outcomes were seen).
    pub auc: Option<f64>,
}

/// The progressive metrics at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct MetricsReading {
    /// Rating head over the sliding window.
    pub rating_window: RatingStats,
    /// Rating head over every event.
    pub rating_cumulative: RatingStats,
    /// Click head over the sliding window.
    pub click_window: ClickStats,
    /// Click head over every event.
    pub click_cumulative: ClickStats,
}

impl MetricsReading {
    /// The figures a snapshot header carries (windowed quality, cumulative counts).
    pub fn snapshot_metrics(&self) -> SnapshotMetrics {
        SnapshotMetrics {
            rating_events: self.rating_cumulative.count,
            rating_rmse: self.rating_window.rmse,
            rating_mae: self.rating_window.mae,
            click_events: self.click_cumulative.count,
            click_logloss: self.click_window.logloss,
            click_auc: self.click_window.auc,
        }
    }
}

/// Running sums of the progressive metrics. Serialisable, so a restored
/// trainer continues the same windows and totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressiveMetrics {
    rating: RatingMetrics,
    click: ClickMetrics,
}

impl ProgressiveMetrics {
    /// Empty metrics with a sliding window of `window` events per head.
    pub fn new(window: usize) -> Self {
        ProgressiveMetrics { rating: RatingMetrics::new(window), click: ClickMetrics::new(window) }
    }

    /// Records one prediction of `head`: `prediction` is what the head
    /// answers (clipped rating, or probability), `score` the raw score.
    /// Non-finite values are not recorded.
    pub(crate) fn record(&mut self, head: Head, score: f32, prediction: f32, target: f32) {
        if !(score.is_finite() && prediction.is_finite() && target.is_finite()) {
            return;
        }
        match head {
            Head::Rating => self.rating.record(prediction - target),
            Head::Click => self.click.record(score, prediction, target >= 0.5),
        }
    }

    /// The metrics now.
    pub fn snapshot(&self) -> MetricsReading {
        MetricsReading {
            rating_window: self.rating.window_stats(),
            rating_cumulative: self.rating.cumulative_stats(),
            click_window: self.click.window_stats(),
            click_cumulative: self.click.cumulative_stats(),
        }
    }

    /// The loss the learning-rate schedule watches: windowed rating MSE plus
    /// windowed click log loss, over the heads with events in their window.
    pub(crate) fn window_loss(&self) -> Option<f64> {
        let rating = self.rating.window_mse();
        let click = self.click.window.mean_logloss();
        match (rating, click) {
            (None, None) => None,
            (r, c) => Some(r.unwrap_or(0.0) + c.unwrap_or(0.0)),
        }
    }
}

/// The cumulative figures of several progressive metrics taken together,
/// as if one had scored every event they scored (the shards of a model):
/// the sums and the AUC bins are added, so the result is exact.
pub fn cumulative_of<'a>(parts: impl IntoIterator<Item = &'a ProgressiveMetrics>) -> (RatingStats, ClickStats) {
    let (mut count, mut sum_sq, mut sum_abs) = (0u64, 0.0f64, 0.0f64);
    let (mut clicks, mut logloss) = (0u64, 0.0f64);
    let (mut positives, mut negatives) = (vec![0u64; AUC_BINS], vec![0u64; AUC_BINS]);
    for part in parts {
        let rating = &part.rating;
        count += rating.count;
        sum_sq += rating.sum_sq;
        sum_abs += rating.sum_abs;
        let span = &part.click.cumulative;
        clicks += span.count;
        logloss += span.logloss;
        for (total, tree) in [(&mut positives, &span.auc.positives), (&mut negatives, &span.auc.negatives)] {
            total.iter_mut().zip(tree.counts()).for_each(|(t, n)| *t += n);
        }
    }
    let merged = ClickSpan { count: clicks, logloss, auc: BinnedAuc::from_bins(&positives, &negatives) };
    (error_stats(count, sum_sq, sum_abs), merged.stats())
}

impl ProgressiveMetrics {
    /// Writes the running sums field by field (see docs/checkpoint.md).
    pub fn write_record(&self, w: &mut RecordWriter) {
        let ProgressiveMetrics { rating, click } = self;
        let RatingMetrics { count, sum_sq, sum_abs, window, window_sq, window_abs } = rating;
        w.u64(*count);
        w.f64(*sum_sq);
        w.f64(*sum_abs);
        w.f64(*window_sq);
        w.f64(*window_abs);
        window.write_record(w, |w, &error| w.f32(error));
        let ClickMetrics { cumulative, window, ring } = click;
        cumulative.write_record(w);
        window.write_record(w);
        ring.write_record(w, |w, entry| {
            let ClickEntry { logloss, bin, clicked } = *entry;
            w.f32(logloss);
            w.u16(bin);
            w.bool(clicked);
        });
    }

    /// Reads what [`ProgressiveMetrics::write_record`] wrote, checking that
    /// the windows and the AUC bins are consistent.
    pub fn read_record(r: &mut RecordReader<'_>) -> Result<Self, RecordError> {
        let (count, sum_sq, sum_abs, window_sq, window_abs) = (r.u64()?, r.f64()?, r.f64()?, r.f64()?, r.f64()?);
        let window = Ring::read_record(r, 4, |r| r.f32())?;
        let rating = RatingMetrics { count, sum_sq, sum_abs, window, window_sq, window_abs };
        let (cumulative, window) = (ClickSpan::read_record(r)?, ClickSpan::read_record(r)?);
        let ring = Ring::read_record(r, 7, |r| {
            let (logloss, bin, clicked) = (r.f32()?, r.u16()?, r.bool()?);
            if usize::from(bin) >= AUC_BINS {
                return Err(r.error(format!("AUC bin {bin} of {AUC_BINS}")));
            }
            Ok(ClickEntry { logloss, bin, clicked })
        })?;
        Ok(ProgressiveMetrics { rating, click: ClickMetrics { cumulative, window, ring } })
    }
}

impl<T> Ring<T> {
    fn write_record(&self, w: &mut RecordWriter, mut value: impl FnMut(&mut RecordWriter, &T)) {
        let Ring { capacity, values, next } = self;
        w.len(*capacity);
        w.len(*next);
        w.len(values.len());
        values.iter().for_each(|v| value(w, v));
    }

    fn read_record(
        r: &mut RecordReader<'_>,
        unit: usize,
        mut value: impl FnMut(&mut RecordReader<'_>) -> Result<T, RecordError>,
    ) -> Result<Self, RecordError> {
        let (capacity, next) = (r.u64()?, r.u64()?);
        let len = r.len(unit)?;
        let (Ok(capacity), Ok(next)) = (usize::try_from(capacity), usize::try_from(next)) else {
            return Err(r.error("a window larger than memory"));
        };
        if capacity == 0 || next >= capacity || len > capacity || (len < capacity && next != len) {
            return Err(r.error(format!("a window of {capacity} holding {len} with its next slot at {next}")));
        }
        let values = (0..len).map(|_| value(r)).collect::<Result<_, _>>()?;
        Ok(Ring { capacity, values, next })
    }
}

impl ClickSpan {
    fn write_record(&self, w: &mut RecordWriter) {
        let ClickSpan { count, logloss, auc } = self;
        let BinnedAuc { positives, negatives, twice_pairs } = auc;
        w.u64(*count);
        w.f64(*logloss);
        // Per class, the bins that hold events: (bin, count) pairs, most bins being empty.
        for tree in [positives, negatives] {
            let bins: Vec<(u16, u64)> =
                tree.counts().into_iter().enumerate().filter(|&(_, n)| n > 0).map(|(bin, n)| (bin as u16, n)).collect();
            w.len(bins.len());
            for (bin, n) in bins {
                w.u16(bin);
                w.u64(n);
            }
        }
        w.u128(*twice_pairs);
    }

    fn read_record(r: &mut RecordReader<'_>) -> Result<Self, RecordError> {
        let (count, logloss) = (r.u64()?, r.f64()?);
        let mut tree = || -> Result<Fenwick, RecordError> {
            let mut counts = vec![0u64; AUC_BINS];
            let mut previous = None;
            for _ in 0..r.len(10)? {
                let (bin, n) = (r.u16()?, r.u64()?);
                if usize::from(bin) >= AUC_BINS || previous.is_some_and(|p| p >= bin) || n == 0 {
                    return Err(r.error(format!("AUC bin {bin} (count {n}) out of order or range")));
                }
                previous = Some(bin);
                counts[usize::from(bin)] = n;
            }
            Fenwick::from_counts(&counts).ok_or_else(|| r.error("AUC counts beyond u64"))
        };
        let (positives, negatives) = (tree()?, tree()?);
        let twice_pairs = r.u128()?;
        Ok(ClickSpan { count, logloss, auc: BinnedAuc { positives, negatives, twice_pairs } })
    }
}

/// A ring of the last `capacity` values of one head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Ring<T> {
    capacity: usize,
    values: Vec<T>,
    next: usize,
}

impl<T: Copy> Ring<T> {
    fn new(capacity: usize) -> Self {
        Ring { capacity, values: Vec::new(), next: 0 }
    }

    /// Stores `value`; returns the value it displaced, if the ring was full.
    fn push(&mut self, value: T) -> Option<T> {
        let displaced = if self.values.len() < self.capacity {
            self.values.push(value);
            None
        } else {
            Some(std::mem::replace(&mut self.values[self.next], value))
        };
        self.next = (self.next + 1) % self.capacity;
        displaced
    }

    /// Whether the ring just wrapped to its start (a good time to resum).
    fn wrapped(&self) -> bool {
        self.next == 0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RatingMetrics {
    count: u64,
    sum_sq: f64,
    sum_abs: f64,
    window: Ring<f32>,
    window_sq: f64,
    window_abs: f64,
}

impl RatingMetrics {
    fn new(window: usize) -> Self {
        RatingMetrics {
            count: 0,
            sum_sq: 0.0,
            sum_abs: 0.0,
            window: Ring::new(window),
            window_sq: 0.0,
            window_abs: 0.0,
        }
    }

    fn record(&mut self, error: f32) {
        let e = f64::from(error);
        self.count += 1;
        self.sum_sq += e * e;
        self.sum_abs += e.abs();
        self.window_sq += e * e;
        self.window_abs += e.abs();
        if let Some(old) = self.window.push(error) {
            let o = f64::from(old);
            self.window_sq -= o * o;
            self.window_abs -= o.abs();
        }
        if self.window.wrapped() {
            // Resum exactly once per lap so subtraction error cannot accumulate.
            self.window_sq = self.window.values.iter().map(|&e| f64::from(e) * f64::from(e)).sum();
            self.window_abs = self.window.values.iter().map(|&e| f64::from(e).abs()).sum();
        }
    }

    fn window_mse(&self) -> Option<f64> {
        let n = self.window.values.len();
        (n > 0).then(|| self.window_sq.max(0.0) / n as f64)
    }

    fn window_stats(&self) -> RatingStats {
        error_stats(self.window.values.len() as u64, self.window_sq, self.window_abs)
    }

    fn cumulative_stats(&self) -> RatingStats {
        error_stats(self.count, self.sum_sq, self.sum_abs)
    }
}

fn error_stats(count: u64, sum_sq: f64, sum_abs: f64) -> RatingStats {
    let n = count as f64;
    RatingStats {
        count,
        rmse: (count > 0).then(|| (sum_sq.max(0.0) / n).sqrt()),
        mae: (count > 0).then(|| sum_abs.max(0.0) / n),
    }
}

/// One click in the window: its log loss, AUC bin and outcome.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct ClickEntry {
    logloss: f32,
    bin: u16,
    clicked: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ClickSpan {
    count: u64,
    logloss: f64,
    auc: BinnedAuc,
}

impl ClickSpan {
    fn new() -> Self {
        ClickSpan { count: 0, logloss: 0.0, auc: BinnedAuc::new() }
    }

    fn mean_logloss(&self) -> Option<f64> {
        (self.count > 0).then(|| self.logloss.max(0.0) / self.count as f64)
    }

    fn stats(&self) -> ClickStats {
        ClickStats { count: self.count, logloss: self.mean_logloss(), auc: self.auc.value() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ClickMetrics {
    cumulative: ClickSpan,
    window: ClickSpan,
    ring: Ring<ClickEntry>,
}

impl ClickMetrics {
    fn new(window: usize) -> Self {
        ClickMetrics { cumulative: ClickSpan::new(), window: ClickSpan::new(), ring: Ring::new(window) }
    }

    fn record(&mut self, score: f32, probability: f32, clicked: bool) {
        let p = f64::from(probability).clamp(LOGLOSS_EPSILON, 1.0 - LOGLOSS_EPSILON);
        let logloss = if clicked { -p.ln() } else { -(1.0 - p).ln() };
        let entry = ClickEntry { logloss: logloss as f32, bin: auc_bin(score), clicked };
        for span in [&mut self.cumulative, &mut self.window] {
            span.count += 1;
            span.logloss += f64::from(entry.logloss);
            span.auc.add(entry.bin, entry.clicked);
        }
        if let Some(old) = self.ring.push(entry) {
            self.window.count -= 1;
            self.window.logloss -= f64::from(old.logloss);
            self.window.auc.remove(old.bin, old.clicked);
        }
        if self.ring.wrapped() {
            self.window.logloss = self.ring.values.iter().map(|e| f64::from(e.logloss)).sum();
        }
    }

    fn window_stats(&self) -> ClickStats {
        self.window.stats()
    }

    fn cumulative_stats(&self) -> ClickStats {
        self.cumulative.stats()
    }
}

fn auc_bin(score: f32) -> u16 {
    let unit = (score.clamp(-AUC_LOGIT_RANGE, AUC_LOGIT_RANGE) + AUC_LOGIT_RANGE) / (2.0 * AUC_LOGIT_RANGE);
    ((unit * AUC_BINS as f32) as usize).min(AUC_BINS - 1) as u16
}

/// AUC over score bins: `twice_pairs` counts 2 per correctly ordered
/// (positive, negative) pair and 1 per pair sharing a bin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct BinnedAuc {
    positives: Fenwick,
    negatives: Fenwick,
    twice_pairs: u128,
}

impl BinnedAuc {
    fn new() -> Self {
        BinnedAuc { positives: Fenwick::new(AUC_BINS), negatives: Fenwick::new(AUC_BINS), twice_pairs: 0 }
    }

    /// The AUC of the events counted per bin and class, as if each had been
    /// added in turn: 2 per (positive, negative) pair the positive wins, 1
    /// per pair sharing a bin.
    fn from_bins(positives: &[u64], negatives: &[u64]) -> Self {
        let (mut twice_pairs, mut negatives_below) = (0u128, 0u128);
        for (&p, &n) in positives.iter().zip(negatives) {
            twice_pairs += u128::from(p) * (2 * negatives_below + u128::from(n));
            negatives_below += u128::from(n);
        }
        let tree = |counts: &[u64]| Fenwick::from_counts(counts).expect("event counts far below u64::MAX");
        BinnedAuc { positives: tree(positives), negatives: tree(negatives), twice_pairs }
    }

    /// 2·(pairs the event wins against the other class) + (ties in its bin).
    fn pair_weight(&self, bin: u16, clicked: bool) -> u128 {
        let b = usize::from(bin);
        let (below, at, total) = if clicked {
            (self.negatives.prefix(b), self.negatives.at(b), self.negatives.total())
        } else {
            let at = self.positives.at(b);
            let above = self.positives.total() - self.positives.prefix(b) - at;
            (above, at, self.positives.total())
        };
        debug_assert!(below + at <= total);
        2 * u128::from(below) + u128::from(at)
    }

    fn add(&mut self, bin: u16, clicked: bool) {
        self.twice_pairs += self.pair_weight(bin, clicked);
        self.tree(clicked).add(usize::from(bin), 1);
    }

    fn remove(&mut self, bin: u16, clicked: bool) {
        self.tree(clicked).sub(usize::from(bin), 1);
        self.twice_pairs -= self.pair_weight(bin, clicked);
    }

    fn tree(&mut self, clicked: bool) -> &mut Fenwick {
        if clicked { &mut self.positives } else { &mut self.negatives }
    }

    fn value(&self) -> Option<f64> {
        let pairs = u128::from(self.positives.total()) * u128::from(self.negatives.total());
        (pairs > 0).then(|| self.twice_pairs as f64 / (2.0 * pairs as f64))
    }
}

/// A Fenwick (binary indexed) tree of counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Fenwick {
    tree: Vec<u64>,
    total: u64,
}

impl Fenwick {
    fn new(size: usize) -> Self {
        Fenwick { tree: vec![0; size + 1], total: 0 }
    }

    /// A tree holding `counts` (built in one pass; `None` if they overflow).
    fn from_counts(counts: &[u64]) -> Option<Self> {
        let mut tree = vec![0; counts.len() + 1];
        tree[1..].copy_from_slice(counts);
        let total = counts.iter().try_fold(0u64, |sum, &n| sum.checked_add(n))?;
        for i in 1..tree.len() {
            let parent = i + (i & i.wrapping_neg());
            if parent < tree.len() {
                tree[parent] = tree[parent].checked_add(tree[i])?;
            }
        }
        Some(Fenwick { tree, total })
    }

    /// The count at every index (undoing [`Fenwick::from_counts`] in one pass).
    fn counts(&self) -> Vec<u64> {
        let mut tree = self.tree.clone();
        for i in (1..tree.len()).rev() {
            let parent = i + (i & i.wrapping_neg());
            if parent < tree.len() {
                tree[parent] -= tree[i];
            }
        }
        tree.split_off(1)
    }

    fn add(&mut self, index: usize, amount: u64) {
        self.total += amount;
        let mut i = index + 1;
        while i < self.tree.len() {
            self.tree[i] += amount;
            i += i & i.wrapping_neg();
        }
    }

    fn sub(&mut self, index: usize, amount: u64) {
        self.total -= amount;
        let mut i = index + 1;
        while i < self.tree.len() {
            self.tree[i] -= amount;
            i += i & i.wrapping_neg();
        }
    }

    /// Sum of counts at indices `< index`.
    fn prefix(&self, index: usize) -> u64 {
        let mut sum = 0;
        let mut i = index;
        while i > 0 {
            sum += self.tree[i];
            i -= i & i.wrapping_neg();
        }
        sum
    }

    /// The count at `index`: the node that ends there less the nodes that
    /// tile the rest of its range (a walk of about one step on average,
    /// where two prefix sums walk twelve steps each).
    fn at(&self, index: usize) -> u64 {
        let node = index + 1;
        let start = node - (node & node.wrapping_neg());
        let (mut count, mut i) = (self.tree[node], index);
        while i > start {
            count -= self.tree[i];
            i -= i & i.wrapping_neg();
        }
        count
    }

    fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_at_an_index_is_what_was_added_there() {
        // Sizes around powers of two, every index, after adds and a removal.
        for size in [1usize, 2, 3, 7, 8, 9, 64, 100, AUC_BINS] {
            let counts: Vec<u64> = (0..size as u64).map(|i| (i * 7919 + 3) % 11).collect();
            let mut tree = Fenwick::from_counts(&counts).expect("small counts");
            for (index, &count) in counts.iter().enumerate() {
                assert_eq!(tree.at(index), count, "size {size}, index {index}");
                assert_eq!(tree.at(index), tree.prefix(index + 1) - tree.prefix(index));
            }
            tree.add(size - 1, 5);
            tree.sub(0, counts[0]);
            assert_eq!(tree.at(size - 1), counts[size - 1] + 5 - if size == 1 { counts[0] } else { 0 });
            assert_eq!(tree.at(0), if size == 1 { 5 } else { 0 });
        }
    }

    #[test]
    fn a_tree_built_from_counts_equals_one_built_by_adding_and_gives_them_back() {
        let counts: Vec<u64> = (0..37u64).map(|i| (i * 7919) % 5).collect();
        let mut added = Fenwick::new(counts.len());
        for (i, &n) in counts.iter().enumerate() {
            added.add(i, n);
        }
        let built = Fenwick::from_counts(&counts).expect("no overflow");
        assert_eq!(built, added);
        assert_eq!(built.counts(), counts);
        assert!((0..counts.len()).all(|i| built.at(i) == counts[i]));
        assert_eq!(Fenwick::from_counts(&[u64::MAX, 1]), None);
    }

    /// Exact AUC by comparing every pair.
    fn exact_auc(samples: &[(f32, bool)]) -> f64 {
        let (mut wins, mut pairs) = (0.0, 0.0);
        for &(sp, _) in samples.iter().filter(|s| s.1) {
            for &(sn, _) in samples.iter().filter(|s| !s.1) {
                pairs += 1.0;
                wins += if sp > sn {
                    1.0
                } else if sp == sn {
                    0.5
                } else {
                    0.0
                };
            }
        }
        wins / pairs
    }

    #[test]
    fn auc_matches_pairwise_count_on_distinct_bins() {
        let samples: Vec<(f32, bool)> =
            (0..200).map(|i| (((i * 37) % 101) as f32 * 0.1 - 5.0, (i * 13) % 7 < 3)).collect();
        let mut m = ProgressiveMetrics::new(1_000);
        for &(s, y) in &samples {
            m.record(Head::Click, s, crate::heads::sigmoid(s), if y { 1.0 } else { 0.0 });
        }
        let auc = m.snapshot().click_cumulative.auc.expect("both classes");
        assert!((auc - exact_auc(&samples)).abs() < 1e-9, "{auc}");
    }

    #[test]
    fn metrics_taken_together_equal_one_that_saw_every_event() {
        let samples: Vec<(f32, bool, f32)> = (0..600)
            .map(|i| (((i * 37) % 101) as f32 * 0.1 - 5.0, (i * 13) % 7 < 3, ((i * 11) % 9) as f32 * 0.5))
            .collect();
        let mut whole = ProgressiveMetrics::new(50);
        let mut parts = [ProgressiveMetrics::new(50), ProgressiveMetrics::new(50), ProgressiveMetrics::new(50)];
        for (i, &(s, y, rating)) in samples.iter().enumerate() {
            for m in [&mut whole, &mut parts[(i * 7) % 3]] {
                m.record(Head::Click, s, crate::heads::sigmoid(s), if y { 1.0 } else { 0.0 });
                m.record(Head::Rating, 0.0, 3.0, rating);
            }
        }
        let (rating, click) = cumulative_of(&parts);
        let want = whole.snapshot();
        assert_eq!(rating.count, want.rating_cumulative.count);
        assert!((rating.rmse.expect("events") - want.rating_cumulative.rmse.expect("events")).abs() < 1e-12);
        assert!((rating.mae.expect("events") - want.rating_cumulative.mae.expect("events")).abs() < 1e-12);
        assert_eq!(click.count, want.click_cumulative.count);
        assert!((click.auc.expect("both") - want.click_cumulative.auc.expect("both")).abs() < 1e-12);
        assert!(
            (click.auc.expect("both") - exact_auc(&samples.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>())).abs()
                < 1e-9
        );
        assert!((click.logloss.expect("events") - want.click_cumulative.logloss.expect("events")).abs() < 1e-9);
        assert_eq!(cumulative_of([]).0.rmse, None);
    }

    #[test]
    fn window_forgets_old_events_and_cumulative_keeps_them() {
        let mut m = ProgressiveMetrics::new(4);
        for _ in 0..10 {
            m.record(Head::Rating, 0.0, 3.0, 4.0); // error 1
        }
        for _ in 0..4 {
            m.record(Head::Rating, 0.0, 3.0, 3.5); // error 0.5
        }
        let s = m.snapshot();
        assert_eq!(s.rating_window.count, 4);
        assert!((s.rating_window.rmse.expect("events") - 0.5).abs() < 1e-12);
        assert!((s.rating_window.mae.expect("events") - 0.5).abs() < 1e-12);
        let expected_rmse = ((10.0 + 4.0 * 0.25) / 14.0f64).sqrt();
        assert!((s.rating_cumulative.rmse.expect("events") - expected_rmse).abs() < 1e-12);
        assert_eq!(s.click_window.logloss, None);
        assert_eq!(s.click_cumulative.auc, None);
    }

    #[test]
    fn windowed_auc_equals_auc_of_the_last_events() {
        let samples: Vec<(f32, bool)> =
            (0..500).map(|i| (((i * 53) % 211) as f32 * 0.05 - 5.0, (i * 7) % 5 < 2)).collect();
        let mut m = ProgressiveMetrics::new(64);
        for &(s, y) in &samples {
            m.record(Head::Click, s, crate::heads::sigmoid(s), if y { 1.0 } else { 0.0 });
        }
        let window = &samples[samples.len() - 64..];
        let mut fresh = ProgressiveMetrics::new(64);
        for &(s, y) in window {
            fresh.record(Head::Click, s, crate::heads::sigmoid(s), if y { 1.0 } else { 0.0 });
        }
        let got = m.snapshot().click_window;
        let want = fresh.snapshot().click_cumulative;
        assert_eq!(got.count, 64);
        assert_eq!(got.auc, want.auc);
        assert!((got.logloss.expect("events") - want.logloss.expect("events")).abs() < 1e-9);
    }

    #[test]
    fn non_finite_predictions_are_not_recorded() {
        let mut m = ProgressiveMetrics::new(4);
        m.record(Head::Rating, f32::NAN, f32::NAN, 3.0);
        assert_eq!(m.snapshot().rating_cumulative.count, 0);
    }
}
