//! RePaint inpainting (Lugmayr et al. 2022) as diffusers' RePaintScheduler and RePaintPipeline
//! run it: going down, a DDIM step (with eta) for the unknown pixels while the known ones are
//! the init image noised to the same level by the core's closed form, mixed by the mask; at
//! each jump, the chain goes back up `jump_length` inference steps by single Markov steps of
//! the forward process (the core's `markov_step`), so the model can harmonise the two parts.
use super::ddim::{ddim_step, DdimParams};
use super::noise::NoiseSource;
use super::sampling::{check_start, Model, OnStep, StepInfo};
use super::types::StepOutput;
use super::SchedulerConfig;
use crate::core::forward::{closed_form, markov_step};
use crate::core::schedule::Schedule;
use crate::error::{Error, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// RePaint's settings (diffusers' `set_timesteps(n, jump_length, jump_n_sample)` and `eta`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RePaintConfig {
    /// Inference steps down the chain (before jumps).
    pub steps: usize,
    /// Inference steps gone back up at each jump ("j" in the paper).
    pub jump_length: usize,
    /// How many times each jump point is passed ("r" in the paper).
    pub jump_n_sample: usize,
    /// DDIM noise weight of the steps down, in [0, 1].
    pub eta: f64,
}

impl RePaintConfig {
    /// Timesteps gone through, down and back up (length of the loop).
    pub fn timesteps(&self) -> Vec<usize> {
        jump_timesteps(self.steps, self.jump_length, self.jump_n_sample, 1)
    }

    /// Model evaluations of a run: the steps down.
    pub fn evaluations(&self) -> usize {
        let t = self.timesteps();
        let mut last = usize::MAX;
        t.iter()
            .filter(|&&x| {
                let down = x < last;
                last = x;
                down
            })
            .count()
    }
}

/// diffusers' jump schedule in inference-step units, times `stride`.
fn jump_timesteps(n: usize, jump_length: usize, jump_n_sample: usize, stride: usize) -> Vec<usize> {
    let mut jumps = std::collections::HashMap::new();
    let mut j = 0;
    while j + jump_length < n {
        jumps.insert(j, jump_n_sample.saturating_sub(1));
        j += jump_length.max(1);
    }
    let mut out = Vec::new();
    let mut t = n;
    while t >= 1 {
        t -= 1;
        out.push(t * stride);
        if let Some(left) = jumps.get_mut(&t) {
            if *left > 0 {
                *left -= 1;
                for _ in 0..jump_length {
                    t += 1;
                    out.push(t * stride);
                }
            }
        }
    }
    out
}

/// A RePaint run over one schedule.
pub struct RePaint {
    timesteps: Vec<usize>,
    stride: usize,
    alpha_bar: Vec<f64>,
    betas: Vec<f64>,
    params: DdimParams,
}

impl RePaint {
    /// On the schedule `sc` describes (diffusers' f32 tables).
    pub fn new(config: &RePaintConfig, sc: &SchedulerConfig) -> Result<Self> {
        let schedule = Schedule::new(&sc.schedule_config()?)?;
        Self::with_tables(
            config,
            sc,
            &schedule.alpha_bar_like_diffusers(),
            &schedule.betas,
        )
    }

    /// On given alpha_bar and beta tables (length T).
    pub fn with_tables(
        config: &RePaintConfig,
        sc: &SchedulerConfig,
        alpha_bar: &[f64],
        betas: &[f64],
    ) -> Result<Self> {
        let t = alpha_bar.len();
        if betas.len() != t {
            return Err(Error::invalid(format!(
                "{} betas for {t} alpha_bar values",
                betas.len()
            )));
        }
        let n = config.steps;
        if n == 0 || n > t {
            return Err(Error::invalid(format!(
                "RePaint steps {n} must be in [1, {t}]"
            )));
        }
        if config.jump_length == 0 || config.jump_length >= n {
            return Err(Error::invalid(format!(
                "--jump-length {} must be in [1, {}] (below the {n} steps)",
                config.jump_length,
                n - 1
            )));
        }
        if config.jump_n_sample == 0 || config.jump_n_sample > 100 {
            return Err(Error::invalid(format!(
                "--jump-n-sample {} must be in [1, 100]",
                config.jump_n_sample
            )));
        }
        if !(0.0..=1.0).contains(&config.eta) {
            return Err(Error::invalid(format!(
                "--eta {} is outside [0, 1]",
                config.eta
            )));
        }
        let stride = t / n;
        Ok(Self {
            timesteps: jump_timesteps(n, config.jump_length, config.jump_n_sample, stride),
            stride,
            alpha_bar: alpha_bar.to_vec(),
            betas: betas.to_vec(),
            params: DdimParams {
                prediction: sc.prediction_type,
                eta: config.eta,
                clip: sc.clip_range(),
            },
        })
    }

    /// The loop's timesteps: down by `stride`, back up at each jump.
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// One step down from `t`: the DDIM step for the unknown part, the known image at the
    /// level below for the rest; one noise draw serves both (as diffusers).
    pub fn step(
        &self,
        t: usize,
        model_output: &Tensor,
        sample: &Tensor,
        known: &Tensor,
        mask: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<StepOutput> {
        let ab_t = self.alpha_bar[t];
        // RePaint's final alpha_bar is 1, whatever set_alpha_to_one says.
        let ab_prev = t
            .checked_sub(self.stride)
            .map_or(1.0, |p| self.alpha_bar[p]);
        let z = noise.randn(sample.shape(), sample.device())?;
        let unknown = ddim_step(model_output, sample, ab_t, ab_prev, &self.params, Some(&z))?;
        let known = closed_form(known, &z, ab_prev.sqrt(), (1.0 - ab_prev).sqrt())?;
        let keep = mask.broadcast_as(sample.shape())?;
        let prev = ((known * &keep)? + (unknown.prev_sample * (1.0 - &keep)?)?)?;
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: unknown.pred_original_sample,
        })
    }

    /// Back up one inference step from `t`: `stride` single Markov steps of the forward chain.
    pub fn undo(&self, t: usize, sample: &Tensor, noise: &mut dyn NoiseSource) -> Result<Tensor> {
        let mut x = sample.clone();
        for s in t..t + self.stride {
            let beta = *self.betas.get(s).ok_or_else(|| {
                Error::invalid(format!("RePaint undo past the schedule's end at t = {s}"))
            })?;
            let z = noise.randn(x.shape(), x.device())?;
            x = markov_step(&x, beta, &z)?;
        }
        Ok(x)
    }
}

/// Inpaint: from standard-normal `x_t` [B,..], keep `known` [B or 1,..] where `mask`
/// ([B or 1, 1 or C, H, W], 1 keeps, 0 inpaints) is 1 and draw the rest. `on_step` sees every
/// move, down or up (`input` is x before the move; `pred_original_sample` is the last step
/// down's).
pub fn inpaint(
    repaint: &RePaint,
    model: &mut Model,
    x_t: &Tensor,
    known: &Tensor,
    mask: &Tensor,
    noise: &mut dyn NoiseSource,
    mut on_step: Option<&mut OnStep>,
) -> Result<Tensor> {
    check_start(x_t)?;
    let known = known.broadcast_as(x_t.shape())?.contiguous()?;
    let b = x_t.dim(0)?;
    let ts = repaint.timesteps();
    let mut x = x_t.clone();
    let mut x0 = x.clone();
    let mut t_last = ts[0] + 1;
    for (i, &t) in ts.iter().enumerate() {
        let input = x.clone();
        if t < t_last {
            let tt = Tensor::from_vec(vec![t as f32; b], b, x.device())?;
            let out = model(&x, &tt)?;
            let step = repaint.step(t, &out, &x, &known, mask, noise)?;
            x = step.prev_sample;
            x0 = step.pred_original_sample;
        } else {
            x = repaint.undo(t_last, &x, noise)?;
        }
        t_last = t;
        if let Some(cb) = on_step.as_deref_mut() {
            cb(&StepInfo {
                index: i,
                steps: ts.len(),
                t: t as f64,
                input: &input,
                sample: &x,
                pred_original_sample: &x0,
            })?;
        }
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_schedule_is_diffusers() {
        // diffusers: set_timesteps(10, jump_length=3, jump_n_sample=2), T = 1000 -> x100.
        let t = jump_timesteps(10, 3, 2, 100);
        let want = [
            9, 8, 7, 6, 7, 8, 9, 8, 7, 6, 5, 4, 3, 4, 5, 6, 5, 4, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0,
        ];
        assert_eq!(t, want.iter().map(|x| x * 100).collect::<Vec<_>>());
    }
}
