//! Reverse-process samplers matching diffusers' schedulers: DDPM, DDIM, Euler, Euler
//! ancestral, Heun, DPM-Solver++ (2M, 3M, 2M SDE), UniPC, PNDM (PLMS) and DEIS, for epsilon,
//! v and (where diffusers has it) sample prediction. A sampler is a `Scheduler` value built
//! from a diffusers scheduler config (`build`) that can be stepped by hand or run whole
//! (`run`, `sample`); in-step noise comes through the `NoiseSource` seam.
pub mod config;
pub mod ddim;
pub mod ddpm;
pub mod deis;
pub mod dpm_solver;
pub mod euler;
pub mod guidance;
pub mod heun;
pub mod inversion;
pub mod noise;
pub mod pndm;
pub mod predict;
pub mod repaint;
pub mod sampling;
pub mod scheduler;
pub mod sigmas;
pub mod slerp;
pub mod timesteps;
pub mod types;
pub mod unipc;

pub use config::SchedulerConfig;
pub use dpm_solver::SigmaArithmetic;
pub use noise::{NoiseSource, Recorded};
pub use sampling::{run, run_from, sample, Model, OnStep, StepInfo};
pub use scheduler::{
    build, build_with, build_with_arithmetic, img2img_start, SamplerConfig, Scheduler,
};
pub use types::{PredictionType, SamplerKind, StepOutput, TimestepSpacing, VarianceType};
