//! Reverse-process samplers matching diffusers' schedulers: DDPM (ancestral, full or
//! respaced), DDIM (eta in [0, 1]) and DPM-Solver++ 2M, for epsilon, v and sample
//! prediction. Step functions take the alpha_bar values they need as arguments, so they
//! can be driven by any table (ours in f64, or diffusers' float32 one).
pub mod config;
pub mod ddim;
pub mod ddpm;
pub mod dpm_solver;
pub mod predict;
pub mod sampling;
pub mod scheduler;
pub mod timesteps;
pub mod types;

pub use config::SchedulerConfig;
pub use dpm_solver::SigmaArithmetic;
pub use sampling::{run, sample, Model, OnStep, StepInfo};
pub use scheduler::{build, build_with, build_with_arithmetic, SamplerConfig, Scheduler};
pub use types::{PredictionType, SamplerKind, StepOutput, TimestepSpacing, VarianceType};
