//! The generic reverse loop: x_T -> model -> scheduler step -> ... -> x_0.
use super::scheduler::{build, SamplerConfig, Scheduler};
use crate::core::rng::NoiseRng;
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};

/// What the per-step callback sees (for progress bars and GIF frames).
pub struct StepInfo<'a> {
    /// 0-based position in the run.
    pub index: usize,
    pub steps: usize,
    /// The timestep the model was evaluated at.
    pub t: usize,
    /// The sample after this step.
    pub sample: &'a Tensor,
    pub pred_original_sample: &'a Tensor,
}

/// A denoiser: (x_t [B,..], t [B] u32) -> model output shaped like x_t.
pub type Model<'m> = dyn FnMut(&Tensor, &Tensor) -> Result<Tensor> + 'm;
pub type OnStep<'c> = dyn FnMut(&StepInfo) -> Result<()> + 'c;

/// Sample from `x_t` (the start noise x_T, f32 [B,..]) with the sampler `config` describes.
pub fn sample(
    model: &mut Model,
    x_t: &Tensor,
    config: &SamplerConfig,
    rng: &mut NoiseRng,
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
    rng: &mut NoiseRng,
    mut on_step: Option<&mut OnStep>,
) -> Result<Tensor> {
    if x_t.dtype() != DType::F32 || x_t.rank() == 0 {
        return Err(Error::invalid(format!(
            "start sample must be an f32 batch [B, ...], got {:?} {:?}",
            x_t.dtype(),
            x_t.dims()
        )));
    }
    let b = x_t.dim(0)?;
    let timesteps = scheduler.timesteps().to_vec();
    let mut x = x_t.clone();
    for (i, &t) in timesteps.iter().enumerate() {
        let tt = Tensor::from_vec(vec![t as u32; b], b, x.device())?;
        let out = model(&x, &tt)?;
        let step = scheduler.step(i, &out, &x, rng)?;
        x = step.prev_sample;
        if let Some(cb) = on_step.as_deref_mut() {
            cb(&StepInfo {
                index: i,
                steps: timesteps.len(),
                t,
                sample: &x,
                pred_original_sample: &step.pred_original_sample,
            })?;
        }
    }
    Ok(x)
}
