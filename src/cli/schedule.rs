use super::ScheduleArgs;
use clap::Args;
use diffuse::commands::schedule::{self, Format, ScheduleRequest};
use diffuse::core::schedule::BetaSchedule;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ScheduleCmd {
    #[command(flatten)]
    sched: ScheduleArgs,
    /// table: a summary every 10% of T plus T-1; csv/json: every row, every column (with
    /// --at, that row only).
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Print one timestep's values (0-based).
    #[arg(long)]
    at: Option<usize>,
    /// Plot in the terminal, below the table. (`--plot FILE` is the older spelling of -o.)
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    plot: Option<PathBuf>,
    /// Write the figure (alpha_bar and log-SNR) to FILE: .png or .svg.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Overlay several schedules, e.g. linear,cosine,sigmoid (each with --timesteps T).
    #[arg(long, value_delimiter = ',', value_parser = super::parse_schedule, conflicts_with = "betas")]
    compare: Vec<BetaSchedule>,
}

pub fn run(c: ScheduleCmd) -> anyhow::Result<()> {
    let terminal = c.plot.as_deref() == Some(std::path::Path::new("-"));
    let output = match (c.output, c.plot.filter(|_| !terminal)) {
        (Some(_), Some(_)) => {
            return Err(diffuse::Error::invalid(
                "--plot FILE and --output FILE both name the figure; give one",
            )
            .into())
        }
        (o, p) => o.or(p),
    };
    let req = ScheduleRequest {
        schedule: c.sched.config()?,
        compare: c.compare,
        format: c.format,
        at: c.at,
        terminal_plot: terminal,
        output,
    };
    let report = schedule::run(&req)?;
    super::emit(&report.text)?;
    for p in &report.written {
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}
