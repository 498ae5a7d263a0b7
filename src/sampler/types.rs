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

/// The reverse-process samplers we implement, each matching one diffusers scheduler.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum SamplerKind {
    /// Ancestral DDPM: the training chain reversed; stochastic, needs hundreds of steps.
    #[serde(rename = "ddpm")]
    #[value(alias = "DDPMScheduler")]
    Ddpm,
    /// DDIM, eta in [0, 1]: deterministic at eta 0; dependable at 50 steps.
    #[default]
    #[serde(rename = "ddim")]
    #[value(alias = "DDIMScheduler")]
    Ddim,
    /// Euler: first-order ODE steps in sigma; simple, 25-50 steps.
    #[serde(rename = "euler")]
    #[value(alias = "EulerDiscreteScheduler")]
    Euler,
    /// Euler ancestral: Euler plus fresh noise each step; varied, never converges.
    #[serde(rename = "euler-a")]
    #[value(
        name = "euler-a",
        alias = "euler_a",
        alias = "euler-ancestral",
        alias = "euler_ancestral",
        alias = "EulerAncestralDiscreteScheduler"
    )]
    EulerAncestral,
    /// Heun: second order, two model calls per step; accurate, costly.
    #[serde(rename = "heun")]
    #[value(alias = "HeunDiscreteScheduler")]
    Heun,
    /// DPM-Solver++ 2M: the all-rounder at 15-25 steps.
    #[serde(rename = "dpm-solver++")]
    #[value(
        name = "dpm-solver++",
        alias = "dpm++2m",
        alias = "dpmpp-2m",
        alias = "dpmpp_2m",
        alias = "dpmsolver++",
        alias = "dpm++",
        alias = "DPMSolverMultistepScheduler"
    )]
    DpmSolverPP,
    /// DPM-Solver++ 3M (solver_order 3): third order, for 20+ steps.
    #[serde(rename = "dpm++3m")]
    #[value(name = "dpm++3m", alias = "dpmpp-3m", alias = "dpmpp_3m")]
    DpmSolverPP3M,
    /// DPM-Solver++ 2M SDE (sde-dpmsolver++): stochastic 2M; wants 25+ steps.
    #[serde(rename = "dpm++2m-sde")]
    #[value(
        name = "dpm++2m-sde",
        alias = "dpmpp-2m-sde",
        alias = "dpmpp_2m_sde",
        alias = "sde-dpmsolver++"
    )]
    DpmSolverSde,
    /// UniPC (bh2): predictor-corrector; the fewest steps (10-15).
    #[serde(rename = "unipc")]
    #[value(name = "unipc", alias = "UniPCMultistepScheduler")]
    UniPc,
    /// PNDM as PLMS (skip_prk_steps): 4th-order multistep; google/ddpm-* cards use it.
    #[serde(rename = "pndm")]
    #[value(alias = "plms", alias = "PNDMScheduler")]
    Pndm,
    /// DEIS (logrho, order 2): exponential integrator; 15-25 steps.
    #[serde(rename = "deis")]
    #[value(alias = "DEISMultistepScheduler")]
    Deis,
}

impl SamplerKind {
    pub const ALL: [SamplerKind; 11] = [
        SamplerKind::Ddpm,
        SamplerKind::Ddim,
        SamplerKind::Euler,
        SamplerKind::EulerAncestral,
        SamplerKind::Heun,
        SamplerKind::DpmSolverPP,
        SamplerKind::DpmSolverPP3M,
        SamplerKind::DpmSolverSde,
        SamplerKind::UniPc,
        SamplerKind::Pndm,
        SamplerKind::Deis,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Ddpm => "ddpm",
            SamplerKind::Ddim => "ddim",
            SamplerKind::Euler => "euler",
            SamplerKind::EulerAncestral => "euler-a",
            SamplerKind::Heun => "heun",
            SamplerKind::DpmSolverPP => "dpm-solver++",
            SamplerKind::DpmSolverPP3M => "dpm++3m",
            SamplerKind::DpmSolverSde => "dpm++2m-sde",
            SamplerKind::UniPc => "unipc",
            SamplerKind::Pndm => "pndm",
            SamplerKind::Deis => "deis",
        }
    }

    /// Every sampler name, for error messages.
    pub fn names() -> String {
        Self::ALL.map(|k| k.name()).join(", ")
    }

    /// Parse a sampler name (our names or diffusers' class names, any case).
    pub fn parse(name: &str) -> Result<Self> {
        <Self as clap::ValueEnum>::from_str(name.trim(), true).map_err(|_| {
            Error::invalid(format!(
                "unknown sampler '{name}' (expected one of {}, or a diffusers scheduler class name)",
                Self::names()
            ))
        })
    }

    /// diffusers' scheduler class for this sampler.
    pub fn diffusers_class(self) -> &'static str {
        match self {
            SamplerKind::Ddpm => "DDPMScheduler",
            SamplerKind::Ddim => "DDIMScheduler",
            SamplerKind::Euler => "EulerDiscreteScheduler",
            SamplerKind::EulerAncestral => "EulerAncestralDiscreteScheduler",
            SamplerKind::Heun => "HeunDiscreteScheduler",
            SamplerKind::DpmSolverPP | SamplerKind::DpmSolverPP3M | SamplerKind::DpmSolverSde => {
                "DPMSolverMultistepScheduler"
            }
            SamplerKind::UniPc => "UniPCMultistepScheduler",
            SamplerKind::Pndm => "PNDMScheduler",
            SamplerKind::Deis => "DEISMultistepScheduler",
        }
    }

    /// The sampler a diffusers scheduler config names (`_class_name`, and for
    /// DPMSolverMultistepScheduler its order and algorithm), if we have it.
    pub fn from_class(
        class: &str,
        solver_order: Option<usize>,
        algorithm: Option<&str>,
    ) -> Option<Self> {
        let k = match class {
            "DPMSolverMultistepScheduler" => match (algorithm, solver_order) {
                (Some("sde-dpmsolver++"), _) => SamplerKind::DpmSolverSde,
                (_, Some(3)) => SamplerKind::DpmSolverPP3M,
                _ => SamplerKind::DpmSolverPP,
            },
            c => *Self::ALL
                .iter()
                .find(|k| k.diffusers_class() == c && **k != SamplerKind::DpmSolverPP)?,
        };
        Some(k)
    }

    /// The step count used when none is given.
    pub fn default_steps(self) -> usize {
        match self {
            SamplerKind::Ddpm => 1000,
            SamplerKind::Ddim | SamplerKind::Pndm => 50,
            SamplerKind::Euler | SamplerKind::EulerAncestral => 30,
            SamplerKind::Heun => 15,
            SamplerKind::DpmSolverPP
            | SamplerKind::DpmSolverPP3M
            | SamplerKind::DpmSolverSde
            | SamplerKind::Deis => 20,
            SamplerKind::UniPc => 15,
        }
    }

    /// Model evaluations for `steps` inference steps.
    pub fn evaluations(self, steps: usize) -> usize {
        match self {
            SamplerKind::Heun => (2 * steps).saturating_sub(1),
            SamplerKind::Pndm => steps + 1,
            _ => steps,
        }
    }

    /// Whether `--karras` applies (the sampler works on a sigma ladder diffusers can replace
    /// by Karras et al.'s).
    pub fn has_sigmas(self) -> bool {
        matches!(
            self,
            SamplerKind::Euler
                | SamplerKind::Heun
                | SamplerKind::DpmSolverPP
                | SamplerKind::DpmSolverPP3M
                | SamplerKind::DpmSolverSde
                | SamplerKind::UniPc
        )
    }

    /// Whether the sampler draws noise inside its steps.
    pub fn is_stochastic(self) -> bool {
        matches!(
            self,
            SamplerKind::Ddpm | SamplerKind::EulerAncestral | SamplerKind::DpmSolverSde
        )
    }

    /// The first line of the doc comment: when to use it (for `--help`).
    pub fn about(self) -> String {
        <Self as clap::ValueEnum>::to_possible_value(&self)
            .and_then(|p| p.get_help().map(|h| h.to_string()))
            .unwrap_or_default()
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
