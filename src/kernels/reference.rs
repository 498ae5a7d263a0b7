//! The Candle expressions our kernels replace, exactly as a model would write them: the ground
//! truth for tests and the baseline for `benches/kernels.rs`.
use crate::error::Result;
use candle_core::Tensor;

pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let y = x.conv2d(w, padding, stride, 1, 1)?;
    Ok(match b {
        Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?)?,
        None => y,
    })
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

pub fn silu(x: &Tensor) -> Result<Tensor> {
    Ok(x.silu()?)
}
