//! Sigma space (Karras et al. 2022): sigma = sqrt((1 - abar) / abar), the noise level the
//! Euler, Heun, DPM-Solver, UniPC and DEIS schedulers of diffusers work in. Tables are formed
//! as diffusers forms them (float32 table, numpy float64 interpolation, float32 storage), so
//! timesteps and sigmas equal diffusers' arrays.
use crate::core::schedule::linspace;

/// diffusers' `((1 - alphas_cumprod) / alphas_cumprod) ** 0.5`, in float32 (torch). A
/// zero-SNR table's final alpha_bar of 0 is replaced by 2^-24, as diffusers does, so the
/// first sigma is finite.
pub fn sigma_table(alpha_bar: &[f64]) -> Vec<f32> {
    alpha_bar
        .iter()
        .map(|a| {
            let a = if *a == 0.0 { 2f32.powi(-24) } else { *a as f32 };
            ((1.0 - a) / a).sqrt()
        })
        .collect()
}

/// `np.log` of the float32 table (float32 result).
pub fn log_table(table: &[f32]) -> Vec<f32> {
    table.iter().map(|s| (*s as f64).ln() as f32).collect()
}

/// `numpy.interp(t, arange(n), table)`: linear interpolation, clamped at both ends.
pub fn interp(t: f64, table: &[f32]) -> f64 {
    let n = table.len();
    if t <= 0.0 {
        return table[0] as f64;
    }
    if t >= (n - 1) as f64 {
        return table[n - 1] as f64;
    }
    let j = t.floor() as usize;
    let (a, b) = (table[j] as f64, table[j + 1] as f64);
    let slope = b - a;
    slope * (t - j as f64) + a
}

/// Karras et al.'s rho = 7 noise levels from sigma_max down to sigma_min, n of them (f64,
/// as numpy computes them).
pub fn karras(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let (min_inv, max_inv) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// diffusers' `_sigma_to_t`: the fractional timestep whose log-sigma (linearly interpolated
/// in the float32 log table) equals log(sigma).
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    // The last index whose log-sigma is <= log(sigma), clipped to n - 2 (0 if none).
    let low = log_sigmas
        .iter()
        .rposition(|l| log_sigma - *l as f64 >= 0.0)
        .unwrap_or(0)
        .min(n - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((lo as f64 - log_sigma) / (lo - hi) as f64).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// Round to float32 and back: the arrays diffusers keeps are float32.
pub fn f32r(v: f64) -> f64 {
    v as f32 as f64
}

/// `np.linspace(0, T - 1, n, dtype=float32)[::-1]`: the fractional timesteps of diffusers'
/// Euler / Heun schedulers with linspace spacing.
pub fn linspace_f32_desc(train_steps: usize, n: usize) -> Vec<f64> {
    let mut v: Vec<f64> = linspace(0.0, (train_steps - 1) as f64, n)
        .into_iter()
        .map(f32r)
        .collect();
    v.reverse();
    v
}

/// The timesteps and sigmas (one more: the final level) of a sampler run.
#[derive(Clone, Debug, PartialEq)]
pub struct SigmaRun {
    /// What the model is evaluated at (fractional for Euler/Heun linspace and Karras).
    pub timesteps: Vec<f64>,
    /// Noise level at each timestep, then the final one; float32 values.
    pub sigmas: Vec<f64>,
}

/// How a run ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinalSigma {
    /// sigma = 0: the last step lands on clean data (diffusers' `final_sigmas_type="zero"`).
    Zero,
    /// sigma of t = 0 (`"sigma_min"`; DEIS always ends there).
    Min,
}

impl FinalSigma {
    pub fn parse(s: Option<&str>, default: FinalSigma) -> crate::error::Result<Self> {
        match s {
            None => Ok(default),
            Some("zero") => Ok(FinalSigma::Zero),
            Some("sigma_min") => Ok(FinalSigma::Min),
            Some(o) => Err(crate::error::Error::invalid(format!(
                "scheduler config: final_sigmas_type = {o:?} is not supported (zero or sigma_min)"
            ))),
        }
    }
    fn value(self, table: &[f32]) -> f64 {
        match self {
            FinalSigma::Zero => 0.0,
            FinalSigma::Min => table[0] as f64,
        }
    }
}

/// Euler / Euler ancestral / Heun `set_timesteps`: `base` are the spacing's timesteps (for
/// linspace the fractional float32 ones), sigmas interpolated in the table; with `karras`,
/// Karras levels between the ends and the fractional timesteps they map back to.
pub fn discrete_run(
    table: &[f32],
    base: Vec<f64>,
    karras_levels: bool,
    last: FinalSigma,
) -> SigmaRun {
    let mut sigmas: Vec<f64> = base.iter().map(|t| interp(*t, table)).collect();
    let mut timesteps = base;
    if karras_levels {
        let n = sigmas.len();
        sigmas = karras(sigmas[n - 1], sigmas[0], n);
        let logs = log_table(table);
        timesteps = sigmas.iter().map(|s| f32r(sigma_to_t(*s, &logs))).collect();
    }
    sigmas.push(last.value(table));
    SigmaRun {
        timesteps,
        sigmas: sigmas.into_iter().map(f32r).collect(),
    }
}

/// DPM-Solver / UniPC / DEIS `set_timesteps`: integer timesteps `base`; with `karras`,
/// Karras levels over the whole table and their timesteps rounded half to even (`round`) or
/// truncated (diffusers' DPM-Solver on squaredcos_cap_v2 skips the rounding).
pub fn multistep_run(
    table: &[f32],
    base: Vec<f64>,
    karras_levels: bool,
    round: bool,
    last: FinalSigma,
) -> crate::error::Result<SigmaRun> {
    let (timesteps, mut sigmas) = if karras_levels {
        let n = base.len();
        let s = karras(table[0] as f64, table[table.len() - 1] as f64, n);
        let logs = log_table(table);
        let t: Vec<f64> = s
            .iter()
            .map(|x| {
                let t = sigma_to_t(*x, &logs);
                if round {
                    t.round_ties_even()
                } else {
                    t.trunc()
                }
            })
            .collect();
        if let Some(w) = t.windows(2).find(|w| w[0] == w[1]) {
            return Err(crate::error::Error::invalid(format!(
                "Karras sigmas map two steps to timestep {} on this schedule (diffusers fails here too); use fewer steps or drop --karras",
                w[0]
            )));
        }
        (t, s)
    } else {
        let s = base.iter().map(|t| table[*t as usize] as f64).collect();
        (base, s)
    };
    sigmas.push(last.value(table));
    Ok(SigmaRun {
        timesteps,
        sigmas: sigmas.into_iter().map(f32r).collect(),
    })
}

/// diffusers' `init_noise_sigma` for sigma-space samplers: the largest sigma, or
/// sqrt(max^2 + 1) with leading spacing (float32).
pub fn init_noise_sigma(sigmas: &[f64], leading: bool) -> f64 {
    let max = sigmas.iter().cloned().fold(0.0f64, f64::max) as f32;
    if leading {
        (max * max + 1.0).sqrt() as f64
    } else {
        max as f64
    }
}

/// `x / sqrt(sigma^2 + 1)`: what sigma-space samplers hand the model.
pub fn scale_input(
    x: &candle_core::Tensor,
    sigma: f64,
) -> crate::error::Result<candle_core::Tensor> {
    let s = sigma as f32;
    super::predict::div(x, (s * s + 1.0).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interp_and_inverse_agree() {
        let ab: Vec<f64> = (0..100).map(|i| 1.0 - 0.009 * i as f64 - 1e-4).collect();
        let tab = sigma_table(&ab);
        let logs = log_table(&tab);
        assert_eq!(interp(3.0, &tab), tab[3] as f64);
        assert_eq!(interp(200.0, &tab), tab[99] as f64);
        // Exact inverses at the table's points; between them interp is linear in sigma and
        // sigma_to_t linear in log sigma, so they differ by a fraction of a step.
        for t in [0.0, 1.0, 42.0, 99.0] {
            let s = interp(t, &tab);
            assert!((sigma_to_t(s, &logs) - t).abs() < 1e-3, "{t}");
        }
        for t in [1.5, 42.25] {
            let s = interp(t, &tab);
            assert!((sigma_to_t(s, &logs) - t).abs() < 0.05, "{t}");
        }
        let k = karras(0.01, 80.0, 5);
        assert!((k[0] - 80.0).abs() < 1e-9 && (k[4] - 0.01).abs() < 1e-12);
        assert!(k.windows(2).all(|w| w[0] > w[1]));
    }
}
