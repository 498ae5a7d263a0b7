use super::{DeviceArgs, ScheduleArgs};
use clap::Args;
use diffuse::forward::ForwardProcess;
use diffuse::noising::{self, NoiseRequest};
use diffuse::schedule::Schedule;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct NoiseCmd {
    /// Input image (PNG or JPEG, gray or RGB, any size).
    input: PathBuf,
    /// Timestep(s), 0-based: one gives an image, a list (0,250,500) a labelled strip.
    #[arg(long = "t", value_delimiter = ',', conflicts_with = "steps")]
    t: Vec<usize>,
    /// Show N timesteps evenly spaced over [0, T-1] as a strip.
    #[arg(long)]
    steps: Option<usize>,
    /// Resize (shorter side, then centre crop) to N x N.
    #[arg(long)]
    size: Option<u32>,
    /// Output PNG (default: beside the input, e.g. img_t500.png or img_strip.png).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Also write the forward process as an animated GIF.
    #[arg(long, value_name = "FILE")]
    gif: Option<PathBuf>,
    /// Frames in the GIF.
    #[arg(long, default_value_t = 40)]
    gif_frames: usize,
    /// Noise seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write x0, eps, t and x_t as safetensors.
    #[arg(long, value_name = "FILE")]
    save_tensors: Option<PathBuf>,
    #[command(flatten)]
    sched: ScheduleArgs,
    #[command(flatten)]
    dev: DeviceArgs,
}

pub fn run(c: NoiseCmd) -> anyhow::Result<()> {
    let schedule = Schedule::new(&c.sched.config()?)?;
    let timesteps = match (c.steps, c.t.is_empty()) {
        (Some(0), _) => return Err(diffuse::Error::invalid("--steps must be at least 1").into()),
        (Some(n), _) => noising::spaced_timesteps(n, schedule.len() - 1),
        (None, false) => c.t.clone(),
        (None, true) => vec![schedule.len() / 2],
    };
    let device = c.dev.device()?;
    let fp = ForwardProcess::new(schedule, &device)?;
    let req = NoiseRequest {
        input: c.input,
        timesteps,
        size: c.size,
        seed: c.seed,
        output: c.output,
        gif: c.gif,
        gif_frames: c.gif_frames,
        save_tensors: c.save_tensors,
    };
    for p in noising::run(&req, &fp, &device)? {
        println!("wrote {}", p.display());
    }
    Ok(())
}
