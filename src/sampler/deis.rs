//! DEIS (Zhang & Chen 2023) in its log-rho multistep form, as diffusers'
//! DEISMultistepScheduler computes it (orders 1 and 2): an exponential integrator on the
//! noise prediction with rho = sigma / alpha; runs end at sigma_min, not 0.
use super::dpm_solver::{ladder_accessors, History, Ladder, SigmaArithmetic};
use super::noise::NoiseSource;
use super::predict::{div, mul};
use super::scheduler::{SamplerConfig, Scheduler};
use super::sigmas::FinalSigma;
use super::types::{PredictionType, StepOutput, TimestepSpacing};
use crate::error::Result;
use candle_core::Tensor;

pub struct Deis {
    ladder: Ladder,
    prediction: PredictionType,
    order: usize,
    lower_order_final: bool,
    /// Noise predictions (from the x0 conversion) of earlier steps.
    history: History,
    next: usize,
}

impl Deis {
    pub fn new(
        config: &SamplerConfig,
        alpha_bar: &[f64],
        spacing: TimestepSpacing,
        how: SigmaArithmetic,
    ) -> Result<Self> {
        let sc = &config.scheduler;
        let mut plain = config.clone();
        // DEIS always ends at sigma_min (its log-rho weights are undefined at sigma = 0).
        plain.scheduler.final_sigmas_type = None;
        Ok(Self {
            ladder: Ladder::new(&plain, alpha_bar, spacing, false, how, FinalSigma::Min)?,
            prediction: sc.prediction_type,
            order: sc.solver_order.unwrap_or(2),
            lower_order_final: sc.lower_order_final.unwrap_or(true),
            history: History::new(sc.solver_order.unwrap_or(2)),
            next: 0,
        })
    }
}

/// diffusers' `ind_fn`: the integral of the log-rho Lagrange basis (float32).
fn ind(t: f32, b: f32, c: f32) -> f32 {
    t * (-c.ln() + t.ln() - 1.0) / (b.ln() - c.ln())
}

impl Scheduler for Deis {
    ladder_accessors!();

    fn step(
        &mut self,
        i: usize,
        mo: &Tensor,
        x: &Tensor,
        _noise: &mut dyn NoiseSource,
    ) -> Result<StepOutput> {
        let n = self.ladder.len();
        if self.ladder.begin("DEIS", i, self.next, mo, x)? {
            self.history.clear();
        }
        let lv = &self.ladder.levels;
        let (t, s0) = (lv[i + 1], lv[i]);
        let x0 = s0.x0(mo, x, self.prediction)?;
        // diffusers' order of operations: from cosine's t = 999 (alpha ~ 5e-5) the first step
        // cancels terms ~1585 times larger than its result, so each f32 rounding shows.
        let eps = div(&(x - x0.affine(s0.alpha, 0.0)?)?, s0.sigma as f32)?;
        let have = self.history.push(eps);
        let last = i + 1 == n && self.lower_order_final && n < 15;
        let hist = &self.history;
        let m0 = hist.back(0);
        let prev = if self.order == 1 || have < 1 || last {
            // Coefficients in f32 as diffusers forms them (see above).
            let f = |v: f64| v as f32;
            let lam = |l: super::dpm_solver::Level| f(l.alpha).ln() - f(l.sigma).ln();
            let h = lam(t) - lam(s0);
            let c_x = f(t.alpha) / f(s0.alpha);
            let c_e = f(t.sigma) * (h.exp() - 1.0);
            (x.affine(c_x as f64, 0.0)? - m0.affine(c_e as f64, 0.0)?)?
        } else {
            // diffusers' float32 arithmetic and order (rho, the logs and the sum).
            let s1 = lv[i - 1];
            let f = |v: f64| v as f32;
            let (rt, r0, r1) = (
                f(t.sigma) / f(t.alpha),
                f(s0.sigma) / f(s0.alpha),
                f(s1.sigma) / f(s1.alpha),
            );
            let c1 = ind(rt, r0, r1) - ind(r0, r0, r1);
            let c2 = ind(rt, r1, r0) - ind(r0, r1, r0);
            let m1 = hist.back(1);
            let inner = ((div(x, f(s0.alpha))? + mul(m0, c1)?)? + mul(m1, c2)?)?;
            mul(&inner, f(t.alpha))?
        };
        self.next = i + 1;
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: x0,
        })
    }
}
