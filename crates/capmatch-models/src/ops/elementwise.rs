//! Element-wise and row-wise kernels: `exp`, `erf`, the activations, softmax and layer norm.
//! Each is written so the compiler vectorises it (no libm calls in the loops), and each row's
//! result depends on that row alone.

use rayon::prelude::*;

use super::vectorised;
use crate::activation::HiddenAct;

/// `e^x` in f32 without a libm call, so loops over it vectorise: `e^x = 2^i · e^r` with
/// `i` the nearest integer of `x·log2 e`, `r = x − i·ln 2` in two parts (Cody–Waite, so `r`
/// is exact enough at large |x|), and a degree-6 polynomial for `e^r`, `|r| ≤ ln2/2`.
/// Relative error ≤ 4e-7; under −87 it flushes to ≈ 0, over 88 it saturates.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // Plain `a * b + c` rather than `mul_add`: without FMA in the target that is a libm call.
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding and subtracting it rounds to even.
    const LN2_HI: f32 = 0.693_359_4; // ln 2 with its low bits zero, so i·LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let i = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = (x - i * LN2_HI) - i * LN2_LO;
    let p = 1.0 / 720.0f32;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    p * f32::from_bits(((i as i32 + 127) << 23) as u32)
}

/// `erf(x)` as PyTorch's vectorised CPU kernels compute it (Abramowitz & Stegun 7.1.26,
/// |error| ≤ 1.5e-7), which is what `nn.GELU()` runs on f32 CPU tensors.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (0.327_591_1 * a + 1.0);
    let r = 1.061_405_4 * t - 1.453_152;
    let r = r * t + 1.421_413_8;
    let r = r * t - 0.284_496_74;
    let r = r * t + 0.254_829_6;
    let y = 1.0 - r * t * exp(-a * a);
    y.copysign(x)
}

/// `tanh(x) = 1 − 2 / (e^{2x} + 1)`, through the vectorisable [`exp`].
#[inline(always)]
fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

/// Applies the activation in place, in parallel chunks of whole rows of `width`.
pub(crate) fn activate(act: HiddenAct, x: &mut [f32], width: usize) {
    match act {
        HiddenAct::QuickGelu => for_rows(x, width, |v| v / (1.0 + exp(-1.702 * v))),
        HiddenAct::Gelu => for_rows(x, width, |v| 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2))),
        HiddenAct::GeluTanh => {
            const SQRT_2_OVER_PI: f32 = 0.797_884_6;
            for_rows(x, width, |v| 0.5 * v * (1.0 + tanh(SQRT_2_OVER_PI * (v + 0.044_715 * v * v * v))))
        }
        HiddenAct::Relu => for_rows(x, width, |v| v.max(0.0)),
        HiddenAct::Silu => for_rows(x, width, |v| v / (1.0 + exp(-v))),
    }
}

/// `v = f(v)` over `x`, in parallel chunks of whole rows.
fn for_rows(x: &mut [f32], width: usize, f: impl Fn(f32) -> f32 + Sync + Copy) {
    let rows_per_task = (16384 / width.max(1)).max(1);
    x.par_chunks_mut(width.max(1) * rows_per_task).for_each(|chunk| vectorised(|| chunk.iter_mut().for_each(|v| *v = f(*v))));
}

/// `r = softmax(r)`, vectorised; the order of the sums depends on `r`'s length only.
pub(crate) fn softmax_in_place(r: &mut [f32]) {
    vectorised(|| {
        const L: usize = 16;
        let mut lanes = [f32::NEG_INFINITY; L];
        let chunks = r.chunks_exact(L);
        let rest = chunks.remainder().iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        for c in chunks {
            for l in 0..L {
                lanes[l] = lanes[l].max(c[l]);
            }
        }
        let max = lanes.iter().cloned().fold(rest, f32::max);
        let mut sums = [0f32; L];
        let mut chunks = r.chunks_exact_mut(L);
        for c in &mut chunks {
            for l in 0..L {
                c[l] = exp(c[l] - max);
                sums[l] += c[l];
            }
        }
        let mut sum: f32 = 0.0;
        for v in chunks.into_remainder() {
            *v = exp(*v - max);
            sum += *v;
        }
        let inv = 1.0 / (sum + sums.iter().sum::<f32>());
        r.iter_mut().for_each(|v| *v *= inv);
    })
}

/// `Σ f(v)` over `row` in 16 independent lanes (then across them), so it vectorises.
#[inline(always)]
fn lanes_sum(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = row.chunks_exact(16);
    let rest: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for l in 0..16 {
            acc[l] += f(c[l]);
        }
    }
    rest + acc.iter().sum::<f32>()
}

/// `nn.LayerNorm` over rows of f32.
#[derive(Debug, Clone)]
pub struct LayerNormF32 {
    w: Vec<f32>,
    b: Vec<f32>,
    eps: f32,
}

impl LayerNormF32 {
    pub(crate) fn new(w: Vec<f32>, b: Vec<f32>, eps: f64) -> Self {
        assert_eq!(w.len(), b.len());
        Self { w, b, eps: eps as f32 }
    }

    /// Normalises each row of `x` into `dst` (two passes per row: mean, then variance of the
    /// centred values, as torch does, so no cancellation).
    pub(crate) fn forward_into(&self, x: &[f32], dst: &mut [f32]) {
        let d = self.w.len();
        let (w, b, eps) = (&self.w[..], &self.b[..], self.eps);
        dst.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(out, row)| {
            vectorised(|| {
                let n = row.len() as f32;
                // Sums in 16 lanes so they vectorise (a sequential f32 sum cannot).
                let mean = lanes_sum(row, |v| v) / n;
                let var = lanes_sum(row, |v| (v - mean) * (v - mean)) / n;
                let inv = 1.0 / (var + eps).sqrt();
                for i in 0..row.len() {
                    out[i] = (row[i] - mean) * inv * w[i] + b[i];
                }
            })
        });
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    /// erf in f64 by its Maclaurin series (converges fast for |x| ≤ 4; beyond, erf = ±1 in f32).
    fn erf_f64(x: f64) -> f64 {
        if x.abs() > 4.0 {
            return x.signum();
        }
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term.abs() > 1e-17 * sum.abs().max(1e-300) {
            n += 1.0;
            term *= -x * x / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn exp_and_erf_are_accurate() {
        for i in -8000..=8000 {
            let x = i as f32 / 100.0;
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            assert!((got - want).abs() <= 4e-7 * want, "exp({x}) = {got}, want {want}");
            let (got, want) = (erf(x) as f64, erf_f64(x as f64));
            // A&S bound 1.5e-7, plus f32 cancellation in 1 − r·t·e^(−x²) near 0.
            assert!((got - want).abs() <= 6e-7, "erf({x}) = {got}, want {want}");
        }
        assert_eq!(exp(-1000.0), exp(-87.0));
        assert!(exp(-87.0) < 1e-37 && exp(f32::NEG_INFINITY) < 1e-37);
    }

    /// The vectorised activations against candle's (exact erf GELU, tanh GELU, quick GELU, ...).
    #[test]
    fn activations_match_candle() {
        let x: Vec<f32> = super::super::tests::values(3000, 7).iter().map(|v| v * 6.0).collect();
        for act in [HiddenAct::Gelu, HiddenAct::GeluTanh, HiddenAct::QuickGelu, HiddenAct::Relu, HiddenAct::Silu] {
            let mut got = x.clone();
            activate(act, &mut got, 100);
            let want = act.forward(&Tensor::from_slice(&x, x.len(), &Device::Cpu).unwrap()).unwrap().to_vec1::<f32>().unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 2e-6 * (1.0 + w.abs()), "{act:?}({}) = {g}, want {w}", x[i]);
            }
        }
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut r: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
        let orig = r.clone();
        softmax_in_place(&mut r);
        assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        for i in 0..r.len() {
            for j in 0..r.len() {
                assert_eq!(orig[i] < orig[j], r[i] < r[j]);
            }
        }
    }
}
