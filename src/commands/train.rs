//! `diffuse train`: run (or resume) training with the output-directory policy of
//! [`crate::train::Start`], and say in one line how it ended.
use crate::error::{Error, Result};
use crate::progress::duration;
use crate::train::{self, Outcome, Start, TrainConfig};
use candle_core::Device;
use std::time::Instant;

/// How a command-line run ended, with the summary line to print.
pub struct TrainReport {
    pub outcome: Outcome,
    /// Empty on ranks other than 0 of a multi-process run (rank 0 speaks for the job).
    pub summary: String,
}

/// Train with Ctrl-C handling; the summary names steps, final loss, time and the model.
pub fn run(cfg: &TrainConfig, start: Start, device: &Device) -> Result<TrainReport> {
    let flag = train::interrupt_flag();
    let t0 = Instant::now();
    // A launcher's world under `mpirun` (built with --features mpi); else one process.
    let world = train::world::World::from_env()?;
    let outcome = match train::train_in(&world, cfg, device, start, &flag) {
        Ok(o) => o,
        // Every rank checks the same settings and fails alike: rank 0 says it.
        Err(e) if world.size() > 1 && e.is_usage() && !world.is_root() => {
            return Err(Error::ReportedByRoot(Box::new(e)))
        }
        // A failure of this rank alone: say it, and end the job (the others would wait).
        Err(e) if world.size() > 1 && !e.is_usage() => {
            let line = format!("error: rank {}: {e}\n", world.rank());
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
            world.abort(1);
            return Err(e);
        }
        Err(e) => return Err(e),
    };
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
    let summary = match (world.size(), world.is_root()) {
        (1, _) => summary,
        (n, true) => format!(
            "{summary} ({n} processes; communication {:.1} ms per step on rank 0)",
            1e3 * world.comm_per_step().as_secs_f64()
        ),
        (_, false) => String::new(),
    };
    Ok(TrainReport { outcome, summary })
}
