//! DPM-Solver++ (Lu et al. 2022) first-order and 2M midpoint updates, as diffusers'
//! DPMSolverMultistepScheduler computes them in data (x0) prediction form.
//! alpha = sqrt(abar), sigma = sqrt(1 - abar), lambda = log(alpha / sigma).
use super::predict::lincomb;
use crate::error::Result;
use candle_core::Tensor;

fn alpha_sigma(ab: f64) -> (f64, f64) {
    (ab.sqrt(), (1.0 - ab).sqrt())
}

fn lambda(ab: f64) -> f64 {
    let (a, s) = alpha_sigma(ab);
    a.ln() - s.ln()
}

/// exp(-h) with h = lambda_t - lambda_s, written as a ratio so that the final step to
/// sigma = 0 (abar = 1, lambda = +inf) stays finite: exp(-h) = 0 there.
fn exp_neg_h(ab_s: f64, ab_t: f64) -> f64 {
    let (a_s, s_s) = alpha_sigma(ab_s);
    let (a_t, s_t) = alpha_sigma(ab_t);
    (s_t * a_s) / (a_t * s_s)
}

/// First-order update (= DDIM with eta 0) from abar_s to abar_t given x0 at s.
pub fn dpm_first_order(sample: &Tensor, x0: &Tensor, ab_s: f64, ab_t: f64) -> Result<Tensor> {
    let (_, s_s) = alpha_sigma(ab_s);
    let (a_t, s_t) = alpha_sigma(ab_t);
    let c = -a_t * (exp_neg_h(ab_s, ab_t) - 1.0);
    lincomb(&[(s_t / s_s, sample), (c, x0)])
}

/// Second-order multistep midpoint update from s0 to t, with x0 predictions m0 at s0 and
/// m1 at the earlier (noisier) s1. Needs abar_t < 1 (the final step is first order).
pub fn dpm_second_order(
    sample: &Tensor,
    m0: &Tensor,
    m1: &Tensor,
    ab_s1: f64,
    ab_s0: f64,
    ab_t: f64,
) -> Result<Tensor> {
    let (_, s_s0) = alpha_sigma(ab_s0);
    let (a_t, s_t) = alpha_sigma(ab_t);
    let h = lambda(ab_t) - lambda(ab_s0);
    let h0 = lambda(ab_s0) - lambda(ab_s1);
    let r0 = h0 / h;
    // x_t = (s_t/s_s0) x - a_t (e^-h - 1) (D0 + D1/2), D0 = m0, D1 = (m0 - m1) / r0.
    let c = -a_t * ((-h).exp() - 1.0);
    let k = 0.5 / r0;
    lincomb(&[(s_t / s_s0, sample), (c * (1.0 + k), m0), (-c * k, m1)])
}
