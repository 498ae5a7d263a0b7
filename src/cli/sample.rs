use super::DeviceArgs;
use clap::Args;
use diffuse::sample::{self, SampleRequest};
use diffuse::sampler::{PredictionType, SamplerKind, TimestepSpacing};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct SampleCmd {
    /// A directory written by `diffuse train`, a diffusers model directory, or a hub id
    /// (e.g. google/ddpm-cifar10-32) from the hub cache.
    #[arg(long)]
    model: String,
    #[arg(long, value_enum, default_value = "ddim")]
    sampler: SamplerKind,
    /// Inference steps (default: T for ddpm, 50 for ddim, 20 for dpm-solver++).
    #[arg(long)]
    steps: Option<usize>,
    /// DDIM noise weight in [0, 1].
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    /// Override the scheduler config's timestep spacing.
    #[arg(long, value_enum)]
    timestep_spacing: Option<TimestepSpacing>,
    /// Override the scheduler config's prediction type.
    #[arg(long, value_enum)]
    prediction: Option<PredictionType>,
    /// Clip predicted x0 to [-1, 1] (overrides the scheduler config).
    #[arg(long)]
    clip_sample: bool,
    #[arg(long, default_value_t = 64)]
    num: usize,
    /// Images per forward pass (default: all of --num).
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(short, long, default_value = "samples.png")]
    output: PathBuf,
    /// Animate the trajectory of the grid.
    #[arg(long, value_name = "FILE")]
    gif: Option<PathBuf>,
    #[arg(long, default_value_t = 25)]
    gif_frames: usize,
    /// Write the final samples as safetensors.
    #[arg(long, value_name = "FILE")]
    save_tensors: Option<PathBuf>,
    #[command(flatten)]
    dev: DeviceArgs,
}

pub fn run(c: SampleCmd) -> anyhow::Result<()> {
    let req = SampleRequest {
        model: c.model,
        kind: c.sampler,
        steps: c.steps,
        eta: c.eta,
        spacing: c.timestep_spacing,
        clip_sample: c.clip_sample.then_some(true),
        prediction: c.prediction,
        num: c.num,
        batch_size: c.batch_size,
        seed: c.seed,
        output: c.output,
        gif: c.gif,
        gif_frames: c.gif_frames,
        save_tensors: c.save_tensors,
        progress: true,
    };
    let device = c.dev.device()?;
    for p in sample::run(&req, &device)? {
        println!("wrote {}", p.display());
    }
    Ok(())
}
