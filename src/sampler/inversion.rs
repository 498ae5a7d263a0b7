//! DDIM inversion as diffusers' DDIMInverseScheduler runs it: the deterministic DDIM update
//! taken upwards, from a clean image to the latent x_T that DDIM (eta 0) maps back to it.
//! Each step evaluates the model at the level it goes to (the usual approximation) and is
//! the DDIM step of `ddim.rs` with the two levels exchanged.
use super::config::SchedulerConfig;
use super::ddim::{ddim_step, DdimParams};
use super::noise::{NoiseSource, Recorded};
use super::predict::x0_and_eps;
use super::sampling::{run_from, Model, OnStep, StepInfo};
use super::scheduler::{out_of_run, vp_add_noise, SamplerConfig, Scheduler};
use super::types::{PredictionType, SamplerKind, StepOutput, TimestepSpacing};
use crate::core::schedule::Schedule;
use crate::error::{Error, Result};
use candle_core::Tensor;

pub struct DdimInverse {
    timesteps: Vec<usize>,
    t_float: Vec<f64>,
    stride: usize,
    alpha_bar: Vec<f64>,
    /// alpha_bar below t = 0: 1 with set_alpha_to_one, else alpha_bar[0].
    initial_ab: f64,
    params: DdimParams,
}

impl DdimInverse {
    /// Ascending timesteps of `config.steps` inversion steps (leading or trailing spacing).
    pub fn new(config: &SamplerConfig, alpha_bar: &[f64]) -> Result<Self> {
        let sc = &config.scheduler;
        let t = alpha_bar.len();
        let n = config.steps;
        if n == 0 || n > t {
            return Err(Error::invalid(format!(
                "inversion steps {n} must be in [1, {t}]"
            )));
        }
        let timesteps: Vec<usize> = match sc.timestep_spacing.unwrap_or(TimestepSpacing::Leading) {
            TimestepSpacing::Leading => (0..n).map(|i| i * (t / n) + sc.steps_offset).collect(),
            TimestepSpacing::Trailing => {
                let mut v = super::timesteps::ddim_timesteps(t, n, TimestepSpacing::Trailing, 0)?;
                v.reverse();
                v
            }
            TimestepSpacing::Linspace => {
                return Err(Error::invalid(
                    "DDIM inversion takes leading or trailing spacing (as diffusers)",
                ))
            }
        };
        if let Some(bad) = timesteps.iter().find(|x| **x >= t) {
            return Err(Error::invalid(format!(
                "inversion timestep {bad} is outside [0, {}]",
                t - 1
            )));
        }
        Ok(Self {
            t_float: timesteps.iter().map(|x| *x as f64).collect(),
            timesteps,
            stride: t / n,
            initial_ab: if sc.set_alpha_to_one.unwrap_or(true) {
                1.0
            } else {
                alpha_bar[0]
            },
            alpha_bar: alpha_bar.to_vec(),
            params: DdimParams {
                prediction: sc.prediction_type,
                eta: 0.0,
                clip: sc.clip_range(),
            },
        })
    }
}

impl DdimInverse {
    /// alpha_bar of the level step `i` leaves and of the one it goes to.
    fn levels(&self, i: usize) -> Result<(f64, f64)> {
        let to = *self
            .timesteps
            .get(i)
            .ok_or_else(|| out_of_run(i, self.timesteps.len()))?;
        // The level x is at: one stride below (diffusers: min(t - T // n, T - 1)).
        let from = to as i64 - self.stride as i64;
        let ab_from = if from >= 0 {
            self.alpha_bar[(from as usize).min(self.alpha_bar.len() - 1)]
        } else {
            self.initial_ab
        };
        Ok((ab_from, self.alpha_bar[to]))
    }
}

impl Scheduler for DdimInverse {
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
        _noise: &mut dyn NoiseSource,
    ) -> Result<StepOutput> {
        let (ab_from, ab_to) = self.levels(i)?;
        ddim_step(mo, x, ab_from, ab_to, &self.params, None)
    }
}

/// The DDIM settings an inversion and its reconstruction share, from a model's scheduler
/// config: eta 0, `steps` steps, trailing spacing if the config asks for it, else leading
/// (DDIMInverseScheduler takes no other).
pub fn ddim_config(sc: &SchedulerConfig, steps: usize) -> SamplerConfig {
    let mut sc = sc.clone();
    sc.clip_sample = false;
    if sc.timestep_spacing != Some(TimestepSpacing::Trailing) {
        sc.timestep_spacing = Some(TimestepSpacing::Leading);
    }
    SamplerConfig {
        kind: SamplerKind::Ddim,
        steps,
        eta: 0.0,
        karras: false,
        scheduler: sc,
    }
}

/// Invert clean images `x0` [B, ...] in [-1, 1] to the latents x_T that DDIM with the same
/// `config` (see `ddim_config`) maps back to them, on the schedule's own alpha_bar table (as
/// `build` gives DDIM).
///
/// `refine` = 0 is diffusers' DDIMInverseScheduler: each step evaluates the model at the
/// level it leaves, with the timestep it goes to. `refine` = k > 0 then solves the step as
/// the exact inverse of the DDIM step down, x_to = inverse_step(eps(x_to, t_to), x_from), by
/// k fixed-point iterations (as Pan et al. 2023, "AIDI"), with eps read from the model's
/// output at x_to whatever it predicts; each costs one more evaluation.
pub fn invert(
    model: &mut Model,
    x0: &Tensor,
    config: &SamplerConfig,
    refine: usize,
    mut on_step: Option<&mut OnStep>,
) -> Result<Tensor> {
    let schedule = Schedule::new(&config.scheduler.schedule_config()?)?;
    let mut inv = DdimInverse::new(config, &schedule.alpha_bar)?;
    if refine == 0 {
        // The inverse steps draw no noise.
        return run_from(&mut inv, model, x0, 0, &mut Recorded::new(vec![]), on_step);
    }
    let b = x0.dim(0)?;
    let timesteps = inv.timesteps.clone();
    let mut none = Recorded::new(vec![]);
    let eps_params = DdimParams {
        prediction: PredictionType::Epsilon,
        ..inv.params
    };
    let mut x = x0.clone();
    for (i, &t) in timesteps.iter().enumerate() {
        let tt = Tensor::from_vec(vec![t as f32; b], b, x.device())?;
        let mut step = inv.step(i, &model(&x, &tt)?, &x, &mut none)?;
        let (ab_from, ab_to) = inv.levels(i)?;
        for _ in 0..refine {
            // The model's output at the guess, as the eps the DDIM step down from there
            // would use; with it fixed, the step down inverts in closed form.
            let guess = &step.prev_sample;
            let (_, eps) = x0_and_eps(&model(guess, &tt)?, guess, ab_to, inv.params.prediction)?;
            step = ddim_step(&eps, &x, ab_from, ab_to, &eps_params, None)?;
        }
        let input = std::mem::replace(&mut x, step.prev_sample);
        if let Some(cb) = on_step.as_deref_mut() {
            cb(&StepInfo {
                index: i,
                steps: timesteps.len(),
                t: t as f64,
                input: &input,
                sample: &x,
                pred_original_sample: &step.pred_original_sample,
            })?;
        }
    }
    Ok(x)
}
