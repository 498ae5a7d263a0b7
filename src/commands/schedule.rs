//! `diffuse schedule`: the human summary table, CSV/JSON of every row (or one), and the
//! figure of alpha_bar and log-SNR, for one schedule or several compared.
use crate::core::schedule::{BetaSchedule, Row, Schedule, ScheduleConfig};
use crate::error::{Error, Result};
use crate::io::plot::{self, Panel, Series};
use serde::{Deserialize, Serialize};
use std::fmt::Write;
use std::path::PathBuf;

/// How the table is printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A summary every 10% of T plus T-1 (or the `--at` row).
    #[default]
    Table,
    /// Every row (or the `--at` row), every column.
    Csv,
    /// Same as csv, as JSON.
    Json,
}

/// What to print and plot.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScheduleRequest {
    pub schedule: ScheduleConfig,
    /// Overlay these schedules (each with `schedule`'s T and beta range) instead of one.
    pub compare: Vec<BetaSchedule>,
    pub format: Format,
    /// Only this timestep's row.
    pub at: Option<usize>,
    /// Append a text plot to the printed table.
    pub terminal_plot: bool,
    /// Write the figure here (.png or .svg).
    pub output: Option<PathBuf>,
}

/// What the command produced: text for stdout, and the figure it wrote.
pub struct ScheduleReport {
    pub text: String,
    pub written: Vec<PathBuf>,
}

/// Build the schedules, check every value, and render the report; the figure (if any) is
/// written last, so a bad request writes nothing.
pub fn run(req: &ScheduleRequest) -> Result<ScheduleReport> {
    if !req.compare.is_empty() && req.schedule.betas.is_some() {
        return Err(Error::invalid(
            "--compare and --betas cannot be combined: a beta table is one schedule",
        ));
    }
    if let Some(p) = &req.output {
        plot::check_figure_path(p)?;
        crate::io::output::check_outputs(&[p], &[], &[])?;
    }
    let configs: Vec<ScheduleConfig> = if req.compare.is_empty() {
        vec![req.schedule.clone()]
    } else {
        req.compare
            .iter()
            .map(|k| ScheduleConfig {
                schedule: *k,
                ..req.schedule.clone()
            })
            .collect()
    };
    let schedules = configs
        .iter()
        .map(Schedule::new)
        .collect::<Result<Vec<_>>>()?;
    for s in &schedules {
        if let Some(t) = req.at {
            s.check_t(t)?;
        }
        s.check_finite()?;
    }
    let rows = |s: &Schedule| -> Vec<usize> {
        match req.at {
            Some(t) => vec![t],
            None => (0..s.len()).collect(),
        }
    };
    let mut text = match req.format {
        Format::Csv => csv(&schedules, &rows),
        Format::Json => json(&schedules, &rows),
        Format::Table => {
            let ts = req
                .at
                .map(|t| vec![t])
                .unwrap_or_else(|| schedules[0].summary_timesteps());
            if schedules.len() == 1 {
                table(&schedules[0], &ts)
            } else {
                compare_table(&schedules, &ts)
            }
        }
    };
    if req.terminal_plot {
        text.push('\n');
        text.push_str(&plot::text_figure(&panels(&schedules), 72, 16));
    }
    let mut written = Vec::new();
    if let Some(p) = &req.output {
        plot::write_figure(p, "t (0-based)", &panels(&schedules))?;
        written.push(p.clone());
    }
    Ok(ScheduleReport { text, written })
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 || v.is_infinite() || v.is_nan() {
        format!("{v}")
    } else if v.abs() >= 1e-3 && v.abs() < 1e4 {
        format!("{v:.6}")
    } else {
        format!("{v:.4e}")
    }
}

/// A readable table of the given rows (one schedule).
pub fn table(schedule: &Schedule, ts: &[usize]) -> String {
    let cols = Row::COLUMNS;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "schedule {} (T = {}, t 0-based, alpha_bar[t] = prod_{{s<=t}} (1 - beta_s))",
        schedule.config.label(),
        schedule.len()
    );
    let _ = writeln!(
        out,
        "{:>6} {}",
        cols[0],
        cols[1..]
            .iter()
            .map(|c| format!("{c:>13}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for &t in ts {
        let r = schedule.row(t);
        let v = r.values();
        let _ = writeln!(
            out,
            "{:>6} {}",
            t,
            v[1..]
                .iter()
                .map(|x| format!("{:>13}", fmt_num(*x)))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    out
}

/// One table comparing schedules at the same timesteps (alpha_bar and log-SNR).
pub fn compare_table(schedules: &[Schedule], ts: &[usize]) -> String {
    let mut out = String::new();
    let mut header = format!("{:>6}", "t");
    for s in schedules {
        let l = s.config.label();
        let _ = write!(
            header,
            " {:>14} {:>14}",
            format!("abar[{l}]"),
            format!("logsnr[{l}]")
        );
    }
    let _ = writeln!(out, "{header}");
    for &t in ts {
        let _ = write!(out, "{t:>6}");
        for s in schedules {
            if t < s.len() {
                let r = s.row(t);
                let _ = write!(
                    out,
                    " {:>14} {:>14}",
                    fmt_num(r.alpha_bar),
                    fmt_num(r.log_snr)
                );
            } else {
                let _ = write!(out, " {:>14} {:>14}", "-", "-");
            }
        }
        let _ = writeln!(out);
    }
    out
}

/// The given rows (all, or one) with every derived column, full precision (Rust's shortest
/// round-trip form).
pub fn csv(schedules: &[Schedule], rows: &dyn Fn(&Schedule) -> Vec<usize>) -> String {
    let mut out = String::from("schedule,");
    out.push_str(&Row::COLUMNS.join(","));
    out.push('\n');
    for s in schedules {
        let label = s.config.label();
        for r in rows(s).into_iter().map(|t| s.row(t)) {
            let v = r.values();
            let _ = write!(out, "{label},{}", r.t);
            for x in &v[1..] {
                let _ = write!(out, ",{x:?}");
            }
            out.push('\n');
        }
    }
    out
}

/// JSON: a list of `{schedule, config, rows: [...]}`. Non-finite values (log-SNR of a
/// zero-SNR endpoint) become null, as JSON has no infinity.
pub fn json(schedules: &[Schedule], rows: &dyn Fn(&Schedule) -> Vec<usize>) -> String {
    let items: Vec<serde_json::Value> = schedules
        .iter()
        .map(|s| {
            let rows: Vec<serde_json::Value> = rows(s)
                .into_iter()
                .map(|t| s.row(t))
                .map(|r| {
                    let mut m = serde_json::Map::new();
                    for (c, v) in Row::COLUMNS.iter().zip(r.values()) {
                        let val = if *c == "t" {
                            serde_json::json!(r.t)
                        } else {
                            serde_json::Number::from_f64(v)
                                .map(serde_json::Value::Number)
                                .unwrap_or(serde_json::Value::Null)
                        };
                        m.insert(c.to_string(), val);
                    }
                    serde_json::Value::Object(m)
                })
                .collect();
            serde_json::json!({
                "schedule": s.config.label(),
                "config": s.config,
                "rows": rows,
            })
        })
        .collect();
    serde_json::to_string_pretty(&items).unwrap_or_default()
}

fn series(s: &Schedule, name: String, f: impl Fn(&Row) -> f64) -> Series {
    Series {
        name,
        points: s.rows().map(|r| (r.t as f64, f(&r))).collect(),
    }
}

/// Figure panels: for one schedule, its coefficients and log-SNR; for several, alpha_bar and
/// log-SNR of each overlaid.
pub fn panels(schedules: &[Schedule]) -> Vec<Panel> {
    if let [s] = schedules {
        let l = s.config.label();
        vec![
            Panel {
                title: format!("{l}: coefficients"),
                y_label: "value".into(),
                series: vec![
                    series(s, "alpha_bar".into(), |r| r.alpha_bar),
                    series(s, "sqrt(alpha_bar)".into(), |r| r.sqrt_alpha_bar),
                    series(s, "sqrt(1-alpha_bar)".into(), |r| {
                        r.sqrt_one_minus_alpha_bar
                    }),
                ],
            },
            Panel {
                title: format!("{l}: log-SNR"),
                y_label: "log(abar/(1-abar))".into(),
                series: vec![series(s, "log_snr".into(), |r| r.log_snr)],
            },
        ]
    } else {
        vec![
            Panel {
                title: "alpha_bar".into(),
                y_label: "alpha_bar".into(),
                series: schedules
                    .iter()
                    .map(|s| series(s, s.config.label(), |r| r.alpha_bar))
                    .collect(),
            },
            Panel {
                title: "log-SNR".into(),
                y_label: "log(abar/(1-abar))".into(),
                series: schedules
                    .iter()
                    .map(|s| series(s, s.config.label(), |r| r.log_snr))
                    .collect(),
            },
        ]
    }
}
