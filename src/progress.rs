//! Progress of long work: an indicatif bar when stderr is a terminal; otherwise (CI logs,
//! `nohup`, `| tee`) one log line every few seconds through tracing at info level, target
//! `diffuse::progress`, which the binary's default log filter shows.
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// The tracing target of progress lines.
pub const TARGET: &str = "diffuse::progress";

/// Seconds between log lines when not on a terminal (`DIFFUSE_LOG_SECS` overrides; 10 s
/// keeps a CI log readable and still shows a stuck run within seconds).
fn interval() -> Duration {
    let secs = std::env::var("DIFFUSE_LOG_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(10.0);
    Duration::from_secs_f64(secs)
}

/// Human duration: 42s, 3m 05s, 1h 02m.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h {:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

enum Sink {
    Bar(ProgressBar),
    Log { last: Instant, every: Duration },
    Hidden,
}

/// Progress over `total` units of work (`unit`: "step", ...).
pub struct Progress {
    sink: Sink,
    what: String,
    unit: &'static str,
    total: u64,
    pos: u64,
    start_pos: u64,
    start: Instant,
    msg: String,
}

impl Progress {
    /// `show` false: nothing at all (library callers, tests).
    pub fn new(what: &str, unit: &'static str, total: u64, pos: u64, show: bool) -> Self {
        let sink = if !show {
            Sink::Hidden
        } else if std::io::stderr().is_terminal() {
            let pb = ProgressBar::new(total);
            pb.set_style(
                ProgressStyle::with_template(&format!(
                    "{{elapsed_precise}} [{{bar:30}}] {unit} {{pos}}/{{len}} {{msg}} ({{per_sec}}, ETA {{eta}})"
                ))
                .expect("valid template")
                .progress_chars("=> "),
            );
            pb.set_position(pos);
            Sink::Bar(pb)
        } else {
            Sink::Log {
                last: Instant::now(),
                every: interval(),
            }
        };
        Self {
            sink,
            what: what.to_string(),
            unit,
            total,
            pos,
            start_pos: pos,
            start: Instant::now(),
            msg: String::new(),
        }
    }

    /// Units done per second since this progress started.
    pub fn rate(&self) -> f64 {
        (self.pos - self.start_pos) as f64 / self.start.elapsed().as_secs_f64().max(1e-9)
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    fn line(&self) -> String {
        let rate = self.rate();
        let left = self.total.saturating_sub(self.pos);
        let eta = if rate > 0.0 {
            duration(Duration::from_secs_f64(left as f64 / rate))
        } else {
            "?".into()
        };
        let pct = 100.0 * self.pos as f64 / self.total.max(1) as f64;
        let msg = if self.msg.is_empty() {
            String::new()
        } else {
            format!(", {}", self.msg)
        };
        format!(
            "{}: {} {}/{} ({pct:.0}%){msg}, {rate:.2} {}s/s, elapsed {}, ETA {eta}",
            self.what,
            self.unit,
            self.pos,
            self.total,
            self.unit,
            duration(self.elapsed())
        )
    }

    pub fn inc(&mut self, n: u64) {
        self.pos += n;
        match &mut self.sink {
            Sink::Bar(pb) => pb.inc(n),
            Sink::Log { last, every } => {
                if last.elapsed() >= *every && self.pos < self.total {
                    *last = Instant::now();
                    tracing::info!(target: TARGET, "{}", self.line());
                }
            }
            Sink::Hidden => {}
        }
    }

    pub fn set_message(&mut self, msg: String) {
        if let Sink::Bar(pb) = &self.sink {
            pb.set_message(msg.clone());
        }
        self.msg = msg;
    }

    /// Say something (an info line) without tearing the bar.
    pub fn say(&self, text: &str) {
        match &self.sink {
            Sink::Bar(pb) => pb.suspend(|| eprintln!("{text}")),
            Sink::Log { .. } => tracing::info!(target: TARGET, "{}: {text}", self.what),
            Sink::Hidden => {}
        }
    }

    /// Work done: clear the bar (the caller prints its summary).
    pub fn finish(&self) {
        if let Sink::Bar(pb) = &self.sink {
            pb.finish_and_clear();
        }
    }

    /// Work stopped early: leave the bar where it stopped.
    pub fn abandon(&self) {
        if let Sink::Bar(pb) = &self.sink {
            pb.abandon();
        }
    }
}
