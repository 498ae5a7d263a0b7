use super::invert::EditArgs;
use super::DeviceArgs;
use clap::Args;
use diffuse::commands::interpolate::{self, InterpolateRequest, DEFAULT_FRAMES};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct InterpolateCmd {
    /// The first image (any size or channels).
    #[arg(value_name = "FROM")]
    from: PathBuf,
    /// The last image.
    #[arg(value_name = "TO")]
    to: PathBuf,
    /// Images in the walk, both ends included (2 to 64).
    #[arg(long, default_value_t = DEFAULT_FRAMES)]
    frames: usize,
    #[command(flatten)]
    edit: EditArgs,
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
        from: c.from,
        to: c.to,
        frames: c.frames,
        edit: c.edit.settings(),
        output: c.output,
        gif: c.gif,
        progress: true,
    };
    let device = c.dev.device()?;
    super::emit_written(&interpolate::run(&req, &device)?)
}
