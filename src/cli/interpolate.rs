use super::DeviceArgs;
use clap::Args;
use diffuse::commands::interpolate::{self, InterpolateRequest, DEFAULT_FRAMES};
use diffuse::commands::invert::{DEFAULT_INVERT_STEPS, DEFAULT_REFINE};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct InterpolateCmd {
    /// The first image (any size or channels).
    #[arg(value_name = "FROM")]
    from: PathBuf,
    /// The last image.
    #[arg(value_name = "TO")]
    to: PathBuf,
    /// A directory written by `diffuse train`, a diffusers model directory, or a hub id.
    #[arg(long)]
    model: String,
    /// Images in the walk, both ends included (2 to 64).
    #[arg(long, default_value_t = DEFAULT_FRAMES)]
    frames: usize,
    /// DDIM steps of the inversions and of each drawing.
    #[arg(long, default_value_t = DEFAULT_INVERT_STEPS)]
    steps: usize,
    /// Fixed-point iterations per inversion step, each one more model evaluation: they make
    /// the step the exact inverse of DDIM's step down (0: diffusers' DDIMInverseScheduler).
    #[arg(long, default_value_t = DEFAULT_REFINE)]
    refine: usize,
    /// Class-conditional models: the class to walk in [default: the null class].
    #[arg(long)]
    class: Option<String>,
    /// Classifier-free guidance scale [default: 1].
    #[arg(long, allow_negative_numbers = true)]
    guidance: Option<f64>,
    /// The strip, FROM to TO in one row.
    #[arg(short, long, value_name = "FILE", default_value = "interpolation.png")]
    output: PathBuf,
    /// The walk as a GIF, there and back.
    #[arg(long, value_name = "FILE", default_value = "interpolation.gif")]
    gif: PathBuf,
    #[command(flatten)]
    dev: DeviceArgs,
}

pub fn run(c: InterpolateCmd) -> anyhow::Result<()> {
    let req = InterpolateRequest {
        model: c.model,
        from: c.from,
        to: c.to,
        frames: c.frames,
        steps: c.steps,
        refine: c.refine,
        class: c.class,
        guidance: c.guidance.into_iter().collect(),
        output: c.output,
        gif: c.gif,
        progress: true,
    };
    let device = c.dev.device()?;
    super::emit_written(&interpolate::run(&req, &device)?)
}
