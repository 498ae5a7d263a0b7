//! Command-line front end: clap definitions, translation into the commands' requests, and
//! printing. No logic lives here.
//!
//! One flag name per meaning across subcommands: `-o/--output` (a file, or train's output
//! directory), `-n/--num` (images), `--steps` (sampler steps), `--train-steps`
//! (optimisation steps), `--panels` (noise strip panels), `--seed`, `--hflip/--no-hflip`,
//! `--data-dir`, `--device`. Older spellings stay as hidden aliases.
use clap::{Args, Parser, Subcommand};
use diffuse::core::schedule::{BetaSchedule, ScheduleConfig};
use std::io::Write;
use std::path::PathBuf;

mod data;
mod eval;
mod explore;
mod inspect;
mod interpolate;
mod invert;
mod noise;
mod sample;
mod schedule;
mod train;

#[derive(Parser, Debug)]
#[command(
    name = "diffuse",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("DIFFUSE_BACKENDS"), ")"),
    about = "Denoising diffusion models on Candle: schedules, forward noising, training and sampling",
    after_help = "Relative paths (defaults such as data/ and models/mnist included) are relative to the current directory."
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
    /// Run the learned reverse process (DDPM, DDIM, Euler, Heun, DPM-Solver++, UniPC, ...)
    /// and write images.
    Sample(Box<sample::SampleCmd>),
    /// DDIM inversion: the latents x_T that DDIM maps back to the given images, and the
    /// reconstruction.
    Invert(invert::InvertCmd),
    /// Walk between two images: invert both, interpolate their latents on the sphere, draw
    /// each point; writes a strip and a GIF.
    Interpolate(interpolate::InterpolateCmd),
    /// Write an interactive page (one self-contained HTML file): move t along a schedule and
    /// watch alpha_bar, the coefficients, SNR and an image noised with one fixed draw.
    Explore(explore::ExploreCmd),
    /// Score saved digit samples: FID and KID in a digit classifier's feature space, and the
    /// share of each predicted class.
    Eval(eval::EvalCmd),
}

/// Schedule flags shared by every subcommand that needs a schedule.
#[derive(Args, Debug, Clone)]
pub struct ScheduleArgs {
    /// Beta schedule: linear, scaled-linear, cosine, sigmoid, quadratic (diffusers names such
    /// as squaredcos_cap_v2 are accepted too).
    #[arg(long, default_value = "linear", value_parser = parse_schedule)]
    pub schedule: BetaSchedule,
    /// Number of diffusion timesteps T (t runs 0..T-1; at most 100000).
    #[arg(long, default_value_t = 1000)]
    pub timesteps: usize,
    /// First beta (default: the schedule's diffusers default).
    #[arg(long, allow_negative_numbers = true)]
    pub beta_start: Option<f64>,
    /// Last beta (default: the schedule's diffusers default).
    #[arg(long, allow_negative_numbers = true)]
    pub beta_end: Option<f64>,
    /// Rescale to zero terminal SNR (Lin et al. 2023), as diffusers' rescale_betas_zero_snr.
    #[arg(long)]
    pub zero_snr: bool,
    /// A custom beta table: one beta per line, or CSV with beta in the last column (it
    /// replaces --schedule, --timesteps, --beta-start and --beta-end, so those conflict).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["schedule", "timesteps", "beta_start", "beta_end"]
    )]
    pub betas: Option<PathBuf>,
}

fn parse_schedule(s: &str) -> Result<BetaSchedule, String> {
    BetaSchedule::parse(s).map_err(|e| e.to_string())
}

impl ScheduleArgs {
    pub fn config(&self) -> diffuse::Result<ScheduleConfig> {
        diffuse::core::schedule::config_with_betas_file(
            ScheduleConfig {
                schedule: self.schedule,
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

/// `--hflip` / `--no-hflip`, shared by the subcommands that read training data. `--hflip
/// true|false` (the old spelling) still works.
#[derive(Args, Debug, Clone)]
pub struct FlipArgs {
    /// Random horizontal flips (default: on for cifar10 and folders, off for digits).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", overrides_with = "no_hflip")]
    pub hflip: Option<bool>,
    /// No random horizontal flips.
    #[arg(long, overrides_with = "hflip")]
    pub no_hflip: bool,
}

impl FlipArgs {
    pub fn value(&self) -> Option<bool> {
        if self.no_hflip {
            Some(false)
        } else {
            self.hflip
        }
    }
}

/// The default local data directory, relative to the current directory.
pub const DEFAULT_DATA_DIR: &str = "data";

pub fn init_logging() {
    // Warnings, and the progress lines long commands log when stderr is not a terminal.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "warn,{}=info,hf_hub=off",
            diffuse::progress::TARGET
        ))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: logs in files and CI stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Print to stdout; a reader that went away (`diffuse schedule --format csv | head`) ends the
/// program quietly with exit 0, as coreutils do.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => Ok(r?),
    }
}

/// Print the files a command wrote, one `wrote PATH` line each.
pub fn emit_written(paths: &[PathBuf]) -> anyhow::Result<()> {
    let text: String = paths
        .iter()
        .map(|p| format!("wrote {}\n", p.display()))
        .collect();
    emit(&text)
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Schedule(c) => schedule::run(c),
        Command::Noise(c) => noise::run(c),
        Command::Inspect(c) => inspect::run(c),
        Command::Data(c) => data::run(c),
        Command::Train(c) => train::run(*c),
        Command::Sample(c) => sample::run(*c),
        Command::Invert(c) => invert::run(c),
        Command::Interpolate(c) => interpolate::run(c),
        Command::Eval(c) => eval::run(c),
        Command::Explore(c) => explore::run(c),
    }
}
