//! Heun's second-order method in sigma space (Karras et al. 2022, Algorithm 1) as diffusers'
//! HeunDiscreteScheduler runs it: every level but the first is visited twice (an Euler
//! predictor, then the trapezoid corrector), so n steps cost 2n - 1 model evaluations.
use super::euler::{discrete_ladder, euler_update, sigma_add_noise, sigma_x0};
use super::noise::NoiseSource;
use super::predict::{check_pair, clip, div, mul};
use super::scheduler::{out_of_run, SamplerConfig, Scheduler};
use super::sigmas::{init_noise_sigma, scale_input, FinalSigma, SigmaRun};
use super::types::{PredictionType, StepOutput, TimestepSpacing};
use crate::error::{Error, Result};
use candle_core::Tensor;

pub struct Heun {
    /// Doubled as diffusers doubles them: t0, t1, t1, t2, t2, ...
    timesteps: Vec<f64>,
    /// s0, s1, s1, s2, s2, ..., 0.
    sigmas: Vec<f64>,
    init_sigma: f64,
    prediction: PredictionType,
    clip: Option<f64>,
    /// The predictor's (derivative, dt, sample), kept for the corrector.
    first: Option<(Tensor, f64, Tensor)>,
}

impl Heun {
    pub fn new(
        config: &SamplerConfig,
        alpha_bar: &[f64],
        spacing: TimestepSpacing,
        karras: bool,
    ) -> Result<Self> {
        let SigmaRun { timesteps, sigmas } =
            discrete_ladder(config, alpha_bar, spacing, karras, FinalSigma::Zero)?;
        let n = timesteps.len();
        let mut t2 = vec![timesteps[0]];
        let mut s2 = vec![sigmas[0]];
        for k in 1..n {
            t2.extend([timesteps[k]; 2]);
            s2.extend([sigmas[k]; 2]);
        }
        s2.push(sigmas[n]);
        Ok(Self {
            init_sigma: init_noise_sigma(&s2, spacing == TimestepSpacing::Leading),
            timesteps: t2,
            sigmas: s2,
            prediction: config.scheduler.prediction_type,
            clip: config.scheduler.clip_range(),
            first: None,
        })
    }
}

impl Scheduler for Heun {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas)
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_sigma
    }

    fn scale_model_input(&self, i: usize, sample: &Tensor) -> Result<Tensor> {
        scale_input(sample, self.sigmas[i])
    }

    fn add_noise(&self, i: usize, x0: &Tensor, noise: &Tensor) -> Result<Tensor> {
        sigma_add_noise(&self.sigmas, self.timesteps.len(), i, x0, noise)
    }

    fn order(&self) -> usize {
        2
    }

    fn step(
        &mut self,
        i: usize,
        mo: &Tensor,
        x: &Tensor,
        _noise: &mut dyn NoiseSource,
    ) -> Result<StepOutput> {
        let n = self.timesteps.len();
        if i >= n {
            return Err(out_of_run(i, n));
        }
        check_pair(mo, x)?;
        if i == 0 {
            self.first = None;
        }
        // Even steps predict (Euler), odd ones correct.
        let predictor = i.is_multiple_of(2);
        if predictor != self.first.is_none() {
            return Err(Error::invalid(format!(
                "Heun steps must run in order: step {i} came out of turn"
            )));
        }
        let (sigma, next) = if predictor {
            (self.sigmas[i], self.sigmas[i + 1])
        } else {
            (self.sigmas[i - 1], self.sigmas[i])
        };
        let at = if predictor { sigma } else { next };
        let x0 = clip(sigma_x0(mo, x, at, self.prediction)?, self.clip)?;
        let prev = match self.first.take() {
            None => {
                let dt = ((next as f32) - (sigma as f32)) as f64;
                let (prev, d) = euler_update(x, &x0, sigma, dt)?;
                self.first = Some((d, dt, x.clone()));
                prev
            }
            Some((d1, dt, x_start)) => {
                // The trapezoid: the mean of the two derivatives, from the predictor's start.
                let d2 = div(&(x - &x0)?, next as f32)?;
                let d = div(&(d1 + d2)?, 2.0)?;
                (x_start + mul(&d, dt as f32)?)?
            }
        };
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: x0,
        })
    }
}
