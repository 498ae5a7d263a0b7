//! DDPM ancestral step (Ho et al. 2020, eq. 7) as diffusers' DDPMScheduler.step computes it,
//! between any two listed timesteps (full chain or respaced).
use super::predict::{check_pair, clip, lincomb, x0_and_eps};
use super::types::{PredictionType, StepOutput, VarianceType};
use crate::error::{Error, Result};
use candle_core::Tensor;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DdpmParams {
    pub prediction: PredictionType,
    pub variance: VarianceType,
    pub clip: Option<f64>,
}

/// Posterior-mean coefficients (on x0, on x_t) of q(x_prev | x_t, x0).
pub fn ddpm_posterior_coeffs(ab_t: f64, ab_prev: f64) -> (f64, f64) {
    let alpha_t = ab_t / ab_prev;
    let beta_t = 1.0 - alpha_t;
    (
        ab_prev.sqrt() * beta_t / (1.0 - ab_t),
        alpha_t.sqrt() * (1.0 - ab_prev) / (1.0 - ab_t),
    )
}

/// The step's variance: fixed_small = posterior variance (clamped at 1e-20 as diffusers),
/// fixed_large = the effective beta_t = 1 - abar_t / abar_prev.
pub fn ddpm_variance(ab_t: f64, ab_prev: f64, kind: VarianceType) -> Result<f64> {
    let beta_t = 1.0 - ab_t / ab_prev;
    match kind {
        VarianceType::FixedSmall | VarianceType::FixedSmallLog => {
            Ok(((1.0 - ab_prev) / (1.0 - ab_t) * beta_t).max(1e-20))
        }
        VarianceType::FixedLarge => Ok(beta_t),
        other => Err(Error::invalid(format!(
            "variance_type '{}' is not supported (use fixed_small or fixed_large)",
            other.name()
        ))),
    }
}

/// One DDPM step. With `noise` = None this is the posterior mean (diffusers adds
/// sqrt(variance) * noise only for t > 0; the scheduler decides).
pub fn ddpm_step(
    model_output: &Tensor,
    sample: &Tensor,
    ab_t: f64,
    ab_prev: f64,
    p: &DdpmParams,
    noise: Option<&Tensor>,
) -> Result<StepOutput> {
    check_pair(model_output, sample)?;
    let var = ddpm_variance(ab_t, ab_prev, p.variance)?;
    let (x0, _) = x0_and_eps(model_output, sample, ab_t, p.prediction)?;
    let x0 = clip(x0, p.clip)?;
    let (c0, ct) = ddpm_posterior_coeffs(ab_t, ab_prev);
    let mut prev = lincomb(&[(c0, &x0), (ct, sample)])?;
    if let Some(z) = noise {
        prev = (prev + z.affine(var.sqrt(), 0.0)?)?;
    }
    Ok(StepOutput {
        prev_sample: prev,
        pred_original_sample: x0,
    })
}
