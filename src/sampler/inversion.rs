//! DDIM inversion as diffusers' DDIMInverseScheduler runs it: the deterministic DDIM update
//! taken upwards, from a clean image to the latent x_T that DDIM (eta 0) maps back to it.
//! Each step evaluates the model at the level it goes to (the usual approximation) and is
//! the DDIM step of `ddim.rs` with the two levels exchanged.
use super::ddim::{ddim_step, DdimParams};
use super::noise::NoiseSource;
use super::scheduler::{out_of_run, vp_add_noise, SamplerConfig, Scheduler};
use super::types::{StepOutput, TimestepSpacing};
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
        ddim_step(mo, x, ab_from, self.alpha_bar[to], &self.params, None)
    }
}
