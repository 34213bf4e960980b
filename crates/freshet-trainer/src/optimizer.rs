//! The update rules: one step on one row (or on a dense parameter) from its
//! gradient summed over a micro-batch. A step is computed aside and written
//! only if every new value is finite.

use std::ops::Range;

use freshet_core::RowLayout;
use freshet_core::kernels::{all_finite, penalised_norm2};

use crate::config::{Algorithm, TrainerConfig};

/// A row's parameters and moment slots, borrowed for one step. Moment slices
/// the algorithms do not use are empty.
pub(crate) struct RowMut<'a> {
    /// How many leading parameters are scalars: the head biases (at most
    /// [`RowLayout::BIASES`]), then in user rows the rating scale and session
    /// offsets. The rest are factors.
    pub scalars: usize,
    /// `[scalars..., factors...]`.
    pub params: &'a mut [f32],
    /// First moment (Adam), else empty.
    pub m: &'a mut [f32],
    /// Second moment (Adam) or squared-gradient sum (AdaGrad), else empty.
    pub v: &'a mut [f32],
}

/// Whether the step adds the L2 penalty: rows do, the global biases do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Penalty {
    /// `bias_l2` on the scalars, `l2` on the factors, times the event count.
    L2,
    /// No penalty.
    None,
}

/// Reused buffers of one step, so stepping allocates nothing.
#[derive(Debug, Default, Clone)]
pub(crate) struct StepScratch {
    /// The new values, laid out like the row: parameters, then the moments it keeps.
    next: Vec<f32>,
}

/// The configured update rules: one for factors, one for the scalars (biases
/// and the users' scale and session offsets, each kind at its own rate).
#[derive(Debug, Clone)]
pub(crate) struct Optimizer {
    algorithm: Algorithm,
    bias_algorithm: Algorithm,
    learning_rate: f32,
    bias_learning_rate: f32,
    bias_prior_count: Option<f32>,
    factor_boost_count: Option<f32>,
    scale_learning_rate: f32,
    session_learning_rate: f32,
    beta1: f32,
    beta2: f32,
    first_correction: BiasCorrection,
    second_correction: BiasCorrection,
    epsilon: f32,
    l2: f32,
    bias_l2: f32,
    clip_norm: Option<f32>,
    /// The vector instructions steps are compiled for (AVX2 where the CPU
    /// has it): the same arithmetic, elementwise, so the same bits.
    arch: pulp::Arch,
}

/// One step's arguments, run by [`pulp::Arch::dispatch`] inside a function
/// compiled for the instructions it picked (the tests' one-row entry; the
/// trainer dispatches once for all the rows of a step).
#[cfg(test)]
struct StepJob<'o, 'r, 's> {
    optimizer: &'o Optimizer,
    row: RowMut<'r>,
    grad: &'r [f32],
    input: StepInput,
    lr_scale: f32,
    penalty: Penalty,
    scratch: &'s mut StepScratch,
}

#[cfg(test)]
impl pulp::WithSimd for StepJob<'_, '_, '_> {
    type Output = bool;

    // Inlined (with everything it calls) into the function compiled for the
    // chosen instructions, so the plain loops vectorise with those.
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) -> bool {
        let StepJob { optimizer, row, grad, input, lr_scale, penalty, scratch } = self;
        optimizer.step_here(row, grad, input, lr_scale, penalty, scratch)
    }
}

/// Adam's bias correction `1/(1 − βᵗ)` for one β, tabulated up to the step
/// from which it is exactly 1 in f32 (some 17 000 steps for β = 0.999).
#[derive(Debug, Clone)]
struct BiasCorrection {
    beta: f32,
    /// Entry `t − 1` is the correction at step `t`.
    table: Vec<f32>,
    /// First step whose correction is 1.
    converged_at: u32,
}

impl BiasCorrection {
    /// Longest table kept; a β so close to 1 that it needs more is computed past it.
    const MAX_TABLE: usize = 1 << 20;

    fn new(beta: f32) -> Self {
        let mut table = Vec::new();
        while table.len() < Self::MAX_TABLE {
            let t = table.len() as u32 + 1;
            let correction = 1.0 / (1.0 - decay_power(beta, t));
            if correction == 1.0 {
                return BiasCorrection { beta, table, converged_at: t };
            }
            table.push(correction);
        }
        BiasCorrection { beta, table, converged_at: u32::MAX }
    }

    fn at(&self, step: u32) -> f32 {
        if step >= self.converged_at {
            return 1.0;
        }
        match self.table.get(step.saturating_sub(1) as usize) {
            Some(&correction) => correction,
            None => 1.0 / (1.0 - decay_power(self.beta, step)),
        }
    }
}

/// Where a row stands when it takes a step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepInput {
    /// Events whose gradients were summed into this step.
    pub count: u32,
    /// The row's step number after this one, counting from 1.
    pub step: u32,
    /// Events that reached the row before this step.
    pub prior_updates: u64,
}

impl StepInput {
    /// Events that reached the row, this step's included.
    fn seen(self) -> f32 {
        (self.prior_updates + u64::from(self.count)) as f32
    }
}

/// Adam's bias corrections `1/(1−β₁ᵗ)` and `1/(1−β₂ᵗ)` for one step.
#[derive(Debug, Clone, Copy)]
struct Correction {
    first: f32,
    second: f32,
}

impl Optimizer {
    /// The rule `config` describes.
    pub(crate) fn new(config: &TrainerConfig) -> Self {
        Optimizer {
            algorithm: config.algorithm,
            bias_algorithm: config.bias_algorithm,
            learning_rate: config.learning_rate,
            bias_learning_rate: config.bias_learning_rate,
            bias_prior_count: config.bias_prior_count,
            factor_boost_count: config.factor_boost_count,
            scale_learning_rate: config.scale_learning_rate,
            session_learning_rate: config.session_learning_rate,
            beta1: config.beta1,
            beta2: config.beta2,
            first_correction: BiasCorrection::new(config.beta1),
            second_correction: BiasCorrection::new(config.beta2),
            epsilon: config.epsilon,
            l2: config.l2,
            bias_l2: config.bias_l2,
            clip_norm: config.clip_norm,
            arch: pulp::Arch::new(),
        }
    }

    /// Moment slots per parameter both rules together need: as
    /// [`Algorithm::moments`], except that Adam without momentum (`beta1` = 0)
    /// keeps no first moment, which would only ever hold the latest gradient.
    pub(crate) fn moments(&self) -> usize {
        let slots = |algorithm: Algorithm| match algorithm {
            Algorithm::Adam if self.beta1 == 0.0 => 1,
            other => other.moments(),
        };
        slots(self.algorithm).max(slots(self.bias_algorithm))
    }

    /// [`Optimizer::step_here`] on one row, in its own dispatch (the tests'
    /// entry; the trainer dispatches once for all the rows of a step).
    #[cfg(test)]
    pub(crate) fn step(
        &self,
        row: RowMut<'_>,
        grad: &[f32],
        input: StepInput,
        lr_scale: f32,
        penalty: Penalty,
        scratch: &mut StepScratch,
    ) -> bool {
        self.arch.dispatch(StepJob { optimizer: self, row, grad, input, lr_scale, penalty, scratch })
    }

    /// The vector instructions steps are compiled for.
    pub(crate) fn arch(&self) -> pulp::Arch {
        self.arch
    }

    /// One step on `row` with `grad`, the loss gradient summed over the
    /// events that touched it. An empty `m` under Adam means no momentum: the
    /// step follows the newest gradient, as Adam with `beta1` = 0 does.
    /// Returns false, leaving the row unchanged, if the gradient or any new
    /// value is not finite. Inlined into its caller, which runs inside
    /// [`pulp::Arch::dispatch`] of [`Optimizer::arch`] so the loops
    /// vectorise with the instructions picked there.
    #[inline(always)]
    pub(crate) fn step_here(
        &self,
        row: RowMut<'_>,
        grad: &[f32],
        input: StepInput,
        lr_scale: f32,
        penalty: Penalty,
        scratch: &mut StepScratch,
    ) -> bool {
        let RowMut { scalars, params, m, v } = row;
        let width = params.len();
        debug_assert_eq!(grad.len(), width);
        debug_assert!([m.len(), v.len()].iter().all(|&len| len == 0 || len == width));
        let count = input.count as f32;
        let (bias_l2, l2) = match penalty {
            Penalty::L2 => (self.bias_l2 * count, self.l2 * count),
            Penalty::None => (0.0, 0.0),
        };
        // The penalised gradient g + λ·p is never stored: its norm is taken
        // here and each update rule recomputes it, scaled by the clipping.
        // Not finite if any element is NaN or infinite, or if squares overflow.
        let norm2 = penalised_norm2(&grad[..scalars], &params[..scalars], bias_l2)
            + penalised_norm2(&grad[scalars..], &params[scalars..], l2);
        if !norm2.is_finite() {
            return false;
        }
        let clip = match self.clip_norm {
            Some(limit) if norm2 > limit * limit => limit / norm2.sqrt(),
            _ => 1.0,
        };
        let correction = if self.algorithm == Algorithm::Adam || self.bias_algorithm == Algorithm::Adam {
            self.correction(input.step)
        } else {
            Correction { first: 1.0, second: 1.0 }
        };
        // Every slot of `next` is written below, so it is only resized.
        let next = &mut scratch.next;
        next.resize(width + m.len() + v.len(), 0.0);
        let (next_p, next_moments) = next.split_at_mut(width);
        let (next_m, next_v) = next_moments.split_at_mut(m.len());
        let hyper = Hyper { beta1: self.beta1, beta2: self.beta2, epsilon: self.epsilon };
        // The leading scalars, each kind at its own rate, all under the bias
        // rule: one loop over them (they are at most four), then the factors.
        let rates = self.scalar_rates(input, lr_scale);
        let scalar_rate = |i: usize| match i {
            i if i == RowLayout::RATING_SCALE => rates.scale,
            i if i == RowLayout::SESSION_OFFSET => rates.session,
            _ => rates.bias,
        };
        let factor_rate = sgd_capped(self.algorithm, self.factor_rate(input) * lr_scale, count);
        let span = |from: usize, to: usize, penalty: f32| {
            let grad = Gradient { sum: &grad[from..to], penalty, clip };
            let old = Slots { p: &params[from..to], m: part(m, from..to), v: part(v, from..to) };
            (grad, old)
        };
        let (scalar_grad, scalar_old) = span(0, scalars, bias_l2);
        let (factor_grad, factor_old) = span(scalars, width, l2);
        let (next_p_scalars, next_p_factors) = next_p.split_at_mut(scalars);
        let (next_m_scalars, next_m_factors) = split_slots(next_m, scalars);
        let (next_v_scalars, next_v_factors) = split_slots(next_v, scalars);
        let scalar_new = SlotsMut { p: next_p_scalars, m: next_m_scalars, v: next_v_scalars };
        let factor_new = SlotsMut { p: next_p_factors, m: next_m_factors, v: next_v_factors };
        apply(self.bias_algorithm, hyper, scalar_rate, correction, scalar_grad, scalar_old, scalar_new);
        apply(self.algorithm, hyper, |_| factor_rate, correction, factor_grad, factor_old, factor_new);
        if !all_finite(next) {
            return false;
        }
        let (next_p, next_moments) = next.split_at(width);
        let (next_m, next_v) = next_moments.split_at(m.len());
        params.copy_from_slice(next_p);
        m.copy_from_slice(next_m);
        v.copy_from_slice(next_v);
        true
    }

    /// The rates of the scalars. The session offset steps on the mean of
    /// the step's gradients, not their sum: a batch holding several of a
    /// user's events is one look at the level of the user's current sitting.
    /// (The user's bias, which takes the same residuals, already moves by
    /// their sum, and both moving by it overshoots on bursts.)
    fn scalar_rates(&self, input: StepInput, lr_scale: f32) -> ScalarRates {
        let count = input.count as f32;
        ScalarRates {
            bias: sgd_capped(self.bias_algorithm, self.bias_rate(input) * lr_scale, count),
            scale: sgd_capped(self.bias_algorithm, self.scale_learning_rate * lr_scale, count),
            session: self.session_learning_rate * lr_scale / count.max(1.0),
        }
    }

    /// `max(bias_learning_rate, 1/(n + prior_count))` with `n` the events
    /// that reached the row including this step's: a young row's bias
    /// follows the shrunk running mean of its residuals (exactly so under SGD).
    fn bias_rate(&self, input: StepInput) -> f32 {
        match self.bias_prior_count {
            Some(prior) => self.bias_learning_rate.max(1.0 / (input.seen() + prior)),
            None => self.bias_learning_rate,
        }
    }

    /// `learning_rate·(1 + k/(n + k))` with `k` the boost count and `n` as in
    /// [`Optimizer::bias_rate`]: young rows' factors take larger steps.
    fn factor_rate(&self, input: StepInput) -> f32 {
        match self.factor_boost_count {
            Some(k) => self.learning_rate * (1.0 + k / (input.seen() + k)),
            None => self.learning_rate,
        }
    }

    fn correction(&self, step: u32) -> Correction {
        Correction { first: self.first_correction.at(step), second: self.second_correction.at(step) }
    }
}

/// Learning rates of a row's scalars in one step.
#[derive(Debug, Clone, Copy)]
struct ScalarRates {
    bias: f32,
    scale: f32,
    session: f32,
}

/// An SGD step on a gradient summed over `count` events never goes past the
/// step on their mean: a rate above `1/count` would overshoot (a user's burst
/// of ratings in one batch would throw a bias beyond the burst's mean
/// residual). Normalised rules (Adam, AdaGrad) need no cap.
fn sgd_capped(algorithm: Algorithm, rate: f32, count: f32) -> f32 {
    match algorithm {
        Algorithm::Sgd => rate.min(1.0 / count.max(1.0)),
        Algorithm::Adam | Algorithm::Adagrad => rate,
    }
}

/// `beta^t` by squaring, stopping at 0 once the result is below 1e-18 (it no
/// longer changes `1/(1 − beta^t)` in f32), so no subnormal arithmetic —
/// which is slow on most CPUs — ever runs.
fn decay_power(beta: f32, t: u32) -> f32 {
    const NEGLIGIBLE: f32 = 1e-18;
    let (mut acc, mut base, mut e) = (1.0f32, beta, t);
    while e > 0 {
        if base < NEGLIGIBLE || acc < NEGLIGIBLE {
            return 0.0;
        }
        if e & 1 == 1 {
            acc *= base;
        }
        base *= base;
        e >>= 1;
    }
    acc
}

/// The decay constants of the moments and the denominator's ε.
#[derive(Debug, Clone, Copy)]
struct Hyper {
    beta1: f32,
    beta2: f32,
    epsilon: f32,
}

/// One span of a row's values: parameters and the moment slots kept (each
/// the span's length, or empty when the row keeps no such slot).
struct Slots<'a> {
    p: &'a [f32],
    m: &'a [f32],
    v: &'a [f32],
}

/// Where the new values of a span go, laid out like [`Slots`].
struct SlotsMut<'a> {
    p: &'a mut [f32],
    m: &'a mut [f32],
    v: &'a mut [f32],
}

/// `slots[span]`, or nothing when the row keeps no such slot.
fn part(slots: &[f32], span: Range<usize>) -> &[f32] {
    if slots.is_empty() { slots } else { &slots[span] }
}

/// `slots` split before `at`, or two empty halves when the row keeps no such slot.
fn split_slots(slots: &mut [f32], at: usize) -> (&mut [f32], &mut [f32]) {
    if slots.is_empty() { (&mut [], &mut []) } else { slots.split_at_mut(at) }
}

/// A span's loss gradient as the rule sees it: `(sum + penalty·p)·clip`.
#[derive(Clone, Copy)]
struct Gradient<'a> {
    /// The loss gradient summed over the step's events.
    sum: &'a [f32],
    /// The L2 coefficient (times the event count).
    penalty: f32,
    /// The clipping factor of the whole row's gradient (1 when unclipped).
    clip: f32,
}

/// New values of one span of parameters sharing an update rule and a rate.
/// Each loop runs over slices of one length, so it compiles without bounds
/// checks and vectorises.
#[inline(always)]
fn apply(
    algorithm: Algorithm,
    hyper: Hyper,
    rate: impl Fn(usize) -> f32,
    correction: Correction,
    grad: Gradient,
    old: Slots,
    new: SlotsMut,
) {
    let n = grad.sum.len();
    let (sum, p, new_p) = (&grad.sum[..n], &old.p[..n], &mut new.p[..n]);
    let (penalty, clip) = (grad.penalty, grad.clip);
    let g = |i: usize| (sum[i] + penalty * p[i]) * clip;
    let eps = hyper.epsilon;
    match algorithm {
        Algorithm::Sgd => {
            for i in 0..n {
                new_p[i] = p[i] - rate(i) * g(i);
            }
        }
        Algorithm::Adagrad => {
            let (v, new_v) = (&old.v[..n], &mut new.v[..n]);
            for i in 0..n {
                let gi = g(i);
                let vi = v[i] + gi * gi;
                new_v[i] = vi;
                new_p[i] = p[i] - rate(i) * gi / (vi.sqrt() + eps);
            }
        }
        Algorithm::Adam => {
            let (b1, b2) = (hyper.beta1, hyper.beta2);
            let (first, second) = (correction.first, correction.second);
            let (v, new_v) = (&old.v[..n], &mut new.v[..n]);
            if old.m.is_empty() {
                // No momentum: the first moment would be the gradient itself.
                for i in 0..n {
                    let gi = g(i);
                    let vi = b2 * v[i] + (1.0 - b2) * gi * gi;
                    new_v[i] = vi;
                    new_p[i] = p[i] - rate(i) * (gi * first) / ((vi * second).sqrt() + eps);
                }
            } else {
                let (m, new_m) = (&old.m[..n], &mut new.m[..n]);
                for i in 0..n {
                    let gi = g(i);
                    let mi = b1 * m[i] + (1.0 - b1) * gi;
                    let vi = b2 * v[i] + (1.0 - b2) * gi * gi;
                    new_m[i] = mi;
                    new_v[i] = vi;
                    new_p[i] = p[i] - rate(i) * (mi * first) / ((vi * second).sqrt() + eps);
                }
            }
        }
    }
    // Slots this rule does not use keep their values.
    if algorithm.moments() < 2 {
        new.m.copy_from_slice(old.m);
    }
    if algorithm.moments() < 1 {
        new.v.copy_from_slice(old.v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn optimizer(algorithm: Algorithm, clip_norm: Option<f32>) -> Optimizer {
        Optimizer::new(&TrainerConfig {
            algorithm,
            bias_algorithm: algorithm,
            bias_prior_count: None,
            factor_boost_count: None,
            learning_rate: 0.01,
            bias_learning_rate: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            l2: 0.0,
            bias_l2: 0.0,
            clip_norm,
            ..TrainerConfig::default()
        })
    }

    /// SGD on biases and factors at rate 0.1, without priors, boosts,
    /// penalties or clipping: the base the rate tests change one key of.
    fn plain_sgd() -> TrainerConfig {
        TrainerConfig {
            algorithm: Algorithm::Sgd,
            bias_algorithm: Algorithm::Sgd,
            bias_prior_count: None,
            factor_boost_count: None,
            learning_rate: 0.1,
            bias_learning_rate: 0.1,
            l2: 0.0,
            bias_l2: 0.0,
            clip_norm: None,
            ..TrainerConfig::default()
        }
    }

    fn run(opt: &Optimizer, params: &mut [f32], m: &mut [f32], v: &mut [f32], grad: &[f32], step: u32) -> bool {
        let mut scratch = StepScratch::default();
        let input = StepInput { count: 1, step, prior_updates: u64::from(step - 1) };
        opt.step(RowMut { scalars: 1, params, m, v }, grad, input, 1.0, Penalty::None, &mut scratch)
    }

    /// Two Adam steps against values computed by hand from the textbook rule
    /// m = β₁m + (1−β₁)g, v = β₂v + (1−β₂)g², θ −= lr·(m/(1−β₁ᵗ))/(√(v/(1−β₂ᵗ)) + ε).
    #[test]
    fn adam_matches_hand_computed_reference() {
        let opt = optimizer(Algorithm::Adam, None);
        let mut params = [0.5f32, -0.3, 0.2];
        let mut m = [0.0f32; 3];
        let mut v = [0.0f32; 3];
        assert!(run(&opt, &mut params, &mut m, &mut v, &[0.2, -0.1, 0.0], 1));
        // Step 1: m = 0.1·g, v = 0.001·g², m̂ = g, v̂ = g², so θ −= lr·sign(g) (ε aside).
        // bias: 0.5 − 0.1·0.2/(0.2 + 1e-8) = 0.400000005; factor: −0.3 + 0.01 = −0.29;
        // a zero gradient leaves its parameter alone.
        let expected_1 = [0.4f32, -0.29, 0.2];
        for (got, want) in params.iter().zip(expected_1) {
            assert!((got - want).abs() < 1e-6, "{params:?}");
        }
        // (1 − β₂ is 0.0009999871 in f32, hence the relative tolerance.)
        assert!((m[0] - 0.02).abs() < 1e-7 && (v[0] / 0.00004 - 1.0).abs() < 1e-4);
        // Step 2 with g = (0.4, 0.1, 0): bias m = 0.9·0.02 + 0.1·0.4 = 0.058,
        // v = 0.999·4e-5 + 0.001·0.16 = 1.9996e-4; m̂ = 0.058/0.19 = 0.305263,
        // v̂ = 1.9996e-4/0.001999 = 0.1000300; θ = 0.4 − 0.1·0.305263/0.316275 = 0.3034826.
        // factor: m = 0.9·(−0.01) + 0.01 = 0.001, v = 0.999·1e-5 + 1e-5 = 1.999e-5;
        // m̂ = 0.0052632, v̂ = 0.0100000, θ = −0.29 − 0.01·0.0052632/0.1 = −0.2905263.
        assert!(run(&opt, &mut params, &mut m, &mut v, &[0.4, 0.1, 0.0], 2));
        let expected_2 = [0.303_482_6f32, -0.290_526_3, 0.2];
        for (got, want) in params.iter().zip(expected_2) {
            assert!((got - want).abs() < 2e-6, "{params:?} vs {expected_2:?}");
        }
    }

    #[test]
    fn decay_power_matches_powi_and_flushes_tiny_values() {
        for beta in [0.0f32, 0.5, 0.9, 0.999] {
            for t in [1u32, 2, 3, 10, 100, 1000] {
                let exact = beta.powi(t as i32);
                let got = decay_power(beta, t);
                assert!(got == exact || (exact < 1e-18 && got == 0.0), "{beta}^{t}: {got} vs {exact}");
            }
        }
        assert_eq!(decay_power(0.999, 4_000_000_000), 0.0);
        let table = BiasCorrection::new(0.999);
        for t in [1u32, 2, 17, 5_000, 17_311, 17_312, 100_000] {
            assert_eq!(table.at(t), 1.0 / (1.0 - decay_power(0.999, t)), "step {t}");
        }
        assert_eq!(BiasCorrection::new(0.0).at(1), 1.0);
    }

    #[test]
    fn sgd_and_adagrad_steps() {
        let sgd = optimizer(Algorithm::Sgd, None);
        let mut params = [1.0f32, 1.0];
        assert!(run(&sgd, &mut params, &mut [], &mut [], &[2.0, 2.0], 1));
        assert_eq!(params, [1.0 - 0.1 * 2.0, 1.0 - 0.01 * 2.0]);

        let adagrad = optimizer(Algorithm::Adagrad, None);
        let mut params = [1.0f32, 1.0];
        let mut v = [0.0f32; 2];
        assert!(run(&adagrad, &mut params, &mut [], &mut v, &[2.0, -3.0], 1));
        assert_eq!(v, [4.0, 9.0]);
        assert!((params[0] - 0.9).abs() < 1e-6 && (params[1] - 1.01).abs() < 1e-6);
    }

    #[test]
    fn clipping_bounds_the_gradient_norm() {
        let sgd = optimizer(Algorithm::Sgd, Some(1.0));
        let mut params = [0.0f32, 0.0];
        assert!(run(&sgd, &mut params, &mut [], &mut [], &[30.0, 40.0], 1));
        // (30, 40) has norm 50, clipped to (0.6, 0.8).
        assert!((params[0] + 0.06).abs() < 1e-6 && (params[1] + 0.008).abs() < 1e-6);
    }

    #[test]
    fn non_finite_steps_leave_the_row_unchanged() {
        let adam = optimizer(Algorithm::Adam, None);
        let mut params = [0.5f32, 0.5];
        let mut m = [0.0f32; 2];
        let mut v = [0.0f32; 2];
        assert!(!run(&adam, &mut params, &mut m, &mut v, &[f32::NAN, 0.0], 1));
        // A finite gradient whose square overflows the second moment.
        assert!(!run(&adam, &mut params, &mut m, &mut v, &[3e30, 0.0], 1));
        assert_eq!((params, m, v), ([0.5, 0.5], [0.0; 2], [0.0; 2]));
    }

    /// With SGD biases and a prior count, a bias fed the same target is the
    /// shrunk running mean of what it saw, whatever the micro-batch sizes.
    #[test]
    fn bias_prior_count_gives_a_shrunk_running_mean() {
        let opt = Optimizer::new(&TrainerConfig {
            algorithm: Algorithm::Adam,
            bias_algorithm: Algorithm::Sgd,
            bias_learning_rate: 1e-6,
            bias_prior_count: Some(2.0),
            clip_norm: None,
            l2: 0.0,
            ..TrainerConfig::default()
        });
        let targets = [3.0f32, 1.0, 2.0, 5.0, 4.0, 4.0];
        let mut scratch = StepScratch::default();
        let (mut params, mut m, mut v) = ([0.0f32, 0.0], [0.0f32; 2], [0.0f32; 2]);
        let mut seen = 0u64;
        for (step, batch) in [&targets[..1], &targets[1..4], &targets[4..]].into_iter().enumerate() {
            // Squared-loss gradients at the current value, summed over the batch.
            let grad: f32 = batch.iter().map(|y| params[0] - y).sum();
            let input = StepInput { count: batch.len() as u32, step: step as u32 + 1, prior_updates: seen };
            let row = RowMut { scalars: 1, params: &mut params, m: &mut m, v: &mut v };
            assert!(opt.step(row, &[grad, 0.0], input, 1.0, Penalty::None, &mut scratch));
            seen += batch.len() as u64;
            let mean = targets[..seen as usize].iter().sum::<f32>() / (seen as f32 + 2.0);
            assert!((params[0] - mean).abs() < 1e-5, "after {seen}: {} vs {mean}", params[0]);
        }
        // The bias's Adam slots stay untouched.
        assert_eq!((m[0], v[0]), (0.0, 0.0));
    }

    /// The factor rate starts at twice `learning_rate` and decays towards it
    /// with the events a row has seen; biases are not boosted.
    #[test]
    fn factor_boost_count_raises_young_rows_factor_rate() {
        let sgd = Optimizer::new(&TrainerConfig { factor_boost_count: Some(4.0), ..plain_sgd() });
        let mut scratch = StepScratch::default();
        // (events before the step, events in it) → factor rate 0.1·(1 + 4/(n + 4)).
        for (prior_updates, count, rate) in [(0u64, 4u32, 0.15f32), (0, 1, 0.18), (12, 4, 0.12)] {
            let mut params = [0.0f32, 0.0];
            let row = RowMut { scalars: 1, params: &mut params, m: &mut [], v: &mut [] };
            let input = StepInput { count, step: 1, prior_updates };
            assert!(sgd.step(row, &[1.0, 1.0], input, 1.0, Penalty::None, &mut scratch));
            assert_eq!(params[0], -0.1);
            assert!((params[1] + rate).abs() < 1e-6, "{params:?} vs rate {rate}");
        }
    }

    /// A user row's scalars step at their own rates; an SGD rate is capped
    /// at 1/count (never past the mean gradient's step) and the session
    /// offset steps on the mean gradient.
    #[test]
    fn user_scalars_take_their_own_rates_and_sgd_never_overshoots_the_mean() {
        let sgd = Optimizer::new(&TrainerConfig {
            bias_learning_rate: 0.5,
            scale_learning_rate: 0.1,
            session_learning_rate: 0.2,
            ..plain_sgd()
        });
        let mut scratch = StepScratch::default();
        // [rating bias, click bias, scale, session, factor], gradients summed over `count` events of gradient 1.
        for (count, expected) in [(1u32, [-0.5f32, -0.5, -0.1, -0.2, -0.1]), (4, [-1.0, -1.0, -0.4, -0.2, -0.4])] {
            let mut params = [0.0f32; 5];
            let row = RowMut { scalars: 4, params: &mut params, m: &mut [], v: &mut [] };
            let input = StepInput { count, step: 1, prior_updates: 0 };
            assert!(sgd.step(row, &[count as f32; 5], input, 1.0, Penalty::None, &mut scratch));
            for (got, want) in params.iter().zip(expected) {
                assert!((got - want).abs() < 1e-6, "{count} events: {params:?} vs {expected:?}");
            }
        }
    }

    /// Adam on a user row: each scalar at its own rate, the factors at the
    /// learning rate, bit for bit the textbook rule per element.
    #[test]
    fn adam_steps_each_user_scalar_at_its_rate_bit_for_bit() {
        let config = TrainerConfig {
            algorithm: Algorithm::Adam,
            bias_algorithm: Algorithm::Adam,
            learning_rate: 0.01,
            bias_learning_rate: 0.5,
            scale_learning_rate: 0.1,
            session_learning_rate: 0.2,
            ..plain_sgd()
        };
        let adam = Optimizer::new(&config);
        let mut scratch = StepScratch::default();
        let mut params = [0.3f32, -0.2, 1.0, 0.05, 0.4, -0.7, 0.9];
        let (mut m, mut v) = ([0.01f32; 7], [0.002f32; 7]);
        let grad = [0.7f32, -1.3, 0.25, 2.0, -0.6, 0.45, -0.05];
        let (old_p, old_m, old_v) = (params, m, v);
        let row = RowMut { scalars: 4, params: &mut params, m: &mut m, v: &mut v };
        let input = StepInput { count: 1, step: 3, prior_updates: 2 };
        assert!(adam.step(row, &grad, input, 1.0, Penalty::None, &mut scratch));
        let (b1, b2, eps) = (config.beta1, config.beta2, config.epsilon);
        let first = 1.0 / (1.0 - decay_power(b1, 3));
        let second = 1.0 / (1.0 - decay_power(b2, 3));
        let rates = [0.5f32, 0.5, 0.1, 0.2, 0.01, 0.01, 0.01];
        for i in 0..7 {
            let mi = b1 * old_m[i] + (1.0 - b1) * grad[i];
            let vi = b2 * old_v[i] + (1.0 - b2) * grad[i] * grad[i];
            let pi = old_p[i] - rates[i] * (mi * first) / ((vi * second).sqrt() + eps);
            assert_eq!(
                (params[i].to_bits(), m[i].to_bits(), v[i].to_bits()),
                (pi.to_bits(), mi.to_bits(), vi.to_bits()),
                "slot {i}"
            );
        }
    }

    #[test]
    fn l2_penalty_scales_with_event_count() {
        let sgd = Optimizer::new(&TrainerConfig { l2: 0.5, ..plain_sgd() });
        let mut params = [1.0f32, 1.0];
        let mut scratch = StepScratch::default();
        let row = RowMut { scalars: 1, params: &mut params, m: &mut [], v: &mut [] };
        let input = StepInput { count: 3, step: 1, prior_updates: 0 };
        assert!(sgd.step(row, &[0.0, 0.0], input, 1.0, Penalty::L2, &mut scratch));
        // factor gradient = 3 events · 0.5 · 1.0 = 1.5; the bias is not penalised.
        assert_eq!(params, [1.0, 1.0 - 0.1 * 1.5]);
    }
}
