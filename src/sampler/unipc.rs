//! UniPC (Zhao et al. 2023) as diffusers' UniPCMultistepScheduler computes it with
//! `predict_x0` (data prediction) and the bh1/bh2 B(h): a multistep predictor (UniP) to the
//! next level, and at the start of each later step a corrector (UniC) that re-solves the
//! previous step with the model output just computed.
use super::dpm_solver::{ladder_accessors, History, Ladder, SigmaArithmetic};
use super::noise::NoiseSource;
use super::predict::lincomb;
use super::scheduler::{SamplerConfig, Scheduler};
use super::sigmas::FinalSigma;
use super::types::{PredictionType, StepOutput, TimestepSpacing};
use crate::error::Result;
use candle_core::Tensor;

pub struct UniPc {
    ladder: Ladder,
    prediction: PredictionType,
    order: usize,
    lower_order_final: bool,
    /// bh2: B(h) = e^h - 1 (diffusers' default); bh1: B(h) = h.
    bh2: bool,
    disable_corrector: Vec<usize>,
    /// x0 predictions of earlier steps.
    history: History,
    last_sample: Option<Tensor>,
    /// The order of the previous predictor step (the corrector uses it).
    this_order: usize,
    next: usize,
}

impl UniPc {
    pub fn new(
        config: &SamplerConfig,
        alpha_bar: &[f64],
        spacing: TimestepSpacing,
        karras: bool,
        how: SigmaArithmetic,
    ) -> Result<Self> {
        let sc = &config.scheduler;
        Ok(Self {
            ladder: Ladder::new(config, alpha_bar, spacing, karras, how, FinalSigma::Zero)?,
            prediction: sc.prediction_type,
            order: sc.solver_order.unwrap_or(2),
            lower_order_final: sc.lower_order_final.unwrap_or(true),
            bh2: sc.solver_type.as_deref().unwrap_or("bh2") == "bh2",
            disable_corrector: sc.disable_corrector.clone().unwrap_or_default(),
            history: History::new(sc.solver_order.unwrap_or(2)),
            last_sample: None,
            this_order: 1,
            next: 0,
        })
    }

    /// B(h), the phi_k terms and the (R, b) system of UniPC's order-`p` update with step
    /// h (hh = -h in data prediction), given the ratios r_k of earlier steps.
    fn system(&self, h: f64, rks: &[f64], p: usize) -> (f64, f64, Vec<Vec<f64>>, Vec<f64>) {
        let hh = -h;
        let h_phi_1 = hh.exp_m1();
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut fact = 1.0;
        let b_h = if self.bh2 { hh.exp_m1() } else { hh };
        let mut r = Vec::new();
        let mut b = Vec::new();
        for i in 1..=p {
            r.push(rks.iter().map(|x| x.powi(i as i32 - 1)).collect());
            b.push(h_phi_k * fact / b_h);
            fact *= (i + 1) as f64;
            h_phi_k = h_phi_k / hh - 1.0 / fact;
        }
        (h_phi_1, b_h, r, b)
    }

    /// One UniP (predictor) or UniC (corrector) update from level `s` to level `t`, both
    /// built on `m0` = history[-1], with earlier differences D_k = (m_k - m0) / r_k.
    fn update(
        &self,
        x: &Tensor,
        s: usize,
        t: usize,
        p: usize,
        model_t: Option<&Tensor>,
    ) -> Result<Tensor> {
        let lv = &self.ladder.levels;
        let (lt, ls) = (lv[t], lv[s]);
        let h = lt.lambda() - ls.lambda();
        let hist = &self.history;
        let m0 = hist.back(0);
        let mut rks = Vec::new();
        let mut terms: Vec<(f64, &Tensor)> = Vec::new();
        for k in 1..p {
            let rk = (lv[s - k].lambda() - ls.lambda()) / h;
            rks.push(rk);
        }
        rks.push(1.0);
        let (h_phi_1, b_h, r, b) = self.system(h, &rks, p);
        let base = [(lt.sigma / ls.sigma, x), (-lt.alpha * h_phi_1, m0)];
        terms.extend(base);
        // Weights rho on D_1..D_{p-1} (and, corrector, on D_t = model_t - m0).
        let rhos: Vec<f64> = match model_t {
            None if p == 2 => vec![0.5],
            None if p > 2 => solve(
                r[..p - 1].iter().map(|row| row[..p - 1].to_vec()).collect(),
                b[..p - 1].to_vec(),
            ),
            None => vec![],
            Some(_) if p == 1 => vec![0.5],
            Some(_) => solve(r, b),
        };
        let c = -lt.alpha * b_h;
        let mut m0_w = 0.0;
        for k in 1..p {
            if let Some(rho) = rhos.get(k - 1) {
                let w = c * rho / rks[k - 1];
                terms.push((w, hist.back(k)));
                m0_w -= w;
            }
        }
        if let Some(mt) = model_t {
            let rho_t = rhos[rhos.len() - 1];
            terms.push((c * rho_t, mt));
            m0_w -= c * rho_t;
        }
        terms.push((m0_w, m0));
        lincomb(&terms)
    }
}

/// Solve the small dense system A x = y (Gaussian elimination with partial pivoting).
fn solve(mut a: Vec<Vec<f64>>, mut y: Vec<f64>) -> Vec<f64> {
    let n = y.len();
    for c in 0..n {
        let p = (c..n)
            .max_by(|i, j| a[*i][c].abs().total_cmp(&a[*j][c].abs()))
            .unwrap_or(c);
        a.swap(c, p);
        y.swap(c, p);
        let pivot = a[c].clone();
        for r in c + 1..n {
            let f = a[r][c] / pivot[c];
            for (ark, pk) in a[r][c..].iter_mut().zip(&pivot[c..]) {
                *ark -= f * pk;
            }
            y[r] -= f * y[c];
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| a[r][k] * x[k]).sum();
        x[r] = (y[r] - s) / a[r][r];
    }
    x
}

impl Scheduler for UniPc {
    ladder_accessors!();

    fn step(
        &mut self,
        i: usize,
        mo: &Tensor,
        x: &Tensor,
        _noise: &mut dyn NoiseSource,
    ) -> Result<StepOutput> {
        let n = self.ladder.len();
        if self.ladder.begin("UniPC", i, self.next, mo, x)? {
            self.history.clear();
            self.last_sample = None;
        }
        let x0 = self.ladder.levels[i].x0(mo, x, self.prediction)?;
        let mut x = x.clone();
        if i > 0 && !self.disable_corrector.contains(&(i - 1)) {
            if let Some(last) = &self.last_sample {
                x = self.update(last, i - 1, i, self.this_order, Some(&x0))?;
            }
        }
        let have = self.history.push(x0.clone());
        let mut p = self.order;
        if self.lower_order_final {
            p = p.min(n - i);
        }
        self.this_order = p.min(have.min(self.order) + 1);
        let prev = self.update(&x, i, i + 1, self.this_order, None)?;
        self.last_sample = Some(x);
        self.next = i + 1;
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: x0,
        })
    }
}
