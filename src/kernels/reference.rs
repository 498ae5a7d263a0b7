//! The Candle expressions our kernels replace, exactly as a model would write them: the ground
//! truth for tests and the baseline for `benches/kernels.rs`.
use crate::error::Result;
use candle_core::{DType, Tensor};

pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let y = x.conv2d(w, padding, stride, 1, 1)?;
    Ok(match b {
        Some(b) if b.rank() == 2 => y.broadcast_add(&b.unsqueeze(2)?.unsqueeze(3)?)?,
        Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?)?,
        None => y,
    })
}

/// torch's `nn.Linear` as Candle's `Linear` computes it.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let lin = candle_nn::Linear::new(w.clone(), b.cloned());
    Ok(candle_core::Module::forward(&lin, &x.contiguous()?)?)
}

pub fn group_norm(
    x: &Tensor,
    num_groups: usize,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let c = x.dim(1)?;
    let gn = candle_nn::GroupNorm::new(gamma.clone(), beta.clone(), c, num_groups, eps)?;
    Ok(candle_core::Module::forward(&gn, x)?)
}

pub fn group_norm_silu(
    x: &Tensor,
    num_groups: usize,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    Ok(group_norm(x, num_groups, gamma, beta, eps)?.silu()?)
}

pub fn silu(x: &Tensor) -> Result<Tensor> {
    Ok(x.silu()?)
}

pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax(x, candle_core::D::Minus1)?)
}

/// softmax(scale * x) as the attention writes it: the scores scaled (an affine op), then the
/// softmax; no scaling op for a scale of 1.
pub fn scaled_softmax_last_dim(x: &Tensor, scale: f64) -> Result<Tensor> {
    match scale == 1.0 {
        true => softmax_last_dim(x),
        false => softmax_last_dim(&(x * scale)?),
    }
}

pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    Ok(x.upsample_nearest2d(2 * h, 2 * w)?)
}

/// softmax(q k^T * scale) v on [batch, tokens, dim], as the UNet's attention block writes it.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    attention_with(q, k, v, scale, softmax_last_dim)
}

/// The same attention with a given softmax (ours or Candle's).
pub fn attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    softmax: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let s = (q.matmul(&k.t()?)? * scale)?;
    Ok(softmax(&s)?.matmul(v)?)
}

/// `attention` on channels-first operands q^T, k^T, v^T [items, d, n] -> o^T, with Candle's
/// matmuls on the transposed views and Candle's softmax.
pub fn attention_channels_first(
    qt: &Tensor,
    kt: &Tensor,
    vt: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    attention_channels_first_with(qt, kt, vt, scale, scaled_softmax_last_dim)
}

/// The same with a given `softmax(scores, scale)` = softmax(scale * scores) (ours or Candle's).
pub fn attention_channels_first_with(
    qt: &Tensor,
    kt: &Tensor,
    vt: &Tensor,
    scale: f64,
    softmax: impl Fn(&Tensor, f64) -> Result<Tensor>,
) -> Result<Tensor> {
    let dt = qt.dtype();
    if dt == DType::F16 || dt == DType::BF16 {
        // Half precision: scale q before the product so large heads' scores stay in f16's
        // range, and take the softmax in f32, as diffusers' attention does (upcast_softmax).
        let s = (qt * scale)?.t()?.matmul(kt)?.to_dtype(DType::F32)?;
        let p = softmax(&s, 1.0)?.to_dtype(dt)?;
        return Ok(vt.matmul(&p.t()?)?);
    }
    let s = qt.t()?.matmul(kt)?;
    Ok(vt.matmul(&softmax(&s, scale)?.t()?)?)
}
