//! The small enums shared by every sampler, named as diffusers names them in
//! scheduler_config.json (serde) and as our CLI names them (clap).
use crate::error::{Error, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// What the network predicts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum PredictionType {
    /// The added noise (DDPM's original parameterisation).
    #[default]
    #[serde(rename = "epsilon")]
    Epsilon,
    /// v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022).
    #[serde(rename = "v_prediction")]
    #[value(name = "v-prediction", alias = "v_prediction", alias = "v")]
    VPrediction,
    /// The clean sample x0 itself.
    #[serde(rename = "sample")]
    Sample,
}

/// How inference timesteps are picked from the T training timesteps (diffusers'
/// `timestep_spacing`; Lin et al. 2023, Table 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

/// DDPM's per-step variance (diffusers' `variance_type`). Only the fixed ones are sampled;
/// the learned ones are accepted when reading a config and refused when used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum VarianceType {
    /// Posterior variance beta~_t = (1 - abar_prev) / (1 - abar_t) * beta_t.
    #[default]
    FixedSmall,
    /// Same variance as fixed_small (diffusers stores its square root instead).
    #[value(skip)]
    FixedSmallLog,
    /// beta_t.
    FixedLarge,
    #[value(skip)]
    FixedLargeLog,
    #[value(skip)]
    Learned,
    #[value(skip)]
    LearnedRange,
}

impl VarianceType {
    pub fn name(self) -> &'static str {
        match self {
            VarianceType::FixedSmall => "fixed_small",
            VarianceType::FixedSmallLog => "fixed_small_log",
            VarianceType::FixedLarge => "fixed_large",
            VarianceType::FixedLargeLog => "fixed_large_log",
            VarianceType::Learned => "learned",
            VarianceType::LearnedRange => "learned_range",
        }
    }
}

/// The reverse-process samplers we implement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum SamplerKind {
    /// Ancestral DDPM (diffusers DDPMScheduler), full chain or respaced.
    #[serde(rename = "ddpm")]
    #[value(alias = "DDPMScheduler")]
    Ddpm,
    /// DDIM (diffusers DDIMScheduler), eta in [0, 1].
    #[default]
    #[serde(rename = "ddim")]
    #[value(alias = "DDIMScheduler")]
    Ddim,
    /// DPM-Solver++ 2M (diffusers DPMSolverMultistepScheduler, midpoint, order 2).
    #[serde(rename = "dpm-solver++")]
    #[value(
        name = "dpm-solver++",
        alias = "dpmsolver++",
        alias = "dpm++",
        alias = "DPMSolverMultistepScheduler"
    )]
    DpmSolverPP,
}

impl SamplerKind {
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Ddpm => "ddpm",
            SamplerKind::Ddim => "ddim",
            SamplerKind::DpmSolverPP => "dpm-solver++",
        }
    }

    /// Parse a sampler name (our CLI names, case-insensitive).
    pub fn parse(name: &str) -> Result<Self> {
        <Self as clap::ValueEnum>::from_str(name.trim(), true).map_err(|_| {
            Error::invalid(format!(
                "unknown sampler '{name}' (expected ddpm, ddim or dpm-solver++)"
            ))
        })
    }

    /// diffusers' scheduler class for this sampler.
    pub fn diffusers_class(self) -> &'static str {
        match self {
            SamplerKind::Ddpm => "DDPMScheduler",
            SamplerKind::Ddim => "DDIMScheduler",
            SamplerKind::DpmSolverPP => "DPMSolverMultistepScheduler",
        }
    }
}

impl std::str::FromStr for SamplerKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// What one reverse step returns.
#[derive(Clone, Debug)]
pub struct StepOutput {
    /// x_{t_prev}.
    pub prev_sample: Tensor,
    /// The step's estimate of x0 (after clipping, if enabled).
    pub pred_original_sample: Tensor,
}
