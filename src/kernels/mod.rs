//! Fused CPU kernels for the UNet's hot ops (issue 8).
//!
//! Each public function has the signature of the Candle expression it replaces and is a drop-in
//! for it: on CPU with f32 tensors it runs a custom op with a hand-written forward and backward;
//! on any other device or dtype it calls Candle's own ops, so CUDA/Metal builds are unchanged.
//! Measured figures (vs Candle and PyTorch, same run) are in docs/kernels.md.
pub mod act;
pub mod adamw;
pub mod attn;
pub mod bias;
pub mod conv;
#[cfg(feature = "cuda")]
mod cuda;
mod cuda_conv;
mod cudnn_conv;
mod direct;
pub mod ema;
mod flash;
mod gemm;
pub mod norm;
mod par;
mod pieces;
pub mod reference;
mod sum_squares;
pub mod upsample;
mod winograd;

pub use act::silu;
pub use attn::{scaled_softmax_last_dim, softmax_last_dim};
pub use bias::{add_row_bias, linear};
pub use conv::conv2d;
pub use flash::attention_channels_first;
pub use norm::{group_norm, group_norm_fused, group_norm_silu};
pub use sum_squares::sum_squares;
pub use upsample::upsample_nearest2x;

/// How many times the hand-written CUDA kernels (group norm, AdamW, convolution, upsampling,
/// the attention's softmax, the gradient norm's sum of squares, the EMA) have been launched in this process; 0 in
/// builds without `cuda`.
pub fn cuda_kernel_launches() -> usize {
    #[cfg(feature = "cuda")]
    return cuda::launches();
    #[cfg(not(feature = "cuda"))]
    0
}

/// cuDNN convolution calls so far in this process: nonzero only in a cuDNN build
/// (`FEATURES=cudnn`) whose CUDA convolutions ran through cuDNN (src/kernels/cudnn_conv.rs).
pub fn cudnn_convolutions() -> usize {
    cudnn_conv::calls()
}

/// Whether CUDA convolutions run through cuDNN in this process (a cuDNN build with libcudnn 9
/// loaded and neither `DIFFUSE_CUDNN=0` nor `DIFFUSE_CUDA_KERNELS=0`); false in other builds.
/// The first call in a cuDNN build loads the library (and warns if it is missing).
pub fn cudnn_in_use() -> bool {
    cudnn_conv::in_use()
}

use candle_core::{CpuStorage, DType, Layout, Tensor};

/// True when the fast CPU path applies to all of `ts`.
pub(crate) fn cpu_f32(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// Whether the CUDA kernels take `ts` (all f32 on a CUDA device, in a CUDA build); with
/// `switched`, only unless DIFFUSE_CUDA_KERNELS=0.
pub(crate) fn cuda_f32(ts: &[&Tensor], switched: bool) -> bool {
    #[cfg(feature = "cuda")]
    return match switched {
        true => cuda::enabled(ts),
        false => cuda::applies(ts),
    };
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (ts, switched);
        false
    }
}

/// The contiguous f32 data a custom op was handed (callers make inputs contiguous first).
pub(crate) fn f32_data<'a>(
    op: &str,
    s: &'a CpuStorage,
    l: &Layout,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: f32 input expected")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: contiguous input expected")
    };
    Ok(&v[a..b])
}

/// Every custom op's prologue: the contiguous f32 data of each of its inputs.
pub(crate) fn f32_inputs<'a, const N: usize>(
    op: &str,
    inputs: [(&'a CpuStorage, &Layout); N],
) -> candle_core::Result<[&'a [f32]; N]> {
    let mut out: [&[f32]; N] = [&[]; N];
    for (o, (s, l)) in out.iter_mut().zip(inputs) {
        *o = f32_data(op, s, l)?;
    }
    Ok(out)
}
