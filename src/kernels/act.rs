//! SiLU forward and backward as single passes.
//!
//! Candle's silu backward is a composite of ~6 allocating ops (measured 15x PyTorch for
//! fwd+bwd). Here forward is one pass and backward one pass over (x, dy), with a branch-free
//! exp that the compiler vectorises (libm's `expf` does not).
use super::par::{avx2_dispatch, collect_chunks};
use super::{cpu_f32, f32_data};
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

#[inline(always)]
fn silu_fwd_body(x: &[f32], y: &mut [MaybeUninit<f32>]) {
    assert_eq!(x.len(), y.len());
    for (o, &v) in y.iter_mut().zip(x) {
        o.write(v * sigmoid(v));
    }
}
avx2_dispatch!(fn silu_fwd_chunk(x: &[f32], y: &mut [MaybeUninit<f32>]) => silu_fwd_body);

/// d silu / dx = s (1 + x (1 - s)), s = sigmoid(x).
#[inline(always)]
fn silu_bwd_body(x: &[f32], dy: &[f32], dx: &mut [MaybeUninit<f32>]) {
    assert!(x.len() == dx.len() && dy.len() == dx.len());
    for ((o, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
        let s = sigmoid(v);
        o.write(g * s * (1.0 + v * (1.0 - s)));
    }
}
avx2_dispatch!(fn silu_bwd_chunk(x: &[f32], dy: &[f32], dx: &mut [MaybeUninit<f32>]) => silu_bwd_body);

fn silu_fwd(x: &[f32]) -> Vec<f32> {
    // SAFETY: silu_fwd_chunk writes every element of its piece (equal lengths asserted).
    unsafe {
        collect_chunks(x.len(), CHUNK, |i, y| {
            silu_fwd_chunk(&x[i * CHUNK..i * CHUNK + y.len()], y)
        })
    }
}

fn silu_bwd(x: &[f32], dy: &[f32]) -> Vec<f32> {
    // SAFETY: silu_bwd_chunk writes every element of its piece (equal lengths asserted).
    unsafe {
        collect_chunks(x.len(), CHUNK, |i, o| {
            let r = i * CHUNK..i * CHUNK + o.len();
            silu_bwd_chunk(&x[r.clone()], &dy[r], o)
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
        let (x, dy) = (
            f32_data(self.name(), s1, l1)?,
            f32_data(self.name(), s2, l2)?,
        );
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
    use super::exp_approx;

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
