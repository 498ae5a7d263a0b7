//! Noise schedules and their alpha-bar tables, computed in f64.
//!
//! Convention (as diffusers): timesteps are 0-based, `t` in `[0, T-1]`, and
//! `alpha_bar[t] = prod_{s<=t} (1 - beta_s)`. Tutorials that write
//! `beta(t) = start + (end-start) t/T` with 1-based t are off by one step from this.
use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The beta schedules we know, with diffusers' names where diffusers has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BetaSchedule {
    /// diffusers `linear`: linspace(beta_start, beta_end, T).
    Linear,
    /// diffusers `scaled_linear`: linspace(sqrt(start), sqrt(end), T)^2.
    ScaledLinear,
    /// diffusers `squaredcos_cap_v2` (Improved DDPM cosine, s = 0.008, betas capped at max_beta).
    Cosine,
    /// diffusers `sigmoid`: sigmoid(linspace(-6, 6, T)) * (end - start) + start.
    Sigmoid,
    /// beta_i = start + (end - start) * ((i + 1) / T)^2, so the last beta is exactly beta_end.
    Quadratic,
}

impl BetaSchedule {
    pub const ALL: [BetaSchedule; 5] = [
        BetaSchedule::Linear,
        BetaSchedule::ScaledLinear,
        BetaSchedule::Cosine,
        BetaSchedule::Sigmoid,
        BetaSchedule::Quadratic,
    ];

    /// Our CLI name.
    pub fn name(self) -> &'static str {
        match self {
            BetaSchedule::Linear => "linear",
            BetaSchedule::ScaledLinear => "scaled-linear",
            BetaSchedule::Cosine => "cosine",
            BetaSchedule::Sigmoid => "sigmoid",
            BetaSchedule::Quadratic => "quadratic",
        }
    }

    /// The `beta_schedule` value diffusers writes in scheduler_config.json.
    pub fn diffusers_name(self) -> &'static str {
        match self {
            BetaSchedule::Linear => "linear",
            BetaSchedule::ScaledLinear => "scaled_linear",
            BetaSchedule::Cosine => "squaredcos_cap_v2",
            BetaSchedule::Sigmoid => "sigmoid",
            BetaSchedule::Quadratic => "quadratic",
        }
    }

    /// Accepts our names and diffusers' names.
    pub fn parse(name: &str) -> Result<Self> {
        let n = name.trim().to_ascii_lowercase().replace('_', "-");
        Ok(match n.as_str() {
            "linear" => BetaSchedule::Linear,
            "scaled-linear" => BetaSchedule::ScaledLinear,
            "cosine" | "squaredcos-cap-v2" => BetaSchedule::Cosine,
            "sigmoid" => BetaSchedule::Sigmoid,
            "quadratic" => BetaSchedule::Quadratic,
            _ => {
                return Err(Error::invalid(format!(
                    "unknown schedule '{name}' (expected linear, scaled-linear, cosine, sigmoid or quadratic)"
                )))
            }
        })
    }

    /// diffusers' default (beta_start, beta_end) for this schedule.
    pub fn default_range(self) -> (f64, f64) {
        match self {
            BetaSchedule::ScaledLinear => (0.00085, 0.012),
            _ => (1e-4, 0.02),
        }
    }
}

/// Everything that defines a schedule; shared by CLI flags and config files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScheduleConfig {
    pub schedule: BetaSchedule,
    pub timesteps: usize,
    /// `None` takes the schedule's diffusers default.
    pub beta_start: Option<f64>,
    pub beta_end: Option<f64>,
    /// Cap for the cosine schedule's betas (diffusers' max_beta).
    pub max_beta: f64,
    /// Rescale to zero terminal SNR (Lin et al. 2023, Algorithm 1).
    pub zero_snr: bool,
    /// A custom beta table; overrides `schedule`, `timesteps` and the beta range.
    pub betas: Option<Vec<f64>>,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            schedule: BetaSchedule::Linear,
            timesteps: 1000,
            beta_start: None,
            beta_end: None,
            max_beta: 0.999,
            zero_snr: false,
            betas: None,
        }
    }
}

impl ScheduleConfig {
    pub fn new(schedule: BetaSchedule) -> Self {
        Self {
            schedule,
            ..Self::default()
        }
    }

    pub fn beta_range(&self) -> (f64, f64) {
        let (s, e) = self.schedule.default_range();
        (self.beta_start.unwrap_or(s), self.beta_end.unwrap_or(e))
    }

    /// A short human label, e.g. `linear` or `cosine+zero-snr`.
    pub fn label(&self) -> String {
        let base = if self.betas.is_some() {
            "custom"
        } else {
            self.schedule.name()
        };
        if self.zero_snr {
            format!("{base}+zero-snr")
        } else {
            base.to_string()
        }
    }

    /// Compute the beta table, checking every parameter.
    pub fn betas(&self) -> Result<Vec<f64>> {
        let betas = match &self.betas {
            Some(b) => b.clone(),
            None => {
                let t = self.timesteps;
                crate::limits::check_count(
                    "--timesteps",
                    t,
                    crate::limits::MAX_TIMESTEPS,
                    "trained models use 1000; no sampler needs more",
                )?;
                let (start, end) = self.beta_range();
                if self.schedule != BetaSchedule::Cosine {
                    if !(start > 0.0 && start < 1.0 && end > 0.0 && end < 1.0) {
                        return Err(Error::invalid(format!(
                            "beta_start {start} and beta_end {end} must both lie in (0, 1)"
                        )));
                    }
                    if end <= start {
                        return Err(Error::invalid(format!(
                            "beta_end {end} must be greater than beta_start {start}"
                        )));
                    }
                }
                if !(self.max_beta > 0.0 && self.max_beta < 1.0) {
                    return Err(Error::invalid(format!(
                        "max_beta {} must lie in (0, 1)",
                        self.max_beta
                    )));
                }
                make_betas(self.schedule, t, start, end, self.max_beta)
            }
        };
        check_betas(&betas)?;
        if !self.zero_snr {
            return Ok(betas);
        }
        if betas.len() < 2 {
            // The rescale maps sqrt(abar) to [0, 1] by (x - last) / (first - last): 0/0 at T = 1.
            return Err(Error::invalid(
                "--zero-snr needs at least 2 timesteps (with T = 1 the rescaled schedule is 0/0)",
            ));
        }
        let rescaled = rescale_zero_terminal_snr(&betas);
        if rescaled.iter().any(|b| !b.is_finite()) {
            return Err(Error::invalid(
                "the zero-SNR rescale of this schedule has non-finite betas (its first and last alpha_bar are equal)",
            ));
        }
        Ok(rescaled)
    }
}

/// numpy/torch-style linspace in f64 (inclusive of both ends).
pub fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![start],
        _ => {
            let step = (end - start) / (n - 1) as f64;
            let mut v: Vec<f64> = (0..n).map(|i| start + step * i as f64).collect();
            v[n - 1] = end;
            v
        }
    }
}

fn make_betas(kind: BetaSchedule, t: usize, start: f64, end: f64, max_beta: f64) -> Vec<f64> {
    match kind {
        BetaSchedule::Linear => linspace(start, end, t),
        BetaSchedule::ScaledLinear => linspace(start.sqrt(), end.sqrt(), t)
            .into_iter()
            .map(|b| b * b)
            .collect(),
        BetaSchedule::Cosine => {
            // diffusers' betas_for_alpha_bar with the squaredcos_cap_v2 transform.
            let f = |u: f64| {
                ((u + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                    .cos()
                    .powi(2)
            };
            (0..t)
                .map(|i| {
                    let t1 = i as f64 / t as f64;
                    let t2 = (i + 1) as f64 / t as f64;
                    (1.0 - f(t2) / f(t1)).min(max_beta)
                })
                .collect()
        }
        BetaSchedule::Sigmoid => linspace(-6.0, 6.0, t)
            .into_iter()
            .map(|x| 1.0 / (1.0 + (-x).exp()) * (end - start) + start)
            .collect(),
        BetaSchedule::Quadratic => (0..t)
            .map(|i| {
                let u = (i + 1) as f64 / t as f64;
                start + (end - start) * u * u
            })
            .collect(),
    }
}

fn check_betas(betas: &[f64]) -> Result<()> {
    if betas.is_empty() {
        return Err(Error::invalid(
            "the beta table is empty (T must be at least 1)",
        ));
    }
    if let Some((i, b)) = betas
        .iter()
        .enumerate()
        .find(|(_, b)| !(**b > 0.0 && **b < 1.0))
    {
        return Err(Error::invalid(format!("beta[{i}] = {b} is outside (0, 1)")));
    }
    Ok(())
}

/// diffusers' `rescale_zero_terminal_snr` (Lin et al. 2023, Algorithm 1).
/// The last beta becomes exactly 1 (alpha_bar[T-1] = 0).
pub fn rescale_zero_terminal_snr(betas: &[f64]) -> Vec<f64> {
    let mut acc = 1.0;
    let mut sqrt_ab: Vec<f64> = betas
        .iter()
        .map(|b| {
            acc *= 1.0 - b;
            acc.sqrt()
        })
        .collect();
    let first = sqrt_ab[0];
    let last = *sqrt_ab.last().unwrap();
    for s in sqrt_ab.iter_mut() {
        *s = (*s - last) * first / (first - last);
    }
    let ab: Vec<f64> = sqrt_ab.iter().map(|s| s * s).collect();
    let mut out = Vec::with_capacity(ab.len());
    out.push(1.0 - ab[0]);
    for i in 1..ab.len() {
        out.push(1.0 - ab[i] / ab[i - 1]);
    }
    out
}

/// Read a custom beta table: one beta per line, or CSV whose last column is beta
/// (a header line and `#` comments are skipped).
pub fn read_betas_file(path: &Path) -> Result<Vec<f64>> {
    // A beta table of MAX_TIMESTEPS rows is well under 4 MB of text.
    let text = crate::io::input::read_text(path, 4 << 20)?;
    let mut betas = Vec::new();
    for (lineno, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let field = line.rsplit([',', ';', '\t']).next().unwrap_or("").trim();
        match field.parse::<f64>() {
            Ok(b) if b > 0.0 && b < 1.0 => betas.push(b),
            Ok(b) => {
                return Err(Error::format(
                    path,
                    format!("line {}: beta {b} is outside (0, 1)", lineno + 1),
                ))
            }
            // A non-numeric first row is a header.
            Err(_) if betas.is_empty() && lineno == 0 => continue,
            Err(_) => {
                return Err(Error::format(
                    path,
                    format!("line {}: '{line}' is not a number", lineno + 1),
                ))
            }
        }
    }
    if betas.is_empty() {
        return Err(Error::format(path, "no betas found"));
    }
    if betas.len() > crate::limits::MAX_TIMESTEPS {
        return Err(Error::format(
            path,
            format!(
                "{} betas, above the limit of {} timesteps",
                betas.len(),
                crate::limits::MAX_TIMESTEPS
            ),
        ));
    }
    Ok(betas)
}

/// One timestep's values, all in f64.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Row {
    pub t: usize,
    pub beta: f64,
    pub alpha: f64,
    pub alpha_bar: f64,
    pub alpha_bar_prev: f64,
    pub sqrt_alpha_bar: f64,
    pub sqrt_one_minus_alpha_bar: f64,
    pub snr: f64,
    pub log_snr: f64,
    pub posterior_variance: f64,
}

impl Row {
    pub const COLUMNS: [&'static str; 10] = [
        "t",
        "beta",
        "alpha",
        "alpha_bar",
        "alpha_bar_prev",
        "sqrt_alpha_bar",
        "sqrt_one_minus_alpha_bar",
        "snr",
        "log_snr",
        "posterior_variance",
    ];
    pub fn values(&self) -> [f64; 10] {
        [
            self.t as f64,
            self.beta,
            self.alpha,
            self.alpha_bar,
            self.alpha_bar_prev,
            self.sqrt_alpha_bar,
            self.sqrt_one_minus_alpha_bar,
            self.snr,
            self.log_snr,
            self.posterior_variance,
        ]
    }
}

/// A computed schedule: the beta table and every derived column, in f64.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub config: ScheduleConfig,
    pub betas: Vec<f64>,
    pub alphas: Vec<f64>,
    pub alpha_bar: Vec<f64>,
}

impl Schedule {
    pub fn new(config: &ScheduleConfig) -> Result<Self> {
        let betas = config.betas()?;
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let mut acc = 1.0;
        let alpha_bar = alphas
            .iter()
            .map(|a| {
                acc *= a;
                acc
            })
            .collect();
        let mut config = config.clone();
        config.timesteps = betas.len();
        Ok(Self {
            config,
            betas,
            alphas,
            alpha_bar,
        })
    }

    /// Convenience: a named schedule with diffusers' defaults over T steps.
    pub fn named(kind: BetaSchedule, timesteps: usize) -> Result<Self> {
        Self::new(&ScheduleConfig {
            timesteps,
            ..ScheduleConfig::new(kind)
        })
    }

    /// Every column of every row is a number: NaN anywhere (a degenerate custom table, a
    /// rescale gone wrong) is an error naming the first one. SNR may be infinite and log-SNR
    /// -inf at a zero-SNR endpoint; those are the true values, not failures.
    pub fn check_finite(&self) -> Result<()> {
        for r in self.rows() {
            if let Some((i, _)) = r.values().iter().enumerate().find(|(_, v)| v.is_nan()) {
                return Err(Error::invalid(format!(
                    "schedule {}: {} at t = {} is not a number",
                    self.config.label(),
                    Row::COLUMNS[i],
                    r.t
                )));
            }
        }
        Ok(())
    }

    /// Number of training timesteps T.
    pub fn len(&self) -> usize {
        self.betas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// Check a timestep against [0, T-1].
    pub fn check_t(&self, t: usize) -> Result<()> {
        if t >= self.len() {
            return Err(Error::invalid(format!(
                "timestep {t} is out of range: t must be in [0, {}] (0-based, T = {})",
                self.len() - 1,
                self.len()
            )));
        }
        Ok(())
    }

    /// alpha_bar as diffusers holds it: betas rounded to f32, alpha = 1 - beta in f32, the
    /// product accumulated in f64 (torch's CPU cumprod) and rounded to f32. Bit-identical to
    /// diffusers when its f32 betas equal ours rounded (cosine: all 1000; linspace-based
    /// schedules differ by an ulp in some betas, as torch's f32 linspace rounds differently).
    pub fn alpha_bar_like_diffusers(&self) -> Vec<f64> {
        let mut acc = 1.0f64;
        self.betas
            .iter()
            .map(|b| {
                acc *= (1.0f32 - *b as f32) as f64;
                acc as f32 as f64
            })
            .collect()
    }

    /// alpha_bar at t-1, with alpha_bar_prev(0) = 1 (diffusers' `one`).
    pub fn alpha_bar_prev(&self, t: usize) -> f64 {
        if t == 0 {
            1.0
        } else {
            self.alpha_bar[t - 1]
        }
    }

    pub fn row(&self, t: usize) -> Row {
        let ab = self.alpha_bar[t];
        let abp = self.alpha_bar_prev(t);
        let snr = ab / (1.0 - ab);
        Row {
            t,
            beta: self.betas[t],
            alpha: self.alphas[t],
            alpha_bar: ab,
            alpha_bar_prev: abp,
            sqrt_alpha_bar: ab.sqrt(),
            sqrt_one_minus_alpha_bar: (1.0 - ab).sqrt(),
            snr,
            log_snr: snr.ln(),
            posterior_variance: self.betas[t] * (1.0 - abp) / (1.0 - ab),
        }
    }

    pub fn rows(&self) -> impl Iterator<Item = Row> + '_ {
        (0..self.len()).map(|t| self.row(t))
    }

    /// Rows for the human summary: every 10% of T, plus T-1.
    pub fn summary_timesteps(&self) -> Vec<usize> {
        let n = self.len();
        let mut ts: Vec<usize> = (0..10).map(|k| k * n / 10).collect();
        ts.push(n - 1);
        ts.dedup();
        ts
    }

    /// A column as f32 tensor on `device` (the model side works in f32).
    pub fn tensor(&self, f: impl Fn(&Row) -> f64, device: &Device) -> Result<Tensor> {
        let v: Vec<f32> = self.rows().map(|r| f(&r) as f32).collect();
        Ok(Tensor::from_vec(v, self.len(), device)?)
    }
}

/// Build a schedule config from CLI-style pieces, loading `--betas FILE` if given.
pub fn config_with_betas_file(
    mut config: ScheduleConfig,
    betas_file: Option<&PathBuf>,
) -> Result<ScheduleConfig> {
    if let Some(p) = betas_file {
        config.betas = Some(read_betas_file(p)?);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_midpoint_matches_diffusers_convention() {
        let s = Schedule::named(BetaSchedule::Linear, 1000).unwrap();
        let r = s.row(500);
        assert!((r.alpha_bar - 0.07779665836502389).abs() < 1e-12);
        assert!((r.sqrt_alpha_bar - 0.2789).abs() < 1e-4);
        assert!((r.sqrt_one_minus_alpha_bar - 0.9603).abs() < 1e-4);
    }

    #[test]
    fn quadratic_ends_at_beta_end() {
        let s = Schedule::named(BetaSchedule::Quadratic, 1000).unwrap();
        assert_eq!(*s.betas.last().unwrap(), 0.02);
        assert!((s.betas[0] - (1e-4 + (0.02 - 1e-4) * 1e-6)).abs() < 1e-15);
    }

    #[test]
    fn zero_snr_has_zero_terminal_alpha_bar() {
        let cfg = ScheduleConfig {
            zero_snr: true,
            ..ScheduleConfig::default()
        };
        let s = Schedule::new(&cfg).unwrap();
        assert!(s.alpha_bar[999].abs() < 1e-15);
        assert!((s.betas[999] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn bad_parameters_are_usage_errors() {
        let bad = [
            ScheduleConfig {
                timesteps: 0,
                ..Default::default()
            },
            ScheduleConfig {
                beta_start: Some(0.02),
                beta_end: Some(0.01),
                ..Default::default()
            },
            ScheduleConfig {
                beta_end: Some(1.5),
                ..Default::default()
            },
            ScheduleConfig {
                betas: Some(vec![0.1, 0.0]),
                ..Default::default()
            },
        ];
        for c in bad {
            assert!(Schedule::new(&c).unwrap_err().is_usage(), "{c:?}");
        }
        let s = Schedule::named(BetaSchedule::Linear, 10).unwrap();
        assert!(s.check_t(9).is_ok());
        assert!(s.check_t(10).unwrap_err().is_usage());
        assert!(BetaSchedule::parse("nope").is_err());
        assert_eq!(
            BetaSchedule::parse("squaredcos_cap_v2").unwrap(),
            BetaSchedule::Cosine
        );
    }
}
