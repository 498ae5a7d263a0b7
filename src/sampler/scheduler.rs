//! Stateful schedulers: the timesteps of a run and the step between consecutive ones.
//! Each holds its alpha_bar table in f64 (ours by default; any table via `build_with`).
use super::config::SchedulerConfig;
use super::ddim::{ddim_step, DdimParams};
use super::ddpm::{ddpm_step, DdpmParams};
use super::deis::Deis;
use super::dpm_solver::{DpmAlgorithm, DpmSolver, SigmaArithmetic};
use super::euler::Euler;
use super::heun::Heun;
use super::noise::NoiseSource;
use super::pndm::Pndm;
use super::timesteps::ddim_timesteps;
use super::types::{SamplerKind, StepOutput};
use super::unipc::UniPc;
use crate::core::schedule::Schedule;
use crate::error::{Error, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Everything a sampling run needs besides the model and the start noise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplerConfig {
    pub kind: SamplerKind,
    /// Inference steps, in [1, T].
    pub steps: usize,
    /// DDIM noise weight in [0, 1]; other samplers ignore it.
    pub eta: f64,
    /// Karras et al.'s sigma ladder (diffusers' `use_karras_sigmas`), for samplers with sigmas.
    pub karras: bool,
    pub scheduler: SchedulerConfig,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            kind: SamplerKind::Ddim,
            steps: 50,
            eta: 0.0,
            karras: false,
            scheduler: SchedulerConfig::default(),
        }
    }
}

impl SamplerConfig {
    /// Checks that need no schedule (the step count against T is checked when the
    /// timesteps are made).
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.eta) {
            return Err(Error::invalid(format!(
                "eta {} is outside [0, 1]",
                self.eta
            )));
        }
        if self.karras && !self.kind.has_sigmas() {
            let with: Vec<&str> = SamplerKind::ALL
                .iter()
                .filter(|k| k.has_sigmas())
                .map(|k| k.name())
                .collect();
            return Err(Error::invalid(format!(
                "--karras needs a sampler with sigmas ({}); {} has none",
                with.join(", "),
                self.kind.name()
            )));
        }
        self.scheduler.check_supported(self.kind)
    }

    /// Karras sigmas asked for by flag, or by the scheduler config where the sampler has them.
    pub fn use_karras(&self) -> bool {
        self.kind.has_sigmas() && (self.karras || self.scheduler.use_karras_sigmas == Some(true))
    }
}

/// One sampler's run: its timesteps and the update between consecutive ones, as diffusers'
/// pipelines drive a scheduler: `x = x_T * init_noise_sigma`, then for each i
/// `x = step(i, model(scale_model_input(i, x), timesteps[i]), x)`.
pub trait Scheduler {
    /// The timesteps the model is evaluated at, in order (fractional for Euler/Heun).
    fn timesteps(&self) -> &[f64];
    /// The sampler's noise levels (sigma = sqrt((1 - abar) / abar)), one more than the
    /// timesteps, for samplers that have them.
    fn sigmas(&self) -> Option<&[f64]> {
        None
    }
    /// The standard deviation of the start noise.
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
    /// What the model is handed at step i (sigma-space samplers divide by sqrt(sigma^2 + 1)).
    fn scale_model_input(&self, _i: usize, sample: &Tensor) -> Result<Tensor> {
        Ok(sample.clone())
    }
    /// A clean sample `x0` noised to step i's level in the space this sampler works in
    /// (the core's closed form at that level; sigma-space samplers: x0 + sigma eps), so a
    /// run can start at step i (img2img).
    fn add_noise(&self, i: usize, x0: &Tensor, noise: &Tensor) -> Result<Tensor>;
    /// Timestep entries per inference step (2 for Heun), for diffusers' img2img slicing.
    fn order(&self) -> usize {
        1
    }
    /// Step from `timesteps()[i]` to the next noise level. Steps must be taken in order
    /// from the first one taken (0, or an img2img start), as multistep samplers keep
    /// earlier predictions.
    fn step(
        &mut self,
        i: usize,
        model_output: &Tensor,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<StepOutput>;
}

/// The scheduler `config` describes, on our f64 schedule.
pub fn build(config: &SamplerConfig) -> Result<Box<dyn Scheduler>> {
    let schedule = Schedule::new(&config.scheduler.schedule_config()?)?;
    // Sigma-space arithmetic is only diffusers-exact on diffusers' own f32 alpha_bar (at
    // cosine t = 999, abar = 2.4e-9, one ulp of it decides whether sigma rounds to 1.0 or
    // 0.99999994); DDPM and DDIM keep our f64 table.
    if !matches!(config.kind, SamplerKind::Ddpm | SamplerKind::Ddim) {
        return build_with(config, &schedule.alpha_bar_like_diffusers());
    }
    build_with(config, &schedule.alpha_bar)
}

/// The scheduler `config` describes, on a given alpha_bar table (length T), e.g.
/// diffusers' own float32 table.
pub fn build_with(config: &SamplerConfig, alpha_bar: &[f64]) -> Result<Box<dyn Scheduler>> {
    build_with_arithmetic(config, alpha_bar, SigmaArithmetic::default())
}

/// As `build_with`, choosing how sigma-space samplers form their (alpha, sigma) levels.
pub fn build_with_arithmetic(
    config: &SamplerConfig,
    alpha_bar: &[f64],
    how: SigmaArithmetic,
) -> Result<Box<dyn Scheduler>> {
    config.validate()?;
    let sc = &config.scheduler;
    let t_train = alpha_bar.len();
    if t_train != sc.num_train_timesteps {
        return Err(Error::invalid(format!(
            "alpha_bar table has {t_train} entries but num_train_timesteps is {}",
            sc.num_train_timesteps
        )));
    }
    let spacing = sc.spacing_for(config.kind);
    let karras = config.use_karras();
    Ok(match config.kind {
        SamplerKind::Ddim => Box::new(Ddim::new(
            ddim_timesteps(t_train, config.steps, spacing, sc.steps_offset)?,
            Ddim {
                timesteps: Vec::new(),
                t_float: Vec::new(),
                stride: t_train / config.steps,
                final_ab: if sc.set_alpha_to_one.unwrap_or(true) {
                    1.0
                } else {
                    alpha_bar[0]
                },
                alpha_bar: alpha_bar.to_vec(),
                params: DdimParams {
                    prediction: sc.prediction_type,
                    eta: config.eta,
                    clip: sc.clip_range(),
                },
            },
        )),
        SamplerKind::Ddpm => Box::new(
            Ddpm {
                t_float: Vec::new(),
                timesteps: ddim_timesteps(t_train, config.steps, spacing, sc.steps_offset)?,
                alpha_bar: alpha_bar.to_vec(),
                params: DdpmParams {
                    prediction: sc.prediction_type,
                    variance: sc.variance_type.unwrap_or_default(),
                    clip: sc.clip_range(),
                },
            }
            .with_floats(),
        ),
        SamplerKind::Euler | SamplerKind::EulerAncestral => {
            Box::new(Euler::new(config, alpha_bar, spacing, karras)?)
        }
        SamplerKind::Heun => Box::new(Heun::new(config, alpha_bar, spacing, karras)?),
        SamplerKind::DpmSolverPP => Box::new(DpmSolver::new(
            config,
            alpha_bar,
            spacing,
            karras,
            how,
            DpmAlgorithm::DataPrediction,
            2,
        )?),
        SamplerKind::DpmSolverPP3M => Box::new(DpmSolver::new(
            config,
            alpha_bar,
            spacing,
            karras,
            how,
            DpmAlgorithm::DataPrediction,
            3,
        )?),
        SamplerKind::DpmSolverSde => Box::new(DpmSolver::new(
            config,
            alpha_bar,
            spacing,
            karras,
            how,
            DpmAlgorithm::Sde,
            2,
        )?),
        SamplerKind::UniPc => Box::new(UniPc::new(config, alpha_bar, spacing, karras, how)?),
        SamplerKind::Deis => Box::new(Deis::new(config, alpha_bar, spacing, how)?),
        SamplerKind::Pndm => Box::new(Pndm::new(config, alpha_bar, spacing)?),
    })
}

struct Ddim {
    timesteps: Vec<usize>,
    t_float: Vec<f64>,
    /// diffusers steps back by T // n whatever the spacing.
    stride: usize,
    final_ab: f64,
    alpha_bar: Vec<f64>,
    params: DdimParams,
}

impl Ddim {
    fn new(timesteps: Vec<usize>, d: Ddim) -> Ddim {
        Ddim {
            t_float: timesteps.iter().map(|t| *t as f64).collect(),
            timesteps,
            ..d
        }
    }
}

impl Scheduler for Ddim {
    fn timesteps(&self) -> &[f64] {
        &self.t_float
    }

    fn add_noise(&self, i: usize, x0: &Tensor, noise: &Tensor) -> Result<Tensor> {
        vp_add_noise(&self.timesteps, &self.alpha_bar, i, x0, noise)
    }

    fn step(
        &mut self,
        i: usize,
        mo: &Tensor,
        x: &Tensor,
        rng: &mut dyn NoiseSource,
    ) -> Result<StepOutput> {
        let t = *self
            .timesteps
            .get(i)
            .ok_or_else(|| out_of_run(i, self.timesteps.len()))?;
        let ab_prev = t
            .checked_sub(self.stride)
            .map_or(self.final_ab, |p| self.alpha_bar[p]);
        let noise = if self.params.eta > 0.0 {
            Some(rng.randn(x.shape(), x.device())?)
        } else {
            None
        };
        ddim_step(
            mo,
            x,
            self.alpha_bar[t],
            ab_prev,
            &self.params,
            noise.as_ref(),
        )
    }
}

struct Ddpm {
    timesteps: Vec<usize>,
    t_float: Vec<f64>,
    alpha_bar: Vec<f64>,
    params: DdpmParams,
}

impl Ddpm {
    fn with_floats(self) -> Self {
        Ddpm {
            t_float: self.timesteps.iter().map(|t| *t as f64).collect(),
            ..self
        }
    }
}

impl Scheduler for Ddpm {
    fn timesteps(&self) -> &[f64] {
        &self.t_float
    }

    fn add_noise(&self, i: usize, x0: &Tensor, noise: &Tensor) -> Result<Tensor> {
        vp_add_noise(&self.timesteps, &self.alpha_bar, i, x0, noise)
    }

    fn step(
        &mut self,
        i: usize,
        mo: &Tensor,
        x: &Tensor,
        rng: &mut dyn NoiseSource,
    ) -> Result<StepOutput> {
        let t = *self
            .timesteps
            .get(i)
            .ok_or_else(|| out_of_run(i, self.timesteps.len()))?;
        // diffusers: the previous timestep is the next listed one; before the first, 1.
        let ab_prev = self
            .timesteps
            .get(i + 1)
            .map_or(1.0, |p| self.alpha_bar[*p]);
        // diffusers adds noise whenever t > 0 (so also at a respaced last step t > 0).
        let noise = if t > 0 {
            Some(rng.randn(x.shape(), x.device())?)
        } else {
            None
        };
        ddpm_step(
            mo,
            x,
            self.alpha_bar[t],
            ab_prev,
            &self.params,
            noise.as_ref(),
        )
    }
}

/// diffusers' `add_noise` for the alpha_bar schedulers: the core's closed form at
/// `timesteps[i]`.
pub(crate) fn vp_add_noise(
    timesteps: &[usize],
    alpha_bar: &[f64],
    i: usize,
    x0: &Tensor,
    noise: &Tensor,
) -> Result<Tensor> {
    let t = *timesteps
        .get(i)
        .ok_or_else(|| out_of_run(i, timesteps.len()))?;
    let ab = alpha_bar[t];
    crate::core::forward::closed_form(x0, noise, ab.sqrt(), (1.0 - ab).sqrt())
}

/// The first step index of an img2img run with `strength` in (0, 1]: diffusers keeps the
/// last `int(steps * strength)` of the `steps` inference steps.
pub fn img2img_start(scheduler: &dyn Scheduler, steps: usize, strength: f64) -> Result<usize> {
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(Error::invalid(format!(
            "strength {strength} is outside (0, 1]"
        )));
    }
    let keep = ((steps as f64 * strength) as usize).min(steps);
    if keep == 0 {
        return Err(Error::invalid(format!(
            "strength {strength} with {steps} steps keeps no step; raise --strength or --steps"
        )));
    }
    Ok((steps - keep) * scheduler.order())
}

pub(crate) fn out_of_run(i: usize, n: usize) -> Error {
    Error::invalid(format!("step index {i} is past the run's {n} steps"))
}
