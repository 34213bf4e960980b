//! Small f32 vector kernels of the hot path, written so the compiler
//! vectorises them while the summation order stays fixed: the trainer and
//! every subscriber compute bit-identical sums from the same inputs
//! (docs/snapshots.md spells the order out for readers in other languages).

/// Lanes of the partial sums in [`lane_sum`]: a fixed order the compiler can map to SIMD.
const LANES: usize = 8;

/// `Σ f(a[i], b[i])` over the common length, summed in a fixed lane order.
#[inline(always)]
fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut lanes = [0.0f32; LANES];
    let mut chunks_a = a.chunks_exact(LANES);
    let mut chunks_b = b.chunks_exact(LANES);
    for (ca, cb) in (&mut chunks_a).zip(&mut chunks_b) {
        for lane in 0..LANES {
            lanes[lane] += f(ca[lane], cb[lane]);
        }
    }
    let mut tail = 0.0f32;
    for (&x, &y) in chunks_a.remainder().iter().zip(chunks_b.remainder()) {
        tail += f(x, y);
    }
    let pairs = [lanes[0] + lanes[4], lanes[1] + lanes[5], lanes[2] + lanes[6], lanes[3] + lanes[7]];
    (pairs[0] + pairs[2]) + (pairs[1] + pairs[3]) + tail
}

/// `Σ a[i]·b[i]` over the common length, summed in a fixed lane order.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    lane_sum(a, b, |x, y| x * y)
}

/// `Σ (g[i] + c·p[i])²`: the squared norm of a gradient with its L2 penalty `c·p`.
#[inline]
pub fn penalised_norm2(g: &[f32], p: &[f32], c: f32) -> f32 {
    lane_sum(g, p, |g, p| {
        let x = g + c * p;
        x * x
    })
}

/// `y += alpha · x`.
#[inline]
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// Whether every value is finite (no NaN, no ±∞), without branching per value.
#[inline]
pub fn all_finite(values: &[f32]) -> bool {
    const EXPONENT: u32 = 0x7f80_0000;
    values.iter().fold(0u32, |acc, v| acc | u32::from(v.to_bits() & EXPONENT == EXPONENT)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive_sum() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.25 - 3.0).collect();
        let b: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.125).collect();
        let naive: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
        assert!((f64::from(dot(&a, &b)) - naive).abs() < 1e-3);
    }

    /// The documented order (docs/snapshots.md): eight lanes, paired 0+4,
    /// 2+6, 1+5, 3+7, then the tail. Summed another way these inputs give
    /// another f32.
    #[test]
    fn dot_sums_in_the_documented_lane_order() {
        let mut a = vec![1.0f32; 19];
        a[0] = 1e8;
        a[4] = -1e8;
        a[1] = 3.0;
        a[17] = 0.5;
        let b = vec![1.0f32; 19];
        let mut lanes = [0.0f32; 8];
        for (k, (x, y)) in a[..16].iter().zip(&b[..16]).enumerate() {
            lanes[k % 8] += x * y;
        }
        let tail = (a[16] * b[16] + a[17] * b[17]) + a[18] * b[18];
        let documented =
            ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7])) + tail;
        assert_eq!(dot(&a, &b).to_bits(), documented.to_bits());
        let sequential: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert_ne!(dot(&a, &b).to_bits(), sequential.to_bits(), "the inputs tell the orders apart");
    }

    #[test]
    fn finiteness() {
        assert!(all_finite(&[0.0, -1.0, f32::MAX, f32::MIN_POSITIVE]));
        assert!(!all_finite(&[0.0, f32::NAN]));
        assert!(!all_finite(&[f32::NEG_INFINITY]));
    }
}
