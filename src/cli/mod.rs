//! Command-line front end: clap definitions and dispatch. No logic lives here.
use clap::{Args, Parser, Subcommand};
use diffuse::schedule::{BetaSchedule, ScheduleConfig};
use std::path::PathBuf;

mod data;
mod inspect;
mod noise;
mod sample;
mod schedule;
mod train;

#[derive(Parser, Debug)]
#[command(
    name = "diffuse",
    version,
    about = "Denoising diffusion models on Candle: schedules, forward noising, training and sampling"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print and plot noise schedules (beta, alpha_bar, sqrt coefficients, SNR).
    Schedule(schedule::ScheduleCmd),
    /// Jump an image to timestep t in one step: x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) eps.
    Noise(noise::NoiseCmd),
    /// Show a UNet2DModel: config, parameters per block, total and storage size.
    Inspect(inspect::InspectCmd),
    /// Inspect training data (mnist, fashion-mnist, cifar10 or a folder of images).
    Data(data::DataCmd),
    /// Train a UNet denoiser (epsilon, v or x0 prediction); writes a diffusers-layout model.
    Train(Box<train::TrainCmd>),
    /// Run the learned reverse process (DDPM, DDIM, DPM-Solver++) and write images.
    Sample(Box<sample::SampleCmd>),
}

/// Schedule flags shared by every subcommand that needs a schedule.
#[derive(Args, Debug, Clone)]
pub struct ScheduleArgs {
    /// Beta schedule (diffusers names are accepted too, e.g. squaredcos_cap_v2).
    #[arg(long, default_value = "linear", value_parser = parse_schedule)]
    pub schedule: BetaSchedule,
    /// Number of diffusion timesteps T (t runs 0..T-1).
    #[arg(long, default_value_t = 1000)]
    pub timesteps: usize,
    /// First beta (default: the schedule's diffusers default).
    #[arg(long)]
    pub beta_start: Option<f64>,
    /// Last beta (default: the schedule's diffusers default).
    #[arg(long)]
    pub beta_end: Option<f64>,
    /// Rescale to zero terminal SNR (Lin et al. 2023), as diffusers' rescale_betas_zero_snr.
    #[arg(long)]
    pub zero_snr: bool,
    /// A custom beta table: one beta per line, or CSV with beta in the last column.
    #[arg(long, value_name = "FILE")]
    pub betas: Option<PathBuf>,
}

fn parse_schedule(s: &str) -> Result<BetaSchedule, String> {
    BetaSchedule::parse(s).map_err(|e| e.to_string())
}

impl ScheduleArgs {
    pub fn config(&self) -> diffuse::Result<ScheduleConfig> {
        self.config_for(self.schedule)
    }

    pub fn config_for(&self, schedule: BetaSchedule) -> diffuse::Result<ScheduleConfig> {
        diffuse::schedule::config_with_betas_file(
            ScheduleConfig {
                schedule,
                timesteps: self.timesteps,
                beta_start: self.beta_start,
                beta_end: self.beta_end,
                zero_snr: self.zero_snr,
                ..ScheduleConfig::default()
            },
            self.betas.as_ref(),
        )
    }
}

/// `--device` flag shared by computing subcommands.
#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// auto | cpu | cuda[:N] | metal[:N]; auto picks CUDA, then Metal, then CPU.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

impl DeviceArgs {
    pub fn device(&self) -> diffuse::Result<candle_core::Device> {
        let d = diffuse::device::parse_device(&self.device)?;
        tracing::info!(device = ?d, "using device");
        Ok(d)
    }
}

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,hf_hub=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Schedule(c) => schedule::run(c),
        Command::Noise(c) => noise::run(c),
        Command::Inspect(c) => inspect::run(c),
        Command::Data(c) => data::run(c),
        Command::Train(c) => train::run(*c),
        Command::Sample(c) => sample::run(*c),
    }
}
