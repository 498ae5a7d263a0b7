//! PNDM in its pseudo linear multistep form (PLMS; Liu et al. 2022) as diffusers'
//! PNDMScheduler runs it with `skip_prk_steps`: the first step is taken twice (an Euler-like
//! predictor, then the average of the two noise predictions), then Adams-Bashforth
//! combinations of up to four earlier noise predictions. n steps cost n + 1 evaluations.
use super::noise::NoiseSource;
use super::predict::{check_pair, lincomb};
use super::scheduler::{out_of_run, vp_add_noise, SamplerConfig, Scheduler};
use super::timesteps::ddim_timesteps;
use super::types::{PredictionType, StepOutput, TimestepSpacing};
use crate::error::{Error, Result};
use candle_core::Tensor;

pub struct Pndm {
    timesteps: Vec<f64>,
    alpha_bar: Vec<f64>,
    final_ab: f64,
    /// T // n: how far each step goes back.
    stride: i64,
    prediction: PredictionType,
    /// Raw model outputs of earlier steps (at most 4), newest last.
    ets: Vec<Tensor>,
    cur_sample: Option<Tensor>,
    /// Steps taken in this run (diffusers' `counter`; a run may start past 0 for img2img).
    counter: usize,
    next: usize,
}

impl Pndm {
    pub fn new(
        config: &SamplerConfig,
        alpha_bar: &[f64],
        spacing: TimestepSpacing,
    ) -> Result<Self> {
        let sc = &config.scheduler;
        let t_train = alpha_bar.len();
        // Ascending, as diffusers builds `_timesteps`; then t[:-1], t[-2], t[-1], reversed.
        let mut asc = ddim_timesteps(t_train, config.steps, spacing, sc.steps_offset)?;
        asc.reverse();
        let k = asc.len();
        let mut plms: Vec<usize> = asc[..k - 1].to_vec();
        if k >= 2 {
            plms.push(asc[k - 2]);
        }
        plms.push(asc[k - 1]);
        plms.reverse();
        Ok(Self {
            timesteps: plms.into_iter().map(|t| t as f64).collect(),
            final_ab: if sc.set_alpha_to_one.unwrap_or(true) {
                1.0
            } else {
                alpha_bar[0]
            },
            alpha_bar: alpha_bar.to_vec(),
            stride: (t_train / config.steps) as i64,
            prediction: sc.prediction_type,
            ets: Vec::new(),
            cur_sample: None,
            counter: 0,
            next: 0,
        })
    }

    fn ab(&self, t: i64) -> f64 {
        if t >= 0 {
            self.alpha_bar[t as usize]
        } else {
            self.final_ab
        }
    }
}

impl Scheduler for Pndm {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn add_noise(&self, i: usize, x0: &Tensor, noise: &Tensor) -> Result<Tensor> {
        let n = self.timesteps.len();
        let t = *self.timesteps.get(i).ok_or_else(|| out_of_run(i, n))? as usize;
        vp_add_noise(&[t], &self.alpha_bar, 0, x0, noise)
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
        if i != 0 && self.next != 0 && i != self.next {
            return Err(Error::invalid(format!(
                "PNDM steps must run in order: got step {i}, expected {}",
                self.next
            )));
        }
        check_pair(mo, x)?;
        if i == 0 || self.next == 0 {
            self.ets.clear();
            self.cur_sample = None;
            self.counter = 0;
        }
        let c = self.counter;
        let mut t = self.timesteps[i] as i64;
        let mut prev_t = t - self.stride;
        if c != 1 {
            if self.ets.len() > 3 {
                self.ets.remove(0);
            }
            self.ets.push(mo.clone());
        } else {
            prev_t = t;
            t += self.stride;
        }
        let e = &self.ets;
        let k = e.len();
        let mut sample = x.clone();
        let combined = if k == 1 && c == 0 {
            self.cur_sample = Some(x.clone());
            mo.clone()
        } else if k == 1 && c == 1 {
            if let Some(s) = self.cur_sample.take() {
                sample = s;
            }
            lincomb(&[(0.5, mo), (0.5, &e[0])])?
        } else if k == 2 {
            lincomb(&[(1.5, &e[1]), (-0.5, &e[0])])?
        } else if k == 3 {
            lincomb(&[
                (23.0 / 12.0, &e[2]),
                (-16.0 / 12.0, &e[1]),
                (5.0 / 12.0, &e[0]),
            ])?
        } else {
            lincomb(&[
                (55.0 / 24.0, &e[3]),
                (-59.0 / 24.0, &e[2]),
                (37.0 / 24.0, &e[1]),
                (-9.0 / 24.0, &e[0]),
            ])?
        };
        let (ab_t, ab_prev) = (self.ab(t), self.ab(prev_t));
        let eps = match self.prediction {
            PredictionType::Epsilon => combined,
            PredictionType::VPrediction => {
                lincomb(&[(ab_t.sqrt(), &combined), ((1.0 - ab_t).sqrt(), &sample)])?
            }
            PredictionType::Sample => {
                return Err(Error::invalid(
                    "pndm supports epsilon and v_prediction models only (as diffusers)",
                ))
            }
        };
        // diffusers' _get_prev_sample (PNDM paper, eq. 9).
        let coeff = (ab_prev / ab_t).sqrt();
        let denom = ab_t * (1.0 - ab_prev).sqrt() + (ab_t * (1.0 - ab_t) * ab_prev).sqrt();
        let prev = lincomb(&[(coeff, &sample), (-(ab_prev - ab_t) / denom, &eps)])?;
        let x0 = lincomb(&[
            (1.0 / ab_t.sqrt(), &sample),
            (-(1.0 - ab_t).sqrt() / ab_t.sqrt(), &eps),
        ])?;
        self.counter += 1;
        self.next = i + 1;
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: x0,
        })
    }
}
