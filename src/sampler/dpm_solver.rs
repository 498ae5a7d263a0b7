//! DPM-Solver++ (Lu et al. 2022) as diffusers' DPMSolverMultistepScheduler computes it in
//! data (x0) prediction form: orders 1-3 (2M, 3M), the SDE variant (sde-dpmsolver++, Gonzalez
//! et al.), linspace/leading/trailing timesteps or Karras sigmas. Levels are
//! alpha = 1/sqrt(sigma^2 + 1), sigma_t = sigma * alpha, lambda = log(alpha / sigma_t).
use super::noise::NoiseSource;
use super::predict::{check_pair, lincomb};
use super::scheduler::{out_of_run, SamplerConfig, Scheduler};
use super::sigmas::{multistep_run, sigma_table, FinalSigma, SigmaRun};
use super::timesteps::dpm_timesteps;
use super::types::{PredictionType, StepOutput, TimestepSpacing};
use crate::error::{Error, Result};
use candle_core::Tensor;

/// One noise level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Level {
    pub alpha: f64,
    pub sigma: f64,
}

/// How a level's (alpha, sigma) are formed from the sampler's sigma.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SigmaArithmetic {
    /// In f64. Closest to the exact values, but differs from diffusers by up to 3.5e-4 on
    /// cosine chains (see below).
    F64,
    /// diffusers' float32 path: alpha = 1 / sqrt(s^2 + 1), sigma = s * alpha, each rounded to
    /// f32. At abar ~ 2e-9 (cosine, t = 999) that sigma is one f32 ulp below the true value,
    /// which moves x0 by ~1e-3 there; this mode reproduces diffusers' chains (within 2.4e-6),
    /// so it is the default: our promise is parity with diffusers' outputs.
    #[default]
    DiffusersF32,
}

impl Level {
    /// The level of noise-to-signal ratio `s` (diffusers' `_sigma_to_alpha_sigma_t`).
    pub fn from_sigma(s: f64, how: SigmaArithmetic) -> Self {
        match how {
            SigmaArithmetic::F64 => {
                let alpha = 1.0 / (s * s + 1.0).sqrt();
                Self {
                    alpha,
                    sigma: s * alpha,
                }
            }
            SigmaArithmetic::DiffusersF32 => {
                let s = s as f32;
                let alpha = 1.0 / (s * s + 1.0).sqrt();
                Self {
                    alpha: alpha as f64,
                    sigma: (s * alpha) as f64,
                }
            }
        }
    }

    /// log(alpha / sigma); +inf at sigma = 0.
    pub fn lambda(&self) -> f64 {
        self.alpha.ln() - self.sigma.ln()
    }

    /// x0 implied by a model output at this level (data-prediction form).
    pub fn x0(&self, mo: &Tensor, x: &Tensor, prediction: PredictionType) -> Result<Tensor> {
        Ok(match prediction {
            PredictionType::Epsilon => {
                (x - mo.affine(self.sigma, 0.0)?)?.affine(1.0 / self.alpha, 0.0)?
            }
            PredictionType::Sample => mo.clone(),
            PredictionType::VPrediction => lincomb(&[(self.alpha, x), (-self.sigma, mo)])?,
        })
    }
}

/// The (timesteps, sigmas, levels) every multistep sampler (DPM-Solver, UniPC, DEIS) shares.
pub struct Ladder {
    pub run: SigmaRun,
    pub levels: Vec<Level>,
}

impl Ladder {
    /// diffusers' multistep `set_timesteps`.
    pub fn new(
        config: &SamplerConfig,
        alpha_bar: &[f64],
        spacing: TimestepSpacing,
        karras: bool,
        how: SigmaArithmetic,
        default_final: FinalSigma,
    ) -> Result<Self> {
        let sc = &config.scheduler;
        let table = match how {
            SigmaArithmetic::DiffusersF32 => sigma_table(alpha_bar),
            SigmaArithmetic::F64 => alpha_bar
                .iter()
                .map(|a| ((1.0 - a) / a).sqrt() as f32)
                .collect(),
        };
        // lambda_min_clipped drops the timesteps whose lambda is below it (DPM-Solver only).
        let clipped = match sc.lambda_min_clipped {
            Some(l) if l.is_finite() => table.iter().filter(|s| -(s.ln() as f64) < l).count(),
            _ => 0,
        };
        let t_train = alpha_bar.len();
        let base = dpm_timesteps(
            t_train,
            t_train - clipped,
            config.steps,
            spacing,
            sc.steps_offset,
        )?;
        let base = base.into_iter().map(|t| t as f64).collect();
        let last = FinalSigma::parse(sc.final_sigmas_type.as_deref(), default_final)?;
        let round = sc.beta_schedule != "squaredcos_cap_v2";
        let run = multistep_run(&table, base, karras, round, last)?;
        let levels = run
            .sigmas
            .iter()
            .map(|s| Level::from_sigma(*s, how))
            .collect();
        Ok(Self { run, levels })
    }

    pub fn len(&self) -> usize {
        self.run.timesteps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.run.timesteps.is_empty()
    }

    /// diffusers' multistep `add_noise`: alpha_i x0 + sigma_i noise at level i.
    pub fn add_noise(&self, i: usize, x0: &Tensor, noise: &Tensor) -> Result<Tensor> {
        let l = self
            .levels
            .get(i)
            .filter(|_| i < self.len())
            .ok_or_else(|| out_of_run(i, self.len()))?;
        crate::core::forward::closed_form(x0, noise, l.alpha, l.sigma)
    }
}

/// Predictions of earlier steps, newest last, at most `keep` of them (diffusers'
/// `model_outputs`).
pub struct History {
    items: Vec<Tensor>,
    keep: usize,
}

impl History {
    pub fn new(keep: usize) -> Self {
        Self {
            items: Vec::new(),
            keep: keep.max(1),
        }
    }

    pub fn clear(&mut self) {
        self.items.clear();
    }

    /// Add this step's prediction; returns how many earlier ones there are (diffusers'
    /// `lower_order_nums`, capped at the order).
    pub fn push(&mut self, t: Tensor) -> usize {
        let have = self.items.len();
        self.items.push(t);
        if self.items.len() > self.keep {
            self.items.remove(0);
        }
        have
    }

    /// The k-th newest prediction (0: this step's).
    pub fn back(&self, k: usize) -> &Tensor {
        &self.items[self.items.len() - 1 - k]
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl Ladder {
    /// What every multistep step checks first: steps in order, model output and sample
    /// alike. True when the step starts a run (state must be reset).
    pub fn begin(
        &self,
        name: &str,
        i: usize,
        next: usize,
        mo: &Tensor,
        x: &Tensor,
    ) -> Result<bool> {
        check_order(name, i, next, self.len())?;
        check_pair(mo, x)?;
        Ok(i == 0)
    }
}

/// Steps must come in order from the first one taken (0, or an img2img start): multistep
/// samplers keep earlier predictions. `next` is 0 on a fresh run.
pub fn check_order(name: &str, i: usize, next: usize, n: usize) -> Result<()> {
    if i >= n {
        return Err(out_of_run(i, n));
    }
    if i != 0 && next != 0 && i != next {
        return Err(Error::invalid(format!(
            "{name} steps must run in order: got step {i}, expected {next}"
        )));
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DpmAlgorithm {
    /// dpmsolver++: the deterministic ODE solver.
    DataPrediction,
    /// sde-dpmsolver++: fresh noise each step.
    Sde,
}

pub struct DpmSolver {
    ladder: Ladder,
    prediction: PredictionType,
    algorithm: DpmAlgorithm,
    order: usize,
    /// diffusers' lower_order_final (use lower orders on the last steps when n < 15).
    lower_order_final: bool,
    /// First order on the last step (euler_at_final, or a final sigma of zero).
    first_order_last: bool,
    /// x0 predictions of earlier steps.
    history: History,
    next: usize,
}

impl DpmSolver {
    pub fn new(
        config: &SamplerConfig,
        alpha_bar: &[f64],
        spacing: TimestepSpacing,
        karras: bool,
        how: SigmaArithmetic,
        algorithm: DpmAlgorithm,
        order: usize,
    ) -> Result<Self> {
        let sc = &config.scheduler;
        let ladder = Ladder::new(config, alpha_bar, spacing, karras, how, FinalSigma::Zero)?;
        let n = ladder.len();
        let zero_final = ladder.run.sigmas[n] == 0.0;
        let lower_order_final = sc.lower_order_final.unwrap_or(true);
        Ok(Self {
            first_order_last: sc.euler_at_final.unwrap_or(false)
                || (lower_order_final && n < 15)
                || zero_final,
            ladder,
            prediction: sc.prediction_type,
            algorithm,
            order,
            lower_order_final,
            history: History::new(order),
            next: 0,
        })
    }
}

/// The [`Scheduler`] methods a sampler on a [`Ladder`] (its field `ladder`) answers from it:
/// the ladder's timesteps, sigmas and closed-form noising.
macro_rules! ladder_accessors {
    () => {
        fn timesteps(&self) -> &[f64] {
            &self.ladder.run.timesteps
        }

        fn add_noise(
            &self,
            i: usize,
            x0: &candle_core::Tensor,
            noise: &candle_core::Tensor,
        ) -> crate::error::Result<candle_core::Tensor> {
            self.ladder.add_noise(i, x0, noise)
        }

        fn sigmas(&self) -> Option<&[f64]> {
            Some(&self.ladder.run.sigmas)
        }
    };
}
pub(crate) use ladder_accessors;

impl Scheduler for DpmSolver {
    ladder_accessors!();

    fn step(
        &mut self,
        i: usize,
        mo: &Tensor,
        x: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<StepOutput> {
        let n = self.ladder.len();
        if self.ladder.begin("DPM-Solver++", i, self.next, mo, x)? {
            self.history.clear();
        }
        let lv = &self.ladder.levels;
        let x0 = lv[i].x0(mo, x, self.prediction)?;
        let have = self.history.push(x0.clone());
        let z = match self.algorithm {
            DpmAlgorithm::Sde => Some(noise.randn(x.shape(), x.device())?),
            DpmAlgorithm::DataPrediction => None,
        };
        let last = i == n - 1 && self.first_order_last;
        let second_last = i + 2 == n && self.lower_order_final && n < 15;
        let (t, s0) = (lv[i + 1], lv[i]);
        let h = t.lambda() - s0.lambda();
        // e^{-h} as a ratio, so the final step to sigma = 0 (h = inf) gives exactly 0.
        let e = (t.sigma * s0.alpha) / (t.alpha * s0.sigma);
        // Coefficients of x and of the x0 combination, and the noise weight.
        let (cx, phi, cz) = match self.algorithm {
            DpmAlgorithm::DataPrediction => (t.sigma / s0.sigma, -t.alpha * (e - 1.0), 0.0),
            DpmAlgorithm::Sde => (
                t.sigma / s0.sigma * e,
                t.alpha * (1.0 - e * e),
                t.sigma * (1.0 - e * e).sqrt(),
            ),
        };
        let hist = &self.history;
        let m = |k: usize| hist.back(k);
        let mut prev = if self.order == 1 || have < 1 || last {
            lincomb(&[(cx, x), (phi, m(0))])?
        } else if self.order == 2 || have < 2 || second_last {
            let s1 = lv[i - 1];
            let r0 = (s0.lambda() - s1.lambda()) / h;
            // D0 = m0, D1 = (m0 - m1) / r0; midpoint: x0 weight phi (D0 + D1 / 2).
            let k = 0.5 / r0;
            lincomb(&[(cx, x), (phi * (1.0 + k), m(0)), (-phi * k, m(1))])?
        } else {
            let (s1, s2) = (lv[i - 1], lv[i - 2]);
            let (h0, h1) = (s0.lambda() - s1.lambda(), s1.lambda() - s2.lambda());
            let (r0, r1) = (h0 / h, h1 / h);
            // D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1,
            // D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1), D2 = (D1_0 - D1_1) / (r0 + r1).
            let (c1, c2) = match self.algorithm {
                DpmAlgorithm::DataPrediction => (
                    t.alpha * (((-h).exp() - 1.0) / h + 1.0),
                    -t.alpha * (((-h).exp() - 1.0 + h) / (h * h) - 0.5),
                ),
                DpmAlgorithm::Sde => (
                    t.alpha * ((1.0 - (-2.0 * h).exp()) / (-2.0 * h) + 1.0),
                    t.alpha * ((1.0 - (-2.0 * h).exp() - 2.0 * h) / (4.0 * h * h) - 0.5),
                ),
            };
            let a = r0 / (r0 + r1);
            let d10 = [(1.0 / r0, 0usize), (-1.0 / r0, 1)];
            let d11 = [(1.0 / r1, 1usize), (-1.0 / r1, 2)];
            // Accumulate the weight of each history entry.
            let mut w = [0.0f64; 3];
            w[0] += phi;
            for (c, k) in d10 {
                w[k] += c1 * (1.0 + a) * c + c2 / (r0 + r1) * c;
            }
            for (c, k) in d11 {
                w[k] += -c1 * a * c - c2 / (r0 + r1) * c;
            }
            lincomb(&[(cx, x), (w[0], m(0)), (w[1], m(1)), (w[2], m(2))])?
        };
        if let Some(z) = z {
            prev = (prev + z.affine(cz, 0.0)?)?;
        }
        self.next = i + 1;
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: x0,
        })
    }
}
