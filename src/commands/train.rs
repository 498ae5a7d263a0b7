//! `diffuse train`: run (or resume) training with the output-directory policy of
//! [`crate::train::Start`], and say in one line how it ended.
use crate::error::Result;
use crate::progress::duration;
use crate::train::{self, Outcome, Start, TrainConfig};
use candle_core::Device;
use std::time::Instant;

/// How a command-line run ended, with the summary line to print.
pub struct TrainReport {
    pub outcome: Outcome,
    pub summary: String,
}

/// Train with Ctrl-C handling; the summary names steps, final loss, time and the model.
pub fn run(cfg: &TrainConfig, start: Start, device: &Device) -> Result<TrainReport> {
    let flag = train::interrupt_flag();
    let t0 = Instant::now();
    let outcome = train::train(cfg, device, start, &flag)?;
    let took = duration(t0.elapsed());
    let out = cfg.out.display();
    let summary = match &outcome {
        Outcome::Finished { step, loss } => {
            format!("trained to step {step} in {took}, final loss {loss:.4}; model in {out}")
        }
        Outcome::Interrupted { step } => format!(
            "interrupted at step {step} after {took}; checkpoint written to {out} (continue with --resume)"
        ),
    };
    Ok(TrainReport { outcome, summary })
}
