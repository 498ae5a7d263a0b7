use super::{DeviceArgs, ScheduleArgs};
use clap::Args;
use diffuse::commands::noise::{self, NoiseRequest};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct NoiseCmd {
    /// Input image (PNG or JPEG, gray or RGB, any size).
    input: PathBuf,
    /// Timestep(s), 0-based: one gives an image, a list (0,250,500) a labelled strip
    /// [default: T/2, i.e. 500 for T = 1000].
    #[arg(long = "t", value_delimiter = ',', conflicts_with = "panels")]
    t: Vec<usize>,
    /// Show N timesteps evenly spaced over [0, T-1] as a labelled strip (at most 100).
    #[arg(long, alias = "steps", value_name = "N")]
    panels: Option<usize>,
    /// Resize (shorter side, then centre crop) to N x N (at most 4096).
    #[arg(long, value_name = "N")]
    size: Option<u32>,
    /// Output PNG [default: beside the input, e.g. img_t500.png or img_strip.png].
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Also write the forward process over [0, T-1] as an animated GIF.
    #[arg(long, value_name = "FILE")]
    gif: Option<PathBuf>,
    /// Frames in the GIF (at most 1000).
    #[arg(long, default_value_t = 40, requires = "gif")]
    gif_frames: usize,
    /// Noise seed (one draw shared by every panel and frame).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write x0, eps, t and x_t as safetensors.
    #[arg(long, value_name = "FILE")]
    save_tensors: Option<PathBuf>,
    #[command(flatten)]
    sched: ScheduleArgs,
    #[command(flatten)]
    dev: DeviceArgs,
}

pub fn run(c: NoiseCmd) -> anyhow::Result<()> {
    let req = NoiseRequest {
        input: c.input,
        timesteps: c.t,
        panels: c.panels,
        schedule: c.sched.config()?,
        size: c.size,
        seed: c.seed,
        output: c.output,
        gif: c.gif,
        gif_frames: c.gif_frames,
        save_tensors: c.save_tensors,
    };
    let device = c.dev.device()?;
    super::emit_written(&noise::run(&req, &device)?)
}
