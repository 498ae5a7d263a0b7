use super::ScheduleArgs;
use anyhow::Context;
use clap::{Args, ValueEnum};
use diffuse::schedule::{BetaSchedule, Schedule};
use diffuse::{plot, report};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Args, Debug)]
pub struct ScheduleCmd {
    #[command(flatten)]
    sched: ScheduleArgs,
    /// table: a summary every 10% of T plus T-1; csv/json: every row, every column.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Print one timestep's values.
    #[arg(long)]
    at: Option<usize>,
    /// Plot in the terminal, or write the figure to FILE (.png or .svg).
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    plot: Option<String>,
    /// Overlay several schedules, e.g. linear,cosine,sigmoid.
    #[arg(long, value_delimiter = ',', value_parser = super::parse_schedule)]
    compare: Vec<BetaSchedule>,
}

pub fn run(c: ScheduleCmd) -> anyhow::Result<()> {
    let kinds = if c.compare.is_empty() {
        vec![c.sched.schedule]
    } else {
        c.compare.clone()
    };
    let schedules = kinds
        .iter()
        .map(|k| Schedule::new(&c.sched.config_for(*k)?))
        .collect::<diffuse::Result<Vec<_>>>()?;
    if let Some(t) = c.at {
        for s in &schedules {
            s.check_t(t)?;
        }
    }
    let text = match (c.format, c.at) {
        (Format::Csv, _) => report::csv(&schedules),
        (Format::Json, _) => report::json(&schedules),
        (Format::Table, Some(t)) if schedules.len() == 1 => report::table(&schedules[0], &[t]),
        (Format::Table, at) => {
            let ts = at
                .map(|t| vec![t])
                .unwrap_or_else(|| schedules[0].summary_timesteps());
            if schedules.len() == 1 {
                report::table(&schedules[0], &ts)
            } else {
                report::compare_table(&schedules, &ts)
            }
        }
    };
    match c.plot.as_deref() {
        None => print!("{text}"),
        Some("-") => {
            print!(
                "{text}\n{}",
                plot::text_figure(&report::panels(&schedules), 72, 16)
            );
        }
        Some(file) => {
            let path = PathBuf::from(file);
            plot::write_figure(&path, "t (0-based)", &report::panels(&schedules))
                .with_context(|| "could not write the schedule plot".to_string())?;
            print!("{text}");
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}
