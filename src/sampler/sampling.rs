//! The generic reverse loop: x_T -> model -> scheduler step -> ... -> x_0.
use super::noise::NoiseSource;
use super::scheduler::{build, SamplerConfig, Scheduler};
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};

/// What the per-step callback sees (for progress bars and GIF frames).
pub struct StepInfo<'a> {
    /// 0-based position in the run.
    pub index: usize,
    pub steps: usize,
    /// The timestep the model was evaluated at (fractional for some samplers).
    pub t: f64,
    /// The step's x_t as the model saw it (sigma-space samplers: scaled to unit variance by
    /// `scale_model_input`, so every sampler's x_t shows alike).
    pub input: &'a Tensor,
    /// The sample after this step.
    pub sample: &'a Tensor,
    pub pred_original_sample: &'a Tensor,
}

/// A denoiser: (model input [B,..], t [B] f32) -> model output shaped like its input.
pub type Model<'m> = dyn FnMut(&Tensor, &Tensor) -> Result<Tensor> + 'm;
pub type OnStep<'c> = dyn FnMut(&StepInfo) -> Result<()> + 'c;

/// A loop's start must be an f32 batch [B, ...].
pub(crate) fn check_start(x: &Tensor) -> Result<()> {
    if x.dtype() != DType::F32 || x.rank() == 0 {
        return Err(Error::invalid(format!(
            "start sample must be an f32 batch [B, ...], got {:?} {:?}",
            x.dtype(),
            x.dims()
        )));
    }
    Ok(())
}

/// Sample from `x_t` (standard-normal start noise, f32 [B,..]; scaled here by the sampler's
/// `init_noise_sigma`) with the sampler `config` describes.
pub fn sample(
    model: &mut Model,
    x_t: &Tensor,
    config: &SamplerConfig,
    rng: &mut dyn NoiseSource,
    on_step: Option<&mut OnStep>,
) -> Result<Tensor> {
    let mut scheduler = build(config)?;
    run(scheduler.as_mut(), model, x_t, rng, on_step)
}

/// The same loop on a scheduler already built (e.g. on a custom alpha_bar table).
pub fn run(
    scheduler: &mut dyn Scheduler,
    model: &mut Model,
    x_t: &Tensor,
    rng: &mut dyn NoiseSource,
    on_step: Option<&mut OnStep>,
) -> Result<Tensor> {
    check_start(x_t)?;
    let sigma0 = scheduler.init_noise_sigma();
    let x = if sigma0 == 1.0 {
        x_t.clone()
    } else {
        x_t.affine(sigma0, 0.0)?
    };
    run_from(scheduler, model, &x, 0, rng, on_step)
}

/// The loop from step `start` on, with `x` already at that step's noise level in the
/// sampler's space (img2img: `scheduler.add_noise(start, x0, noise)`).
pub fn run_from(
    scheduler: &mut dyn Scheduler,
    model: &mut Model,
    x: &Tensor,
    start: usize,
    rng: &mut dyn NoiseSource,
    mut on_step: Option<&mut OnStep>,
) -> Result<Tensor> {
    check_start(x)?;
    let b = x.dim(0)?;
    let timesteps = scheduler.timesteps().to_vec();
    if start >= timesteps.len() {
        return Err(Error::invalid(format!(
            "start step {start} is past the run's {} steps",
            timesteps.len()
        )));
    }
    let mut x = x.clone();
    for (i, &t) in timesteps.iter().enumerate().skip(start) {
        let tt = Tensor::from_vec(vec![t as f32; b], b, x.device())?;
        let input = scheduler.scale_model_input(i, &x)?;
        let out = model(&input, &tt)?;
        let step = scheduler.step(i, &out, &x, rng)?;
        x = step.prev_sample;
        if let Some(cb) = on_step.as_deref_mut() {
            cb(&StepInfo {
                index: i,
                steps: timesteps.len(),
                t,
                input: &input,
                sample: &x,
                pred_original_sample: &step.pred_original_sample,
            })?;
        }
    }
    Ok(x)
}
