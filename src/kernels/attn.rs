//! Softmax over the last dimension with a fused backward, for attention scores: softmax(scale
//! * x), the attention's scale folded in.
//!
//! Candle's fused `softmax_last_dim` has no backward, so training falls back to the composite
//! (max, sub, exp, sum, div: 5 allocating ops forward and ~14 backward, and the scale one more
//! each way); the attention fwd+bwd was measured 8x slower than PyTorch on the CPU, mostly in
//! that backward. Here forward is one pass per row and backward is dx = scale * y * (dy -
//! sum(dy * y)), one pass per row: on the CPU, and on CUDA (src/kernels/cuda/softmax.cu, one
//! block per row; `DIFFUSE_CUDA_KERNELS=0` turns it off) where the composite's ~20 full-size
//! passes over the cifar10 preset's [128, 256, 256] scores ran in five of its six attentions.
use super::act::exp_approx;
use super::par::{avx2_dispatch, for_each_chunk_mut};
use super::{cpu_f32, f32_data, f32_inputs};
use crate::error::{Error, Result};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

/// Rows per parallel task.
const ROWS: usize = 64;

/// Row softmax of scale * x (scale 1: multiplying by it is exact, so the plain softmax's bits).
#[inline(always)]
fn fwd_rows_body(x: &[f32], y: &mut [f32], n: usize, scale: f32) {
    for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
        let max = xr.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * scale));
        for (o, &v) in yr.iter_mut().zip(xr) {
            *o = exp_approx(v * scale - max);
        }
        let inv = (1.0 / super::par::lane_sum(yr, |v| v)) as f32;
        yr.iter_mut().for_each(|o| *o *= inv);
    }
}
avx2_dispatch!(fn fwd_rows(x: &[f32], y: &mut [f32], n: usize, scale: f32) => fwd_rows_body);

#[inline(always)]
fn bwd_rows_body(y: &[f32], dy: &[f32], dx: &mut [f32], n: usize, scale: f32) {
    for ((yr, gr), or) in y
        .chunks_exact(n)
        .zip(dy.chunks_exact(n))
        .zip(dx.chunks_exact_mut(n))
    {
        let (_, dot) = super::par::lane_sum2(gr, yr);
        let dot = dot as f32;
        for ((o, &yv), &g) in or.iter_mut().zip(yr).zip(gr) {
            *o = scale * (yv * (g - dot));
        }
    }
}
avx2_dispatch!(fn bwd_rows(y: &[f32], dy: &[f32], dx: &mut [f32], n: usize, scale: f32) => bwd_rows_body);

fn last_dim(l: &Layout) -> candle_core::Result<usize> {
    match l.dims().last() {
        Some(&n) if n > 0 => Ok(n),
        _ => candle_core::bail!("softmax: empty last dimension"),
    }
}

/// softmax(scale * x) over the last dimension.
struct Softmax {
    scale: f32,
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "diffuse-softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(self.name(), s, l)?;
        let n = last_dim(l)?;
        let mut y = vec![0f32; x.len()];
        for_each_chunk_mut(&mut y, ROWS * n, |i, y| {
            fwd_rows(&x[i * ROWS * n..i * ROWS * n + y.len()], y, n, self.scale)
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let x = super::cuda::view(self.name(), s, l)?;
        let y = device::fwd(&s.device, &x, last_dim(l)?, self.scale)?;
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let op = SoftmaxBwd { scale: self.scale };
        Ok(Some(y.apply_op2_no_bwd(&dy.contiguous()?, &op)?))
    }
}

/// (y, dy) -> dx of softmax(scale * x) at its output y.
struct SoftmaxBwd {
    scale: f32,
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "diffuse-softmax-last-dim-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let [y, dy] = f32_inputs(self.name(), [(s1, l1), (s2, l2)])?;
        if y.len() != dy.len() {
            candle_core::bail!("softmax backward: shape mismatch")
        }
        let n = last_dim(l1)?;
        let mut dx = vec![0f32; y.len()];
        for_each_chunk_mut(&mut dx, ROWS * n, |i, o| {
            let r = i * ROWS * n..i * ROWS * n + o.len();
            bwd_rows(&y[r.clone()], &dy[r], o, n, self.scale)
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        if l1.dims() != l2.dims() {
            candle_core::bail!("softmax backward: shape mismatch")
        }
        let (y, dy) = (
            super::cuda::view(self.name(), s1, l1)?,
            super::cuda::view(self.name(), s2, l2)?,
        );
        let dx = device::bwd(&s1.device, &y, &dy, last_dim(l1)?, self.scale)?;
        Ok((dx, l1.shape().clone()))
    }
}

/// `candle_nn::ops::softmax(x, D::Minus1)`, differentiable (unlike Candle's fused
/// `softmax_last_dim`).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    scaled_softmax_last_dim(x, 1.0)
}

/// softmax(scale * x) over the last dimension, differentiable: our op on the CPU (f32) and on
/// CUDA (f32, unless `DIFFUSE_CUDA_KERNELS=0`), elsewhere Candle's ops
/// (`reference::scaled_softmax_last_dim`).
pub fn scaled_softmax_last_dim(x: &Tensor, scale: f64) -> Result<Tensor> {
    if x.rank() == 0 {
        return Err(Error::invalid("softmax of a scalar"));
    }
    // The kernels index within a row by a 32-bit int stepping by up to 256 threads.
    let rows_fit = x
        .dims()
        .last()
        .is_some_and(|&n| n > 0 && n < (1 << 31) - 1024)
        && x.elem_count() / x.dims()[x.rank() - 1].max(1) < 1 << 31;
    let cuda = super::cuda_f32(&[x], true) && rows_fit && x.elem_count() > 0;
    if cpu_f32(&[x]) || cuda {
        let op = Softmax {
            scale: scale as f32,
        };
        return Ok(x.contiguous()?.apply_op1(op)?);
    }
    super::reference::scaled_softmax_last_dim(x, scale)
}

#[cfg(feature = "cuda")]
mod device {
    use super::super::cuda::launched;
    use candle_core::cuda_backend::cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaDevice, WrapErr};
    use candle_core::CudaStorage;

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/softmax.ptx"));
    const MODULE: &str = "diffuse_softmax";

    /// One block per row of `n`: a thread per ~4 elements, 32 to 256 threads (the attention
    /// scores' rows are 16 to 4,096 long).
    fn rows(len: usize, n: usize) -> LaunchConfig {
        let threads = n.div_ceil(4).next_power_of_two().clamp(32, 256);
        LaunchConfig {
            grid_dim: ((len / n) as u32, 1, 1),
            block_dim: (threads as u32, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// y = softmax(scale * x) over rows of `n` (the caller keeps rows and n under 2^31).
    pub(super) fn fwd(
        dev: &CudaDevice,
        x: &CudaView<f32>,
        n: usize,
        scale: f32,
    ) -> candle_core::Result<CudaStorage> {
        run(dev, "diffuse_softmax_fwd_f32", &[x], n, scale)
    }

    /// dx = scale * y * (dy - sum(dy * y)) over rows of `n`.
    pub(super) fn bwd(
        dev: &CudaDevice,
        y: &CudaView<f32>,
        dy: &CudaView<f32>,
        n: usize,
        scale: f32,
    ) -> candle_core::Result<CudaStorage> {
        run(dev, "diffuse_softmax_bwd_f32", &[y, dy], n, scale)
    }

    /// Launches `kernel` over `inputs` (of equal lengths) into a new buffer of their length.
    fn run(
        dev: &CudaDevice,
        kernel: &str,
        inputs: &[&CudaView<f32>],
        n: usize,
        scale: f32,
    ) -> candle_core::Result<CudaStorage> {
        let len = inputs[0].len();
        let func = dev.get_or_load_custom_func(kernel, MODULE, PTX)?;
        // SAFETY: both kernels write every element of their output.
        let out = unsafe { dev.alloc::<f32>(len)? };
        let mut b = func.builder();
        for x in inputs {
            b.arg(*x);
        }
        b.arg(&out);
        candle_core::builder_arg!(b, n as i32, scale);
        // SAFETY: both kernels take (inputs..., output, int n, float scale): the forward
        // (x, y, ...), the backward (y, dy, dx, ...).
        unsafe { b.launch(rows(len, n)) }.w()?;
        launched();
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}
