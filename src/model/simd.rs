//! The inner loops of the fused kernels ([`super::fused`]), written so that they vectorise,
//! and compiled for AVX-512 and AVX2 as well as the x86-64 baseline (SSE2), the widest
//! one picked at run time (the `multiversion` crate). Every loop is branch-free over
//! contiguous `f32` slices; `exp` and `erf` are polynomial or rational functions of their
//! argument rather than libm calls, which would keep the loops scalar.

use multiversion::multiversion;

/// Sum with sixteen independent accumulators, so that it vectorises (a plain `sum()` of
/// floats is one dependent chain).
#[inline(always)]
pub(crate) fn sum16(v: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = v.chunks_exact(16);
    let rest: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
    for c in chunks {
        for i in 0..16 {
            acc[i] += f(c[i]);
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// `sum(a * (b - shift))` with sixteen independent accumulators (see [`sum16`]).
pub(crate) fn dot16(a: &[f32], b: &[f32], shift: f32) -> f32 {
    debug_assert_eq!(a.len(), b.len(), "dot16 of slices of different lengths");
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let rest: f32 = (ca.remainder().iter())
        .zip(cb.remainder())
        .map(|(a, b)| a * (b - shift))
        .sum();
    for (a, b) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += a[i] * (b[i] - shift);
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Maximum with sixteen independent accumulators (`-inf` for an empty slice).
#[inline(always)]
fn max16(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = v.chunks_exact(16);
    let rest = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for i in 0..16 {
            acc[i] = acc[i].max(c[i]);
        }
    }
    acc.iter().copied().fold(rest, f32::max)
}

/// `e^x` in f32 from Cephes' `expf`: `x = n ln 2 + r` with `|r| <= ln 2 / 2`, a degree-6
/// polynomial for `e^r`, and `2^n` built in the exponent bits. Within 2.5e-7 (relative)
/// of the exact value for `x` in [-87.3, 88.3] (tested against f64); exactly 0 below
/// (where `e^x` is subnormal or 0 in f32), `e^88.37` up to 88.72 and +inf above, NaN for
/// NaN. Branch-free, so loops over it vectorise.
#[inline(always)]
pub(crate) fn exp_fast(x: f32) -> f32 {
    const LO: f32 = -87.336_55; // ln(2^-126): smallest normal result
    const HI: f32 = 88.376_26; // ln(2^127.5): n stays <= 127
    const LN2_HI: f32 = 0.693_359_4; // ln 2 split in two so that n * LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let xc = x.clamp(LO, HI);
    let t = xc * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // t's low mantissa bits hold n (t is in [2^23, 2^24), where the unit is 1).
    let n_int = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let two_n = f32::from_bits(((n_int + 127) << 23) as u32);
    let y = er * two_n;
    let y = if x < LO { 0.0 } else { y };
    if x > 88.722_84 {
        f32::INFINITY
    } else {
        y
    }
}

/// erf(x) as a rational function of x (odd numerator of degree 13, even denominator of
/// degree 8), x clamped to [-4, 4] where erf is ±1 in f32: only multiply-adds and one
/// division. The coefficients are the minimax fit Eigen uses for `erf` on floats; within
/// 5e-7 of the exact erf in f32 (tested against a 64-bit reference).
#[inline(always)]
pub(crate) fn erf_fast(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = -2.726_142_3e-10_f32;
    let p = p * x2 + 2.770_681_4e-8;
    let p = p * x2 - 2.101_024e-6;
    let p = p * x2 - 5.692_506_4e-5;
    let p = p * x2 - 7.349_906_3e-4;
    let p = p * x2 - 2.954_6e-3;
    let p = p * x2 - 1.609_603_3e-2;
    let q = -1.456_607_2e-5_f32;
    let q = q * x2 - 2.133_740_6e-4;
    let q = q * x2 - 1.682_827e-3;
    let q = q * x2 - 7.373_329e-3;
    let q = q * x2 - 1.426_473_9e-2;
    x * p / q
}

/// `out = gelu(x)`, exact (erf) GELU: `0.5 x (1 + erf(x / sqrt 2))`.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
pub(crate) fn gelu(out: &mut [f32], x: &[f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (erf_fast(v * std::f32::consts::FRAC_1_SQRT_2) + 1.) * 0.5 * v;
    }
}

/// `out = g * gelu'(x)`, `gelu'(x) = 0.5 (1 + erf(x / sqrt 2)) + x e^(-x²/2) / sqrt(2 pi)`.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
pub(crate) fn gelu_grad(out: &mut [f32], x: &[f32], g: &[f32]) {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(g) {
        let cdf = 0.5 * (1. + erf_fast(v * std::f32::consts::FRAC_1_SQRT_2));
        let pdf = exp_fast(-0.5 * v * v) * INV_SQRT_2PI;
        *o = g * (cdf + v * pdf);
    }
}

/// Softmax of each row of `d` values: `out[i] = e^(x[i] - max) / sum`.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
pub(crate) fn softmax_rows(out: &mut [f32], x: &[f32], d: usize) {
    for (o, row) in out.chunks_mut(d).zip(x.chunks(d)) {
        let max = max16(row);
        for (o, &v) in o.iter_mut().zip(row) {
            *o = exp_fast(v - max);
        }
        let inv = 1.0 / sum16(o, |v| v);
        for o in o.iter_mut() {
            *o *= inv;
        }
    }
}

/// Softmax backward in place, row by row: `dp` holds the gradient of the probabilities
/// `p` and becomes that of the scores, `p * (dp - sum(p * dp))`.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
pub(crate) fn softmax_grad_rows(dp: &mut [f32], p: &[f32], d: usize) {
    for (dp, p) in dp.chunks_mut(d).zip(p.chunks(d)) {
        let mut acc = [0f32; 16];
        for (i, (&a, &b)) in dp.iter().zip(p).enumerate() {
            acc[i % 16] += a * b;
        }
        let dot = acc.iter().sum::<f32>();
        for (g, &p) in dp.iter_mut().zip(p) {
            *g = p * (*g - dot);
        }
    }
}

/// The task features of one stage for rows of `c` channels: `out = x + bias +
/// sum_j gamma[j] * a[j]`, `a[j]` the rows of block j's adapter output (`gamma` already
/// scaled, `bias` the scaled sum of the betas).
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
pub(crate) fn kem_rows(out: &mut [f32], x: &[f32], a: &[&[f32]], gamma: &[f32], bias: &[f32]) {
    let c = bias.len();
    for (r, (o, x)) in out.chunks_mut(c).zip(x.chunks(c)).enumerate() {
        for i in 0..c {
            o[i] = x[i] + bias[i];
        }
        for (j, a) in a.iter().enumerate() {
            let (a, g) = (&a[r * c..][..c], &gamma[j * c..][..c]);
            for i in 0..c {
                o[i] += g[i] * a[i];
            }
        }
    }
}

/// Column sums over rows of `c` channels: `dgamma[i] += sum_rows g * a`, and where asked
/// `dbeta[i] += sum_rows g`.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
pub(crate) fn kem_grad_sums(dgamma: &mut [f32], dbeta: Option<&mut [f32]>, g: &[f32], a: &[f32]) {
    let c = dgamma.len();
    for (g, a) in g.chunks(c).zip(a.chunks(c)) {
        for i in 0..c {
            dgamma[i] += g[i] * a[i];
        }
    }
    if let Some(dbeta) = dbeta {
        for g in g.chunks(c) {
            for i in 0..c {
                dbeta[i] += g[i];
            }
        }
    }
}

/// One output position of a bilinear resize along an axis: `(i0, i1, w0, w1)`,
/// `y = w0 * x[i0] + w1 * x[i1]`.
pub(crate) type Tap = (usize, usize, f32, f32);

/// Bilinear resize of one `h x w` map (`x`) to `H x W` (`out`) from the taps along H and
/// W (`(i0, i1, w0, w1)` per output row and column): along W into `tmp` (`h x W`), then
/// each output row as a weighted sum of two `tmp` rows.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
pub(crate) fn resize_map(
    out: &mut [f32],
    x: &[f32],
    (taps_h, taps_w): (&[Tap], &[Tap]),
    tmp: &mut [f32],
) {
    let (ow, w) = (taps_w.len(), x.len() / (tmp.len() / taps_w.len()).max(1));
    for (t, row) in tmp.chunks_mut(ow).zip(x.chunks(w)) {
        for (t, &(i0, i1, w0, w1)) in t.iter_mut().zip(taps_w) {
            *t = w0 * row[i0] + w1 * row[i1];
        }
    }
    for (o, &(r0, r1, v0, v1)) in out.chunks_mut(ow).zip(taps_h) {
        let (t0, t1) = (&tmp[r0 * ow..][..ow], &tmp[r1 * ow..][..ow]);
        for ((o, &a), &b) in o.iter_mut().zip(t0).zip(t1) {
            *o = v0 * a + v1 * b;
        }
    }
}

/// The gradient of [`resize_map`]: from `g` (`H x W`) into `gx` (`h x w`, zeroed), through
/// `tmp` (`h x W`, zeroed).
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
pub(crate) fn resize_map_grad(
    gx: &mut [f32],
    g: &[f32],
    (taps_h, taps_w): (&[Tap], &[Tap]),
    tmp: &mut [f32],
) {
    let ow = taps_w.len();
    let w = gx.len() / (tmp.len() / ow).max(1);
    for (g, &(r0, r1, v0, v1)) in g.chunks(ow).zip(taps_h) {
        for (t, &g) in tmp[r0 * ow..][..ow].iter_mut().zip(g) {
            *t += v0 * g;
        }
        for (t, &g) in tmp[r1 * ow..][..ow].iter_mut().zip(g) {
            *t += v1 * g;
        }
    }
    for (gx, t) in gx.chunks_mut(w).zip(tmp.chunks(ow)) {
        for (&t, &(i0, i1, w0, w1)) in t.iter().zip(taps_w) {
            gx[i0] += w0 * t;
            gx[i1] += w1 * t;
        }
    }
}

/// Pixels per block of [`cross_entropy_block`]: the block's running max and sum stay in
/// L1 while the classes are walked.
pub(crate) const CE_BLOCK: usize = 512;

/// Per-pixel cross-entropy of one block of pixels of one image: `x` holds the image's
/// logits `[K, HW]`, the block is pixels `p0 .. p0 + out.len()` (at most [`CE_BLOCK`]);
/// `out[p] = logsumexp_k x[k, p] - x[label[p], p]`, left as is where the label is 255.
/// Every other label must be below K (the caller checks).
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
pub(crate) fn cross_entropy_block(
    out: &mut [f32],
    x: &[f32],
    labels: &[f32],
    (k, hw, p0): (usize, usize, usize),
) {
    let n = out.len();
    let class = |c: usize| &x[c * hw + p0..][..n];
    let mut max = [f32::NEG_INFINITY; CE_BLOCK];
    let max = &mut max[..n];
    for c in 0..k {
        for (m, &v) in max.iter_mut().zip(class(c)) {
            *m = m.max(v);
        }
    }
    let mut sum = [0f32; CE_BLOCK];
    let sum = &mut sum[..n];
    for c in 0..k {
        for ((s, &v), &m) in sum.iter_mut().zip(class(c)).zip(max.iter()) {
            *s += exp_fast(v - m);
        }
    }
    for (p, o) in out.iter_mut().enumerate() {
        let l = labels[p];
        if l != 255.0 {
            *o = sum[p].ln() + max[p] - x[l as usize * hw + p0 + p];
        }
    }
}

/// One class row of the cross-entropy gradient: `out[p] = g[p] (e^(x[p] - lse[p]) -
/// [label[p] == class])`, with `g = 0` and `lse = +inf` at ignored pixels (so 0 there).
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
pub(crate) fn cross_entropy_grad_row(
    out: &mut [f32],
    x: &[f32],
    labels: &[f32],
    lse: &[f32],
    g: &[f32],
    class: f32,
) {
    for ((((o, &v), &l), &lse), &g) in out.iter_mut().zip(x).zip(labels).zip(lse).zip(g) {
        let onehot = if l == class { 1.0 } else { 0.0 };
        *o = g * (exp_fast(v - lse) - onehot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_within_2_5e_7_of_exp() {
        let mut worst = 0f64;
        let mut x = -87.3f32;
        while x < 88.3 {
            let exact = (x as f64).exp();
            let rel = ((exp_fast(x) as f64 - exact) / exact).abs();
            worst = worst.max(rel);
            x += 0.000_731;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp_fast(0.0), 1.0);
        assert_eq!(exp_fast(-90.0), 0.0);
        assert_eq!(exp_fast(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_fast(89.0), f32::INFINITY);
        assert!(exp_fast(f32::NAN).is_nan());
    }

    /// The rational erf, evaluated in f32, against candle's f64 erf on [-7, 7].
    #[test]
    fn fast_erf_is_within_5e_7_of_erf() {
        let mut worst = 0f64;
        for i in -70_000..=70_000 {
            let x = i as f64 / 10_000.0;
            let exact = candle_core::cpu::erf::erf_f64(x);
            let got = erf_fast(x as f32) as f64;
            worst = worst.max((got - exact).abs());
        }
        assert!(worst < 5e-7, "worst error {worst}");
        assert!((erf_fast(f32::INFINITY) - 1.0).abs() < 5e-7);
        assert!((erf_fast(f32::NEG_INFINITY) + 1.0).abs() < 5e-7);
    }

    #[test]
    fn max_and_sum_cover_every_element() {
        // lengths around the 16-lane blocks, the extreme in every position
        for n in [1, 15, 16, 17, 33, 49] {
            for at in 0..n {
                let mut v = vec![-1f32; n];
                v[at] = 3.0;
                assert_eq!(max16(&v), 3.0, "n {n} at {at}");
                assert_eq!(sum16(&v, |x| x), 3.0 - (n - 1) as f32, "n {n} at {at}");
            }
        }
    }
}
