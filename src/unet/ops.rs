//! The UNet's compute primitives, each behind one small function so the fast CPU kernels
//! (src/kernels: direct convolution, fused group-norm+SiLU, fused attention) replace the
//! body without touching the blocks. Everything here is device-generic Candle code and keeps the
//! autograd graph intact.
use crate::core::rng::NoiseRng;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Linear, VarBuilder};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Opt-in per-op timing for benchmarks: one atomic load per op when off. Candle's CPU ops
/// run synchronously, so wall time per call is the op's cost (not so on CUDA).
static PROFILE: AtomicBool = AtomicBool::new(false);
static TIMES: Mutex<Vec<(&'static str, Duration, usize)>> = Mutex::new(Vec::new());

pub fn set_profiling(on: bool) {
    PROFILE.store(on, Ordering::Relaxed);
}

/// Accumulated (op, total time, calls) since the last call; resets the counters.
pub fn take_profile() -> Vec<(&'static str, Duration, usize)> {
    std::mem::take(&mut *TIMES.lock().expect("profile"))
}

fn timed<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    if !PROFILE.load(Ordering::Relaxed) {
        return f();
    }
    let t0 = Instant::now();
    let r = f();
    let dt = t0.elapsed();
    let mut v = TIMES.lock().expect("profile");
    match v.iter_mut().find(|e| e.0 == name) {
        Some(e) => {
            e.1 += dt;
            e.2 += 1;
        }
        None => v.push((name, dt, 1)),
    }
    r
}

thread_local! {
    static FAST: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Use our fast CPU kernels (default) or Candle's reference expressions on this thread: the
/// reference path is what tests compare the whole model against.
pub fn set_fast_kernels(on: bool) {
    FAST.with(|f| f.set(on));
}

fn fast() -> bool {
    FAST.with(|f| f.get())
}

/// The kernels report our typed errors; the model works in candle's.
fn kernel(r: crate::Result<Tensor>) -> Result<Tensor> {
    r.map_err(|e| match e {
        crate::Error::Candle(e) => e,
        other => candle_core::Error::Msg(other.to_string()),
    })
}

/// A 3x3 (or 1x1) convolution named like torch's nn.Conv2d (`weight`, `bias`).
pub fn conv2d_layer(
    c_in: usize,
    c_out: usize,
    kernel: usize,
    padding: usize,
    stride: usize,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    candle_nn::conv2d(c_in, c_out, kernel, cfg, vb)
}

/// Fast CPU kernel (direct or im2col + gemm; docs/kernels.md), our im2col kernels around cuBLAS
/// on CUDA (f32), Candle's own conv2d elsewhere.
pub fn conv2d(conv: &Conv2d, x: &Tensor) -> Result<Tensor> {
    conv2d_with(conv, x, conv.bias())
}

/// The same convolution with `bias` ([co] or [n, co]) in place of the layer's own.
pub fn conv2d_bias(conv: &Conv2d, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    conv2d_with(conv, x, Some(bias))
}

fn conv2d_with(conv: &Conv2d, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let c = conv.config();
    timed("conv2d", || {
        kernel(crate::kernels::conv2d(
            x,
            conv.weight(),
            bias,
            c.stride,
            c.padding,
        ))
    })
}

/// Linear layer on [.., in], flattened to one 2-D matmul (the reference path is Candle's
/// `Linear` on a contiguous input: with Candle 0.11.1 a transposed [B, N, C] view fed to
/// `Linear` gave wrong values on CPU, caught by the golden test).
pub fn linear(lin: &Linear, x: &Tensor) -> Result<Tensor> {
    timed("linear", || {
        kernel(if fast() {
            crate::kernels::linear(x, lin.weight(), lin.bias())
        } else {
            crate::kernels::reference::linear(x, lin.weight(), lin.bias())
        })
    })
}

/// torch.nn.GroupNorm with affine parameters; parameters are public for future kernels.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub groups: usize,
    pub eps: f64,
}

impl GroupNorm {
    pub fn new(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            candle_core::bail!(
                "{}: {channels} channels are not divisible by {groups} groups",
                vb.prefix()
            );
        }
        let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.0))?;
        Ok(Self {
            weight,
            bias,
            groups,
            eps,
        })
    }
}

/// Group normalisation over [B, C, ...]: per (sample, group) mean and biased variance, as torch.
pub fn group_norm(gn: &GroupNorm, x: &Tensor) -> Result<Tensor> {
    timed("group_norm", || {
        kernel(if fast() {
            crate::kernels::group_norm(x, gn.groups, &gn.weight, &gn.bias, gn.eps)
        } else {
            crate::kernels::reference::group_norm(x, gn.groups, &gn.weight, &gn.bias, gn.eps)
        })
    })
}

pub fn silu(x: &Tensor) -> Result<Tensor> {
    timed("silu", || {
        kernel(if fast() {
            crate::kernels::silu(x)
        } else {
            crate::kernels::reference::silu(x)
        })
    })
}

/// GroupNorm followed by SiLU: the pair every resnet runs twice, fused in one kernel on CPU.
pub fn group_norm_silu(gn: &GroupNorm, x: &Tensor) -> Result<Tensor> {
    timed("group_norm_silu", || {
        kernel(if fast() {
            crate::kernels::group_norm_silu(x, gn.groups, &gn.weight, &gn.bias, gn.eps)
        } else {
            crate::kernels::reference::group_norm_silu(x, gn.groups, &gn.weight, &gn.bias, gn.eps)
        })
    })
}

/// A linear layer (weight [out, in]) applied to every pixel of x [B, in, H, W], as a 1x1
/// convolution: the output stays channels-first.
pub fn linear_1x1(lin: &Linear, x: &Tensor) -> Result<Tensor> {
    let (o, i) = lin.weight().dims2()?;
    let w = lin.weight().reshape((o, i, 1, 1))?;
    timed("linear", || {
        kernel(crate::kernels::conv2d(x, &w, lin.bias(), 1, 0))
    })
}

/// Scaled dot-product attention on transposed tensors q^T, k^T, v^T of [B*heads, d, N]:
/// returns (softmax(q k^T * scale) v)^T, [B*heads, d, N]. The fast path is one fused op
/// (kernels::flash); the reference is Candle's matmuls on strided views and the softmax.
pub fn attention_channels_first(
    qt: &Tensor,
    kt: &Tensor,
    vt: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    timed("attention", || {
        kernel(if fast() {
            crate::kernels::attention_channels_first(qt, kt, vt, scale)
        } else {
            crate::kernels::reference::attention_channels_first(qt, kt, vt, scale)
        })
    })
}

/// Nearest-neighbour 2x upsampling (torch F.interpolate(scale_factor=2, mode="nearest")).
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let _ = (h, w);
    timed("upsample", || {
        kernel(if fast() {
            crate::kernels::upsample_nearest2x(x)
        } else {
            crate::kernels::reference::upsample_nearest2x(x)
        })
    })
}

/// Inverted dropout with a mask drawn from our seeded generator.
pub fn dropout(x: &Tensor, p: f64, rng: &mut NoiseRng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let keep = (1.0 - p) as f32;
    let mask: Vec<f32> = rng
        .uniform_f32(x.elem_count())
        .into_iter()
        .map(|u| if u < keep { 1.0 / keep } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x.mul(&mask)
}

/// Frequencies of diffusers' `get_timestep_embedding`, formed in float32 step by step as torch
/// does (exponent = -ln(10000) * k, then / (half - shift), then exp), so the sinusoid matches.
pub fn timestep_freqs(dim: usize, freq_shift: i64, device: &Device) -> Result<Tensor> {
    let half = dim / 2;
    let neg_ln = -(10000f64.ln()) as f32;
    let denom = (half as i64 - freq_shift) as f32;
    let f: Vec<f32> = (0..half)
        .map(|k| ((neg_ln * k as f32) / denom).exp())
        .collect();
    Tensor::from_vec(f, (1, half), device)
}

/// Sinusoidal embedding [B, dim] of timesteps [B] (any numeric dtype), in float32 like diffusers.
pub fn timestep_embedding(
    timesteps: &Tensor,
    freqs: &Tensor,
    dim: usize,
    flip_sin_to_cos: bool,
) -> Result<Tensor> {
    let b = timesteps.elem_count();
    let args = timesteps
        .to_dtype(DType::F32)?
        .reshape((b, 1))?
        .broadcast_mul(freqs)?;
    let (sin, cos) = (args.sin()?, args.cos()?);
    let emb = if flip_sin_to_cos {
        Tensor::cat(&[cos, sin], 1)?
    } else {
        Tensor::cat(&[sin, cos], 1)?
    };
    if dim % 2 == 1 {
        emb.pad_with_zeros(1, 0, 1)
    } else {
        Ok(emb)
    }
}
