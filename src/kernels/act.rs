//! SiLU forward and backward as single passes.
//!
//! Candle's silu backward is a composite of ~6 allocating ops (measured 15x PyTorch for
//! fwd+bwd). Here forward is one pass and backward one pass over (x, dy), with a branch-free
//! exp that the compiler vectorises (libm's `expf` does not).
use super::par::{avx2_dispatch, collect_chunks};
use super::{cpu_f32, f32_data, f32_inputs};
use crate::error::Result;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use std::mem::MaybeUninit;

/// Elements per rayon task: big enough to amortise scheduling, small enough to split 2 ways.
const CHUNK: usize = 16 * 1024;

/// exp(x) to ~2 ulp for x in [-87, 88] (clamped outside): 2^n * p(r) with r = x - n ln2,
/// n rounded by the 1.5*2^23 trick so there is no float->int conversion branch.
#[inline(always)]
pub(super) fn exp_approx(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    // Minimax polynomial for exp on [-ln2/2, ln2/2] (Cephes expf).
    let p = 1.987_569_1e-4f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_66;
    let p = p * r + 0.5;
    let p = p * r * r + r + 1.0;
    let bits = (t.to_bits() as i32 - MAGIC.to_bits() as i32 + 127) << 23;
    p * f32::from_bits(bits as u32)
}

#[inline(always)]
pub(super) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_approx(-x))
}

/// y = silu(a x + b), elementwise (a = 1, b = 0: plain silu; per channel: group norm + silu).
#[inline(always)]
fn silu_affine_body(x: &[f32], y: &mut [MaybeUninit<f32>], a: f32, b: f32) {
    assert_eq!(x.len(), y.len());
    for (o, &v) in y.iter_mut().zip(x) {
        let z = v * a + b;
        o.write(z * sigmoid(z));
    }
}
avx2_dispatch!(fn silu_affine_generic(x: &[f32], y: &mut [MaybeUninit<f32>], a: f32, b: f32) => silu_affine_body);

/// dz = dy * silu'(a x + b), silu'(z) = s (1 + z (1 - s)), s = sigmoid(z).
#[inline(always)]
fn silu_affine_grad_body(x: &[f32], dy: &[f32], dz: &mut [MaybeUninit<f32>], a: f32, b: f32) {
    assert!(x.len() == dz.len() && dy.len() == dz.len());
    for ((o, &v), &g) in dz.iter_mut().zip(x).zip(dy) {
        let z = v * a + b;
        let s = sigmoid(z);
        o.write(g * s * (1.0 + z * (1.0 - s)));
    }
}
avx2_dispatch!(fn silu_affine_grad_generic(x: &[f32], dy: &[f32], dz: &mut [MaybeUninit<f32>], a: f32, b: f32) => silu_affine_grad_body);

/// y = silu(a x + b) elementwise.
pub(super) fn silu_affine(x: &[f32], y: &mut [MaybeUninit<f32>], a: f32, b: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was just detected.
        return unsafe { x512::silu_affine(x, y, a, b) };
    }
    silu_affine_generic(x, y, a, b)
}

/// dz = dy * silu'(a x + b) elementwise.
pub(super) fn silu_affine_grad(x: &[f32], dy: &[f32], dz: &mut [MaybeUninit<f32>], a: f32, b: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was just detected.
        return unsafe { x512::silu_affine_grad(x, dy, dz, a, b) };
    }
    silu_affine_grad_generic(x, dy, dz, a, b)
}

/// AVX-512 versions: the portable loops compile to a separate multiply and add per step (Rust
/// does not contract to FMA) and a full-precision divide, which was half of silu's time;
/// here FMAs and a reciprocal estimate refined by one Newton step (relative error ~1e-7).
/// silu forward at 64x64x14x14: 0.117 -> 0.072 ms (PyTorch: 0.089 ms).
#[cfg(target_arch = "x86_64")]
pub(super) mod x512 {
    use super::super::par::tail_mask;
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// exp(-z) as `exp_approx` (same range reduction and polynomial, in Horner form), with
    /// FMAs, the negation folded into the reduction, and 2^n applied by `vscalefps` instead
    /// of building exponent bits.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp_neg16(z: __m512) -> __m512 {
        let c = _mm512_set1_ps;
        let z = _mm512_min_ps(_mm512_max_ps(z, c(-88.0)), c(87.0));
        // n = round(-z log2 e) (to nearest even); r = -z - n ln2 in two parts.
        let n = _mm512_roundscale_ps::<0x08>(_mm512_mul_ps(z, c(-std::f32::consts::LOG2_E)));
        let r = _mm512_fnmsub_ps(n, c(0.693_145_75), z);
        let r = _mm512_fnmadd_ps(n, c(1.428_606_8e-6), r);
        let mut p = c(1.987_569_1e-4);
        for k in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_66,
            0.5,
            1.0,
            1.0,
        ] {
            p = _mm512_fmadd_ps(p, r, c(k));
        }
        _mm512_scalef_ps(p, n)
    }

    /// 1 / (1 + exp(-z)): a reciprocal estimate and one Newton step instead of a divide.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn sigmoid16(z: __m512) -> __m512 {
        let d = _mm512_add_ps(_mm512_set1_ps(1.0), exp_neg16(z));
        let r = _mm512_rcp14_ps(d);
        _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0)))
    }

    /// a v + b, skipped for plain silu (a = 1, b = 0).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn affine<const AFFINE: bool>(v: __m512, a: __m512, b: __m512) -> __m512 {
        if AFFINE {
            _mm512_fmadd_ps(v, a, b)
        } else {
            v
        }
    }

    /// Row softmax of `scale * s` in place for rows of `n` (scale > 0), as
    /// `flash::softmax_rows`: a vector max (the portable `f32::max` fold stays scalar), exp
    /// as above, one sum, one scaling pass.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn softmax_rows(s: &mut [f32], n: usize, scale: f32) {
        let full = n / 16 * 16;
        let m = tail_mask(n - full);
        let vsc = _mm512_set1_ps(scale);
        for r in s.chunks_exact_mut(n) {
            let p = r.as_mut_ptr();
            let mut vm = _mm512_set1_ps(f32::NEG_INFINITY);
            for i in (0..full).step_by(16) {
                vm = _mm512_max_ps(vm, _mm512_loadu_ps(p.add(i)));
            }
            if full < n {
                vm = _mm512_mask_max_ps(vm, m, vm, _mm512_maskz_loadu_ps(m, p.add(full)));
            }
            let vmx = _mm512_set1_ps(_mm512_reduce_max_ps(vm));
            // exp(scale (v - max)) = exp(-(scale (max - v))).
            let e = |v: __m512| exp_neg16(_mm512_mul_ps(_mm512_sub_ps(vmx, v), vsc));
            let mut vs = _mm512_setzero_ps();
            for i in (0..full).step_by(16) {
                let x = e(_mm512_loadu_ps(p.add(i)));
                _mm512_storeu_ps(p.add(i), x);
                vs = _mm512_add_ps(vs, x);
            }
            if full < n {
                let x = e(_mm512_maskz_loadu_ps(m, p.add(full)));
                _mm512_mask_storeu_ps(p.add(full), m, x);
                vs = _mm512_mask_add_ps(vs, m, vs, x);
            }
            let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(vs));
            for i in (0..full).step_by(16) {
                _mm512_storeu_ps(p.add(i), _mm512_mul_ps(_mm512_loadu_ps(p.add(i)), inv));
            }
            if full < n {
                let x = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p.add(full)), inv);
                _mm512_mask_storeu_ps(p.add(full), m, x);
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn silu_affine(x: &[f32], y: &mut [MaybeUninit<f32>], a: f32, b: f32) {
        if a == 1.0 && b == 0.0 {
            silu_affine_impl::<false>(x, y, a, b)
        } else {
            silu_affine_impl::<true>(x, y, a, b)
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn silu_affine_impl<const AFFINE: bool>(
        x: &[f32],
        y: &mut [MaybeUninit<f32>],
        a: f32,
        b: f32,
    ) {
        assert_eq!(x.len(), y.len());
        let (va, vb) = (_mm512_set1_ps(a), _mm512_set1_ps(b));
        let f = |v: __m512| {
            let z = affine::<AFFINE>(v, va, vb);
            _mm512_mul_ps(z, sigmoid16(z))
        };
        let (xp, yp) = (x.as_ptr(), y.as_mut_ptr() as *mut f32);
        let n = x.len();
        let mut i = 0;
        while i + 16 <= n {
            _mm512_storeu_ps(yp.add(i), f(_mm512_loadu_ps(xp.add(i))));
            i += 16;
        }
        if i < n {
            let m = tail_mask(n - i);
            _mm512_mask_storeu_ps(yp.add(i), m, f(_mm512_maskz_loadu_ps(m, xp.add(i))));
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn silu_affine_grad(
        x: &[f32],
        dy: &[f32],
        dz: &mut [MaybeUninit<f32>],
        a: f32,
        b: f32,
    ) {
        if a == 1.0 && b == 0.0 {
            silu_affine_grad_impl::<false>(x, dy, dz, a, b)
        } else {
            silu_affine_grad_impl::<true>(x, dy, dz, a, b)
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn silu_affine_grad_impl<const AFFINE: bool>(
        x: &[f32],
        dy: &[f32],
        dz: &mut [MaybeUninit<f32>],
        a: f32,
        b: f32,
    ) {
        assert!(x.len() == dz.len() && dy.len() == dz.len());
        let (va, vb, one) = (_mm512_set1_ps(a), _mm512_set1_ps(b), _mm512_set1_ps(1.0));
        let f = |v: __m512, g: __m512| {
            let z = affine::<AFFINE>(v, va, vb);
            let s = sigmoid16(z);
            // g s (1 + z (1 - s))
            let t = _mm512_fmadd_ps(z, _mm512_sub_ps(one, s), one);
            _mm512_mul_ps(_mm512_mul_ps(g, s), t)
        };
        let (xp, gp, op) = (x.as_ptr(), dy.as_ptr(), dz.as_mut_ptr() as *mut f32);
        let n = x.len();
        let mut i = 0;
        while i + 16 <= n {
            let v = f(_mm512_loadu_ps(xp.add(i)), _mm512_loadu_ps(gp.add(i)));
            _mm512_storeu_ps(op.add(i), v);
            i += 16;
        }
        if i < n {
            let m = tail_mask(n - i);
            let v = f(
                _mm512_maskz_loadu_ps(m, xp.add(i)),
                _mm512_maskz_loadu_ps(m, gp.add(i)),
            );
            _mm512_mask_storeu_ps(op.add(i), m, v);
        }
    }
}

fn silu_fwd(x: &[f32]) -> Vec<f32> {
    // SAFETY: silu_affine writes every element of its piece (equal lengths asserted).
    unsafe {
        collect_chunks(x.len(), CHUNK, |i, y| {
            silu_affine(&x[i * CHUNK..i * CHUNK + y.len()], y, 1.0, 0.0)
        })
    }
}

fn silu_bwd(x: &[f32], dy: &[f32]) -> Vec<f32> {
    // SAFETY: silu_affine_grad writes every element of its piece (equal lengths asserted).
    unsafe {
        collect_chunks(x.len(), CHUNK, |i, o| {
            let r = i * CHUNK..i * CHUNK + o.len();
            silu_affine_grad(&x[r.clone()], &dy[r], o, 1.0, 0.0)
        })
    }
}

struct Silu;

impl CustomOp1 for Silu {
    fn name(&self) -> &'static str {
        "diffuse-silu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(self.name(), s, l)?;
        Ok((CpuStorage::F32(silu_fwd(x)), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &SiluBwd)?))
    }
}

/// (x, dy) -> dx.
struct SiluBwd;

impl CustomOp2 for SiluBwd {
    fn name(&self) -> &'static str {
        "diffuse-silu-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let [x, dy] = f32_inputs(self.name(), [(s1, l1), (s2, l2)])?;
        if x.len() != dy.len() {
            candle_core::bail!("silu backward: shape mismatch")
        }
        Ok((CpuStorage::F32(silu_bwd(x, dy)), l1.shape().clone()))
    }
}

/// `x.silu()`.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    if cpu_f32(&[x]) {
        return Ok(x.contiguous()?.apply_op1(Silu)?);
    }
    Ok(x.silu()?)
}

#[cfg(test)]
mod tests {
    use super::{exp_approx, silu_affine, silu_affine_grad};
    use std::mem::MaybeUninit;

    /// The dispatched silu and its gradient (AVX-512 here) against f64 formulas, over the
    /// whole range including the clamped tails, odd lengths (masked tails), with and without
    /// the affine part.
    #[test]
    fn silu_affine_and_grad_match_f64() {
        let n = 20_011;
        let x: Vec<f32> = (0..n).map(|i| (i as f32 - 10_000.0) * 0.011).collect();
        let dy: Vec<f32> = (0..n).map(|i| 1.0 + (i % 7) as f32 * 0.3).collect();
        for (a, b) in [(1.0f32, 0.0f32), (0.7, -0.4)] {
            for len in [n, 37, 5] {
                let mut y = vec![MaybeUninit::new(f32::NAN); len];
                let mut g = vec![MaybeUninit::new(f32::NAN); len];
                silu_affine(&x[..len], &mut y, a, b);
                silu_affine_grad(&x[..len], &dy[..len], &mut g, a, b);
                for i in 0..len {
                    let z = x[i] as f64 * a as f64 + b as f64;
                    let s = 1.0 / (1.0 + (-z).exp());
                    let (want_y, want_g) = (z * s, dy[i] as f64 * s * (1.0 + z * (1.0 - s)));
                    // SAFETY: both were initialised above.
                    let (got_y, got_g) = unsafe { (y[i].assume_init(), g[i].assume_init()) };
                    let tol = |w: f64| 1e-6 * (1.0 + w.abs());
                    assert!(
                        (got_y as f64 - want_y).abs() <= tol(want_y),
                        "silu({z}) = {got_y}, want {want_y}"
                    );
                    assert!(
                        (got_g as f64 - want_g).abs() <= tol(want_g),
                        "silu'({z}) = {got_g}, want {want_g}"
                    );
                }
            }
        }
    }

    #[test]
    fn exp_approx_matches_libm() {
        let mut worst = 0f32;
        for i in -8700..8790 {
            let x = i as f32 * 0.01 + 0.003;
            let (a, b) = (exp_approx(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
        }
        assert!(worst < 1e-6, "max rel err {worst}");
    }
}
