use super::ScheduleArgs;
use clap::Args;
use diffuse::commands::explore::{self, ExploreRequest};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ExploreCmd {
    /// The image to noise (any PNG/JPEG; default: a bundled sample picture).
    #[arg(value_name = "IMAGE")]
    image: Option<PathBuf>,
    /// The schedule the page opens with (the page's controls change it).
    #[command(flatten)]
    schedule: ScheduleArgs,
    /// The t the page opens at [default: T/2].
    #[arg(long)]
    t: Option<usize>,
    /// Resize (shorter side) and centre crop the image to N x N (at most 256).
    #[arg(long, default_value_t = 64)]
    size: u32,
    /// Seed of the one noise draw (the draw `diffuse noise --seed` makes for the same image).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The page: one self-contained HTML file.
    #[arg(short, long, value_name = "FILE", default_value = "explore.html")]
    output: PathBuf,
}

pub fn run(c: ExploreCmd) -> anyhow::Result<()> {
    let req = ExploreRequest {
        image: c.image,
        size: c.size,
        seed: c.seed,
        schedule: c.schedule.config()?,
        t: c.t,
        output: c.output,
    };
    super::emit_written(&explore::run(&req)?)
}
