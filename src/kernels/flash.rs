//! Attention on channels-first operands as one op per (batch x head) item: two gemms and a
//! row softmax forward; the scores recomputed, four gemms and a row pass backward.
//!
//! The UNet keeps q, k, v as q^T, k^T, v^T of [items, d, n] (1x1-conv projections of a
//! [B, C, H, W] map), so the gemms read them through strides and nothing is transposed in
//! memory. Candle's batched matmuls on these strided views, plus its autograd bookkeeping
//! for the scores, took ~8 ms per 64x196x64 attention forward; the scores [n, n] live only
//! in a per-thread workspace here and are recomputed in the backward (flash-attention style),
//! so the [items, n, n] tensors are never stored.
use super::act::exp_approx;
use super::gemm::{sgemm, Mat};
use super::par::{
    avx2_dispatch, for_each_chunk_mut, for_each_range, lane_sum, lane_sum2, with_workspace,
    SharedMut,
};
use super::{cpu_f32, f32_inputs};
use crate::error::{Error, Result};
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

/// Row softmax of `scale * s` in place, for rows of length `n`.
#[inline(always)]
fn softmax_rows_body(s: &mut [f32], n: usize, scale: f32) {
    for r in s.chunks_exact_mut(n) {
        let max = r.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        r.iter_mut()
            .for_each(|v| *v = exp_approx(scale * (*v - max)));
        let inv = (1.0 / lane_sum(r, |v| v)) as f32;
        r.iter_mut().for_each(|v| *v *= inv);
    }
}
avx2_dispatch!(fn softmax_rows_generic(s: &mut [f32], n: usize, scale: f32) => softmax_rows_body);

/// Row softmax of `scale * s` in place (AVX-512 where available; the portable loop, with its
/// scalar max and no FMAs, was 15% of an attention fwd+bwd: at 64x64x196 the forward went
/// 2.33 -> 2.14 ms and fwd+bwd 7.9 -> 7.4 ms).
fn softmax_rows(s: &mut [f32], n: usize, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was just detected.
        return unsafe { super::act::x512::softmax_rows(s, n, scale) };
    }
    softmax_rows_generic(s, n, scale)
}

/// p := scale * p * (dp - sum(dp * p)) per row: the gradient of the raw scores.
#[inline(always)]
fn softmax_bwd_rows_body(p: &mut [f32], dp: &[f32], n: usize, scale: f32) {
    for (pr, gr) in p.chunks_exact_mut(n).zip(dp.chunks_exact(n)) {
        let dot = lane_sum2(gr, pr).1 as f32;
        for (o, &g) in pr.iter_mut().zip(gr) {
            *o = scale * *o * (g - dot);
        }
    }
}
avx2_dispatch!(fn softmax_bwd_rows(p: &mut [f32], dp: &[f32], n: usize, scale: f32) => softmax_bwd_rows_body);

/// P = softmax(scale * Q K^T) for one item, Q^T and K^T given (d x n).
fn probs(p: &mut [f32], qt: &[f32], kt: &[f32], d: usize, n: usize, scale: f32) {
    sgemm(p, n, n, d, Mat::t(qt, n), Mat::rows(kt, n), false);
    softmax_rows(p, n, scale);
}

#[derive(Clone, Copy)]
struct Attn {
    scale: f32,
}

fn dims(l: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    l.shape().dims3()
}

impl CustomOp3 for Attn {
    fn name(&self) -> &'static str {
        "diffuse-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, d, n) = dims(l1)?;
        if dims(l2)? != (b, d, n) || dims(l3)? != (b, d, n) {
            candle_core::bail!("attention: q, k, v shapes differ")
        }
        let name = self.name();
        let [q, k, v] = f32_inputs(name, [(s1, l1), (s2, l2), (s3, l3)])?;
        let mut out = vec![0f32; b * d * n];
        for_each_chunk_mut(&mut out, d * n, |i, oi| {
            let r = i * d * n..(i + 1) * d * n;
            with_workspace(n * n, 0, |p, _| {
                probs(p, &q[r.clone()], &k[r.clone()], d, n, self.scale);
                // O^T = V^T P^T.
                sgemm(oi, d, n, n, Mat::rows(&v[r], n), Mat::t(p, n), false);
            })
        });
        Ok((CpuStorage::F32(out), Shape::from((b, d, n))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        dout: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dout = dout.contiguous()?;
        let (b, d, n) = q.dims3()?;
        let (sq, lq) = q.storage_and_layout();
        let (sk, lk) = k.storage_and_layout();
        let (sv, lv) = v.storage_and_layout();
        let (sg, lg) = dout.storage_and_layout();
        // Borrow the CPU buffers under their read guards (no copies).
        fn cpu(s: &candle_core::Storage) -> candle_core::Result<&CpuStorage> {
            match s {
                candle_core::Storage::Cpu(c) => Ok(c),
                _ => candle_core::bail!("attention backward: CPU tensors expected"),
            }
        }
        let name = "diffuse-attention-bwd";
        let [q, k, v, g] = f32_inputs(
            name,
            [
                (cpu(&sq)?, lq),
                (cpu(&sk)?, lk),
                (cpu(&sv)?, lv),
                (cpu(&sg)?, lg),
            ],
        )?;
        let len = b * d * n;
        let (mut dq, mut dk, mut dv) = (vec![0f32; len], vec![0f32; len], vec![0f32; len]);
        let (pq, pk, pv) = (
            SharedMut::new(&mut dq),
            SharedMut::new(&mut dk),
            SharedMut::new(&mut dv),
        );
        for_each_range(b, |items| {
            for i in items {
                let r = i * d * n..(i + 1) * d * n;
                // SAFETY: item i owns range r of each gradient.
                let (dqi, dki, dvi) = unsafe {
                    (
                        pq.slice(r.clone()),
                        pk.slice(r.clone()),
                        pv.slice(r.clone()),
                    )
                };
                let (qi, ki, vi, gi) = (&q[r.clone()], &k[r.clone()], &v[r.clone()], &g[r]);
                with_workspace(n * n, n * n, |p, dp| {
                    probs(p, qi, ki, d, n, self.scale);
                    // dV^T = dO^T P; dP = dO V^T.
                    sgemm(dvi, d, n, n, Mat::rows(gi, n), Mat::rows(p, n), false);
                    sgemm(dp, n, n, d, Mat::t(gi, n), Mat::rows(vi, n), false);
                    softmax_bwd_rows(p, dp, n, self.scale);
                    // With dS in p: dQ^T = K^T dS^T, dK^T = Q^T dS.
                    sgemm(dqi, d, n, n, Mat::rows(ki, n), Mat::t(p, n), false);
                    sgemm(dki, d, n, n, Mat::rows(qi, n), Mat::rows(p, n), false);
                });
            }
        });
        let t = |x: Vec<f32>| Tensor::from_vec(x, (b, d, n), &candle_core::Device::Cpu);
        Ok((Some(t(dq)?), Some(t(dk)?), Some(t(dv)?)))
    }
}

/// (softmax(scale * q k^T) v)^T from q^T, k^T, v^T of [items, d, n]: attention on
/// channels-first operands. Elsewhere (other devices, half precision), Candle's matmuls around
/// `attn::scaled_softmax_last_dim`: our op for f32 scores on the CPU (half precision takes its
/// softmax in f32) and on CUDA, Candle's ops otherwise.
pub fn attention_channels_first(
    qt: &Tensor,
    kt: &Tensor,
    vt: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    if qt.rank() != 3 {
        return Err(Error::invalid(format!(
            "attention: [items, d, n] expected, got {:?}",
            qt.dims()
        )));
    }
    if cpu_f32(&[qt, kt, vt]) {
        let op = Attn {
            scale: scale as f32,
        };
        return Ok(qt
            .contiguous()?
            .apply_op3(&kt.contiguous()?, &vt.contiguous()?, op)?);
    }
    super::reference::attention_channels_first_with(
        qt,
        kt,
        vt,
        scale,
        super::attn::scaled_softmax_last_dim,
    )
}
