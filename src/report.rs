//! Schedule reports: the human summary table, CSV/JSON of every row, and figure panels.
use crate::plot::{Panel, Series};
use crate::schedule::{Row, Schedule};
use std::fmt::Write;

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

/// Every row with every derived column, full precision (Rust's shortest round-trip form).
pub fn csv(schedules: &[Schedule]) -> String {
    let mut out = String::from("schedule,");
    out.push_str(&Row::COLUMNS.join(","));
    out.push('\n');
    for s in schedules {
        let label = s.config.label();
        for r in s.rows() {
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
pub fn json(schedules: &[Schedule]) -> String {
    let items: Vec<serde_json::Value> = schedules
        .iter()
        .map(|s| {
            let rows: Vec<serde_json::Value> = s
                .rows()
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
