//! Stateful schedulers: the timesteps of a run and the step between consecutive ones.
//! Each holds its alpha_bar table in f64 (ours by default; any table via `build_with`).
use super::config::SchedulerConfig;
use super::ddim::{ddim_step, DdimParams};
use super::ddpm::{ddpm_step, DdpmParams};
use super::dpm_solver::{dpm_first_order, dpm_second_order, Level, SigmaArithmetic};
use super::predict::check_pair;
use super::predict::lincomb;
use super::timesteps::{ddim_timesteps, dpm_timesteps};
use super::types::{PredictionType, SamplerKind, StepOutput};
use crate::core::rng::NoiseRng;
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
    pub scheduler: SchedulerConfig,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            kind: SamplerKind::Ddim,
            steps: 50,
            eta: 0.0,
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
        if self.eta != 0.0 && self.kind != SamplerKind::Ddim {
            tracing::warn!("eta applies to ddim only; {} ignores it", self.kind.name());
        }
        self.scheduler.check_supported(self.kind)
    }
}

/// One sampler's run: its timesteps and the update between consecutive ones.
pub trait Scheduler {
    /// Descending timesteps the model is evaluated at.
    fn timesteps(&self) -> &[usize];
    /// Step from `timesteps()[i]` to the next noise level. Steps must be taken in order
    /// 0, 1, 2, ... (DPM-Solver++ keeps the previous x0 prediction).
    fn step(
        &mut self,
        i: usize,
        model_output: &Tensor,
        sample: &Tensor,
        rng: &mut NoiseRng,
    ) -> Result<StepOutput>;
}

/// The scheduler `config` describes, on our f64 schedule.
pub fn build(config: &SamplerConfig) -> Result<Box<dyn Scheduler>> {
    let schedule = Schedule::new(&config.scheduler.schedule_config()?)?;
    // DPM-Solver++'s f32 level arithmetic is only diffusers-exact on diffusers' own f32
    // alpha_bar (at cosine t = 999, abar = 2.4e-9, one ulp of it decides whether sigma rounds
    // to 1.0 or 0.99999994); DDPM and DDIM keep our f64 table.
    if config.kind == SamplerKind::DpmSolverPP
        && SigmaArithmetic::default() == SigmaArithmetic::DiffusersF32
    {
        return build_with(config, &schedule.alpha_bar_like_diffusers());
    }
    build_with(config, &schedule.alpha_bar)
}

/// The scheduler `config` describes, on a given alpha_bar table (length T), e.g.
/// diffusers' own float32 table.
pub fn build_with(config: &SamplerConfig, alpha_bar: &[f64]) -> Result<Box<dyn Scheduler>> {
    build_with_arithmetic(config, alpha_bar, SigmaArithmetic::default())
}

/// As `build_with`, choosing how DPM-Solver++ forms its (alpha, sigma) levels.
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
    Ok(match config.kind {
        SamplerKind::Ddim => Box::new(Ddim {
            timesteps: ddim_timesteps(t_train, config.steps, spacing, sc.steps_offset)?,
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
        }),
        SamplerKind::Ddpm => Box::new(Ddpm {
            timesteps: ddim_timesteps(t_train, config.steps, spacing, sc.steps_offset)?,
            alpha_bar: alpha_bar.to_vec(),
            params: DdpmParams {
                prediction: sc.prediction_type,
                variance: sc.variance_type.unwrap_or_default(),
                clip: sc.clip_range(),
            },
        }),
        SamplerKind::DpmSolverPP => Box::new(DpmSolverPP::new(config, alpha_bar, spacing, how)?),
    })
}

struct Ddim {
    timesteps: Vec<usize>,
    /// diffusers steps back by T // n whatever the spacing.
    stride: usize,
    final_ab: f64,
    alpha_bar: Vec<f64>,
    params: DdimParams,
}

impl Scheduler for Ddim {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn step(
        &mut self,
        i: usize,
        mo: &Tensor,
        x: &Tensor,
        rng: &mut NoiseRng,
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
    alpha_bar: Vec<f64>,
    params: DdpmParams,
}

impl Scheduler for Ddpm {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn step(
        &mut self,
        i: usize,
        mo: &Tensor,
        x: &Tensor,
        rng: &mut NoiseRng,
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

struct DpmSolverPP {
    timesteps: Vec<usize>,
    /// The level at each listed timestep, then the final one (sigma = 0 by default).
    levels: Vec<Level>,
    prediction: PredictionType,
    order: usize,
    /// Use first order on the last step (diffusers' lower_order_final / euler_at_final /
    /// final_sigmas_type = zero rule).
    first_order_last: bool,
    prev_x0: Option<Tensor>,
    next_index: usize,
}

impl DpmSolverPP {
    fn new(
        config: &SamplerConfig,
        alpha_bar: &[f64],
        spacing: super::types::TimestepSpacing,
        how: SigmaArithmetic,
    ) -> Result<Self> {
        let sc = &config.scheduler;
        // diffusers replaces a zero-SNR alpha_bar of 0 by 2^-24 so lambda stays finite.
        let ab_at = |t: usize| {
            let a = alpha_bar[t];
            if a == 0.0 {
                2f64.powi(-24)
            } else {
                a
            }
        };
        let lambda = |a: f64| 0.5 * (a / (1.0 - a)).ln();
        // lambda_min_clipped drops the timesteps whose lambda is below it.
        let clipped = match sc.lambda_min_clipped {
            Some(l) if l.is_finite() => (0..alpha_bar.len())
                .filter(|t| lambda(ab_at(*t)) < l)
                .count(),
            _ => 0,
        };
        let t_train = alpha_bar.len();
        let timesteps = dpm_timesteps(
            t_train,
            t_train - clipped,
            config.steps,
            spacing,
            sc.steps_offset,
        )?;
        let zero_final = sc.final_sigmas_type.as_deref().unwrap_or("zero") == "zero";
        let mut levels: Vec<Level> = timesteps
            .iter()
            .map(|t| Level::new(ab_at(*t), how))
            .collect();
        levels.push(Level::new(if zero_final { 1.0 } else { ab_at(0) }, how));
        let n = timesteps.len();
        let first_order_last = sc.euler_at_final.unwrap_or(false)
            || (sc.lower_order_final.unwrap_or(true) && n < 15)
            || zero_final;
        Ok(Self {
            timesteps,
            levels,
            prediction: sc.prediction_type,
            order: sc.solver_order.unwrap_or(2),
            first_order_last,
            prev_x0: None,
            next_index: 0,
        })
    }
}

impl Scheduler for DpmSolverPP {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn step(
        &mut self,
        i: usize,
        mo: &Tensor,
        x: &Tensor,
        _rng: &mut NoiseRng,
    ) -> Result<StepOutput> {
        let n = self.timesteps.len();
        if i >= n {
            return Err(out_of_run(i, n));
        }
        if i == 0 {
            self.prev_x0 = None;
        } else if i != self.next_index {
            return Err(Error::invalid(format!(
                "DPM-Solver++ steps must run in order: got step {i}, expected {}",
                self.next_index
            )));
        }
        check_pair(mo, x)?;
        let (l, prev_l, next_l) = (
            self.levels[i],
            self.levels[i.saturating_sub(1)],
            self.levels[i + 1],
        );
        // diffusers' convert_model_output, with this level's alpha and sigma.
        let x0 = match self.prediction {
            PredictionType::Epsilon => {
                (x - mo.affine(l.sigma, 0.0)?)?.affine(1.0 / l.alpha, 0.0)?
            }
            PredictionType::Sample => mo.clone(),
            PredictionType::VPrediction => lincomb(&[(l.alpha, x), (-l.sigma, mo)])?,
        };
        let last_first_order = i == n - 1 && self.first_order_last;
        let prev = match &self.prev_x0 {
            Some(m1) if self.order == 2 && !last_first_order => {
                dpm_second_order(x, &x0, m1, prev_l, l, next_l)?
            }
            _ => dpm_first_order(x, &x0, l, next_l)?,
        };
        self.prev_x0 = Some(x0.clone());
        self.next_index = i + 1;
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: x0,
        })
    }
}

fn out_of_run(i: usize, n: usize) -> Error {
    Error::invalid(format!("step index {i} is past the run's {n} steps"))
}
