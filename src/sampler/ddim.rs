//! DDIM step (Song et al. 2021, eq. 12) as diffusers' DDIMScheduler.step computes it.
use super::predict::{check_pair, clip, lincomb, x0_and_eps};
use super::types::{PredictionType, StepOutput};
use crate::error::{Error, Result};
use candle_core::Tensor;

/// Settings of a DDIM step that do not change along the chain.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DdimParams {
    pub prediction: PredictionType,
    /// 0 = deterministic DDIM, 1 = DDPM-like ancestral noise.
    pub eta: f64,
    /// clip_sample_range when clip_sample is on.
    pub clip: Option<f64>,
}

/// sigma_t^2 / eta^2 = (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev).
pub fn ddim_variance(ab_t: f64, ab_prev: f64) -> f64 {
    (1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev)
}

/// One DDIM step from a timestep with cumulative alpha `ab_t` to one with `ab_prev`.
/// `noise` (standard normal, same shape) is required when eta > 0 and ignored otherwise.
pub fn ddim_step(
    model_output: &Tensor,
    sample: &Tensor,
    ab_t: f64,
    ab_prev: f64,
    p: &DdimParams,
    noise: Option<&Tensor>,
) -> Result<StepOutput> {
    check_pair(model_output, sample)?;
    let (x0, eps) = x0_and_eps(model_output, sample, ab_t, p.prediction)?;
    // diffusers keeps the unclipped eps (use_clipped_model_output = False).
    let x0 = clip(x0, p.clip)?;
    // Only with eta > 0: going upwards (inversion) the variance is negative, its root NaN.
    let std = if p.eta > 0.0 {
        p.eta * ddim_variance(ab_t, ab_prev).sqrt()
    } else {
        0.0
    };
    // Rounding can push 1 - abar_prev - std^2 a hair below 0 at eta = 1.
    let dir = (1.0 - ab_prev - std * std).max(0.0).sqrt();
    let mut prev = lincomb(&[(ab_prev.sqrt(), &x0), (dir, &eps)])?;
    if p.eta > 0.0 {
        let z = noise.ok_or_else(|| Error::invalid("DDIM with eta > 0 needs noise"))?;
        prev = (prev + z.affine(std, 0.0)?)?;
    }
    Ok(StepOutput {
        prev_sample: prev,
        pred_original_sample: x0,
    })
}
