//! Euler and Euler ancestral in sigma space (Karras et al. 2022, Algorithm 1 without churn)
//! as diffusers' EulerDiscreteScheduler and EulerAncestralDiscreteScheduler compute them.
use super::noise::NoiseSource;
use super::predict::{check_pair, div, mul};
use super::scheduler::{out_of_run, SamplerConfig, Scheduler};
use super::sigmas::{
    discrete_run, init_noise_sigma, linspace_f32_desc, scale_input, sigma_table, FinalSigma,
    SigmaRun,
};
use super::timesteps::ddim_timesteps;
use super::types::{PredictionType, SamplerKind, StepOutput, TimestepSpacing};
use crate::error::Result;
use candle_core::Tensor;

/// x0 implied by a model output at noise level `sigma` (diffusers' Euler/Heun conversion:
/// the sample is the scaled-up x_t = x0 + sigma eps). Scalars and operations in diffusers'
/// float32 order (at sigma ~ 2e4 the rounding shows in the chain).
pub fn sigma_x0(mo: &Tensor, x: &Tensor, sigma: f64, prediction: PredictionType) -> Result<Tensor> {
    let s = sigma as f32;
    Ok(match prediction {
        PredictionType::Epsilon => (x - mul(mo, s)?)?,
        PredictionType::VPrediction => {
            let s2 = s * s + 1.0;
            (mul(mo, -s / s2.sqrt())? + div(x, s2)?)?
        }
        PredictionType::Sample => mo.clone(),
    })
}

/// diffusers' Euler update `x + (x - x0) / sigma * dt`, in its float32 order.
pub fn euler_update(x: &Tensor, x0: &Tensor, sigma: f64, dt: f64) -> Result<(Tensor, Tensor)> {
    let d = div(&(x - x0)?, sigma as f32)?;
    Ok(((x + mul(&d, dt as f32)?)?, d))
}

/// diffusers' sigma-space `add_noise`: x0 + sigma_i noise (the core's closed form at that
/// level, divided by its alpha).
pub fn sigma_add_noise(
    sigmas: &[f64],
    n: usize,
    i: usize,
    x0: &Tensor,
    noise: &Tensor,
) -> Result<Tensor> {
    if i >= n {
        return Err(out_of_run(i, n));
    }
    crate::core::forward::closed_form(x0, noise, 1.0, sigmas[i])
}

/// The timesteps and sigmas of diffusers' discrete sigma schedulers (Euler, Euler
/// ancestral, Heun) for `config`.
pub fn discrete_ladder(
    config: &SamplerConfig,
    alpha_bar: &[f64],
    spacing: TimestepSpacing,
    karras: bool,
    last: FinalSigma,
) -> Result<SigmaRun> {
    let sc = &config.scheduler;
    let t_train = alpha_bar.len();
    let base: Vec<f64> = match spacing {
        // Fractional float32 timesteps, not rounded.
        TimestepSpacing::Linspace => {
            ddim_timesteps(t_train, config.steps, spacing, 0)?;
            linspace_f32_desc(t_train, config.steps)
        }
        _ => ddim_timesteps(t_train, config.steps, spacing, sc.steps_offset)?
            .into_iter()
            .map(|t| t as f64)
            .collect(),
    };
    Ok(discrete_run(&sigma_table(alpha_bar), base, karras, last))
}

pub struct Euler {
    run: SigmaRun,
    init_sigma: f64,
    prediction: PredictionType,
    ancestral: bool,
}

impl Euler {
    pub fn new(
        config: &SamplerConfig,
        alpha_bar: &[f64],
        spacing: TimestepSpacing,
        karras: bool,
    ) -> Result<Self> {
        let ancestral = config.kind == SamplerKind::EulerAncestral;
        let last = if ancestral {
            FinalSigma::Zero
        } else {
            FinalSigma::parse(
                config.scheduler.final_sigmas_type.as_deref(),
                FinalSigma::Zero,
            )?
        };
        let run = discrete_ladder(config, alpha_bar, spacing, karras, last)?;
        Ok(Self {
            init_sigma: init_noise_sigma(&run.sigmas, spacing == TimestepSpacing::Leading),
            run,
            prediction: config.scheduler.prediction_type,
            ancestral,
        })
    }
}

impl Scheduler for Euler {
    fn timesteps(&self) -> &[f64] {
        &self.run.timesteps
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.run.sigmas)
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_sigma
    }

    fn scale_model_input(&self, i: usize, sample: &Tensor) -> Result<Tensor> {
        scale_input(sample, self.run.sigmas[i])
    }

    fn add_noise(&self, i: usize, x0: &Tensor, noise: &Tensor) -> Result<Tensor> {
        sigma_add_noise(&self.run.sigmas, self.run.timesteps.len(), i, x0, noise)
    }

    fn step(
        &mut self,
        i: usize,
        mo: &Tensor,
        x: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<StepOutput> {
        let n = self.run.timesteps.len();
        if i >= n {
            return Err(out_of_run(i, n));
        }
        check_pair(mo, x)?;
        let (sigma, to) = (self.run.sigmas[i], self.run.sigmas[i + 1]);
        let x0 = sigma_x0(mo, x, sigma, self.prediction)?;
        // derivative d = (x - x0) / sigma; x_next = x + d (sigma_down - sigma).
        let prev = if self.ancestral {
            let (sf, tf) = (sigma as f32, to as f32);
            let up = (tf * tf * (sf * sf - tf * tf) / (sf * sf)).sqrt();
            let down = (tf * tf - up * up).sqrt();
            let (prev, _) = euler_update(x, &x0, sigma, (down - sf) as f64)?;
            let z = noise.randn(x.shape(), x.device())?;
            (prev + mul(&z, up)?)?
        } else {
            euler_update(x, &x0, sigma, ((to as f32) - (sigma as f32)) as f64)?.0
        };
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: x0,
        })
    }
}
