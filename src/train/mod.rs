//! `diffuse train`: the classic DDPM objective with AdamW, warm-up, clipping, EMA,
//! atomic checkpoints, exact resume, Ctrl-C handling and NaN guards.
//!
//! Output directory (diffusers layout, so `DDPMPipeline.from_pretrained(out)` finds it):
//! `unet/` (EMA weights), `scheduler/scheduler_config.json`, `training_state.safetensors`
//! (raw weights, AdamW moments, EMA, step, data position, RNG state), `loss.csv`, `loss.png`,
//! `samples/step_NNNNNN.png`.
pub mod checkpoint;
pub mod ema;
pub mod loss;
pub mod optim;
pub mod world;

use crate::core::forward::ForwardProcess;
use crate::core::rng::NoiseRng;
use crate::core::schedule::{Schedule, ScheduleConfig};
use crate::data::{self, BatchConfig, Batches, DataConfig};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::sampler::{PredictionType, SamplerConfig, SamplerKind, SchedulerConfig};
use crate::unet::{self, UNetConfig};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use loss::LossWeighting;
use optim::{AdamW, AdamWParams, LrSchedule};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Everything a training run needs; the CLI flags fill it, and it is stored in the state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    pub dataset: String,
    pub data_dir: PathBuf,
    /// Preset name (mnist, cifar10) or a config.json path.
    pub model_config: String,
    pub out: PathBuf,
    pub steps: Option<usize>,
    pub epochs: Option<usize>,
    pub batch_size: usize,
    pub lr: f64,
    pub warmup: usize,
    pub lr_schedule: LrSchedule,
    pub prediction: PredictionType,
    pub loss_weighting: LossWeighting,
    pub schedule: ScheduleConfig,
    pub ema_decay: f64,
    /// Global gradient-norm clip; None disables it.
    pub grad_clip: Option<f64>,
    pub seed: u64,
    /// Write a sample grid every N steps (0: only at the end).
    pub sample_every: usize,
    pub checkpoint_every: usize,
    pub log_every: usize,
    pub sample_steps: usize,
    pub num_samples: usize,
    pub hflip: Option<bool>,
    /// Use at most this many training images (quick experiments and tests).
    pub limit: Option<usize>,
    /// The user named `data_dir` (see `DataConfig::data_dir_given`).
    pub data_dir_given: bool,
    /// Class-conditional training: the UNet gets num_class_embeds = K + 1 (index K the
    /// null class) and the labels of the data.
    pub class_cond: bool,
    /// Share of samples whose label is replaced by the null class (classifier-free guidance,
    /// Ho & Salimans 2022).
    pub cond_drop: f64,
    /// Guidance scale of the class-conditional sample grids.
    pub grid_guidance: f64,
    /// Score the EMA model every N steps (0: never) with `diffuse eval`'s classifier on
    /// `eval_num` samples: eval.csv, a panel of loss.png, and the best model so far in best/.
    pub eval_every: usize,
    pub eval_num: usize,
    pub progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            dataset: "mnist".into(),
            data_dir: PathBuf::from("data"),
            model_config: "mnist".into(),
            out: PathBuf::from("models/mnist"),
            steps: None,
            epochs: None,
            batch_size: 64,
            lr: 1e-3,
            warmup: 100,
            lr_schedule: LrSchedule::Cosine,
            prediction: PredictionType::Epsilon,
            loss_weighting: LossWeighting::None,
            schedule: ScheduleConfig::default(),
            ema_decay: 0.999,
            grad_clip: Some(1.0),
            seed: 0,
            sample_every: 500,
            checkpoint_every: 500,
            log_every: 10,
            sample_steps: 50,
            num_samples: 64,
            hflip: None,
            limit: None,
            data_dir_given: false,
            class_cond: false,
            cond_drop: 0.1,
            grid_guidance: 2.0,
            eval_every: 0,
            eval_num: 500,
            progress: true,
        }
    }
}

/// Default number of steps when neither --steps nor --epochs is given.
/// About 15 minutes on a 2-core CPU for the mnist preset at batch 64 (~260 images/s; README
/// has the figures).
pub const DEFAULT_STEPS: usize = 3500;

/// How a run starts with respect to what is already in its output directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// A new run: the output directory must not hold an earlier run.
    Fresh,
    /// A new run that first removes what an earlier run wrote there (`--force`).
    Force,
    /// Continue from the checkpoint there (`--resume`): settings that change the
    /// optimisation must match it.
    Resume,
}

/// The entries a run writes in its output directory (what `--force` removes).
pub const RUN_ENTRIES: [&str; 10] = [
    "unet",
    "classes.json",
    "scheduler",
    "model_index.json",
    checkpoint::STATE_FILE,
    "loss.csv",
    "loss.png",
    "samples",
    "eval.csv",
    BEST_DIR,
];

/// Where `--eval-every` keeps the best model so far (a pipeline directory).
pub const BEST_DIR: &str = "best";

/// Settings that may differ between a checkpoint and the run resuming it: they change how
/// long the run goes, how it is logged and where things are, not what it optimises.
pub const RESUMABLE_CHANGES: [&str; 15] = [
    "lr",
    "grid_guidance",
    "steps",
    "epochs",
    "out",
    "data_dir",
    "data_dir_given",
    "sample_every",
    "checkpoint_every",
    "log_every",
    "sample_steps",
    "num_samples",
    "eval_every",
    "eval_num",
    "progress",
];

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done; `loss` is the mean loss over the last logging interval.
    Finished { step: usize, loss: f64 },
    /// Ctrl-C: the current step finished and a checkpoint was written.
    Interrupted { step: usize },
}

/// One logged point.
#[derive(Clone, Debug)]
pub struct LogRow {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub images_per_s: f64,
    /// Mean unweighted loss in each band of t since the previous row (loss.csv's
    /// `loss_tLO-HI` columns; None where no sample fell in the band).
    pub bands: Vec<Option<f64>>,
}

/// Everything trainable, in name order (the order optimizer and EMA state are kept in).
pub fn sorted_vars(vm: &VarMap) -> Vec<(String, Var)> {
    let mut vars: Vec<(String, Var)> = vm
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Install a Ctrl-C handler once; returns the shared flag.
pub fn interrupt_flag() -> Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| {
        let f = Arc::new(AtomicBool::new(false));
        let g = f.clone();
        if let Err(e) = ctrlc::set_handler(move || g.store(true, Ordering::SeqCst)) {
            tracing::warn!("could not install the Ctrl-C handler: {e}");
        }
        f
    })
    .clone()
}

fn total_steps(cfg: &TrainConfig, batches_per_epoch: usize) -> Result<usize> {
    let n = match (cfg.steps, cfg.epochs) {
        (Some(_), Some(_)) => return Err(Error::invalid("give --steps or --epochs, not both")),
        (Some(s), None) => s,
        (None, Some(e)) => e * batches_per_epoch,
        (None, None) => DEFAULT_STEPS,
    };
    if n == 0 {
        return Err(Error::invalid("the run has zero steps"));
    }
    Ok(n)
}

fn validate(cfg: &TrainConfig) -> Result<()> {
    if cfg.batch_size == 0 {
        return Err(Error::invalid("--batch-size must be at least 1"));
    }
    crate::limits::check_grid(cfg.num_samples)?;
    if !(cfg.lr > 0.0 && cfg.lr.is_finite()) {
        return Err(Error::invalid(format!("--lr {} must be positive", cfg.lr)));
    }
    if !(0.0..1.0).contains(&cfg.ema_decay) {
        return Err(Error::invalid(format!(
            "--ema-decay {} must lie in [0, 1)",
            cfg.ema_decay
        )));
    }
    if let Some(c) = cfg.grad_clip {
        if !(c > 0.0 && c.is_finite()) {
            return Err(Error::invalid(format!(
                "--grad-clip {c} must be positive (0 disables clipping)"
            )));
        }
    }
    if !(0.0..1.0).contains(&cfg.cond_drop) {
        return Err(Error::invalid(format!(
            "--cond-drop {} must lie in [0, 1)",
            cfg.cond_drop
        )));
    }
    if !cfg.grid_guidance.is_finite() {
        return Err(Error::invalid("--guidance must be finite"));
    }
    if cfg.log_every == 0 || cfg.checkpoint_every == 0 {
        return Err(Error::invalid(
            "--log-every and --checkpoint-every must be at least 1",
        ));
    }
    Ok(())
}

/// Settings of `now` that differ from the checkpoint's `saved` and may not: one line,
/// "name saved (now value)" each, or None when the run may resume.
pub fn resume_differences(saved: &TrainConfig, now: &TrainConfig) -> Option<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(saved), serde_json::to_value(now))
    else {
        return Some("the checkpoint's settings could not be compared".into());
    };
    let diffs: Vec<String> = b
        .iter()
        .filter(|(k, _)| !RESUMABLE_CHANGES.contains(&k.as_str()))
        .filter(|(k, v)| a.get(*k) != Some(*v))
        .map(|(k, v)| {
            let old = a.get(k).map_or("unset".to_string(), |o| o.to_string());
            format!("{k} {old} (now {v})")
        })
        .collect();
    (!diffs.is_empty()).then(|| diffs.join(", "))
}

/// What an earlier run left in `out` (entries of [`RUN_ENTRIES`] present). Other files (a
/// preset's config.json beside it, say) are neither an obstacle nor touched.
fn existing_run(out: &Path) -> Vec<&'static str> {
    RUN_ENTRIES
        .into_iter()
        .filter(|n| std::fs::symlink_metadata(out.join(n)).is_ok())
        .collect()
}

/// Check the output directory for this start before any work; returns the checkpoint path to
/// resume from (None: start fresh).
fn check_out_dir(cfg: &TrainConfig, start: Start) -> Result<Option<PathBuf>> {
    let out = &cfg.out;
    if out.exists() && !out.is_dir() {
        return Err(Error::format(out, "exists and is not a directory"));
    }
    let state = out.join(checkpoint::STATE_FILE);
    if start == Start::Resume && state.exists() && !state.is_file() {
        return Err(Error::format(
            &state,
            "is not a file; cannot resume from it",
        ));
    }
    let entries = existing_run(out);
    match start {
        Start::Resume if state.is_file() => Ok(Some(state)),
        Start::Resume if entries.is_empty() => {
            tracing::info!(
                "--resume: {} holds no run yet; starting fresh",
                out.display()
            );
            Ok(None)
        }
        Start::Resume => Err(Error::invalid(format!(
            "--resume: {} holds no {} to resume from",
            out.display(),
            checkpoint::STATE_FILE
        ))),
        Start::Fresh if !entries.is_empty() => Err(Error::invalid(format!(
            "{} holds an earlier run ({}); continue it with --resume, or replace it with --force",
            out.display(),
            entries.join(", ")
        ))),
        Start::Fresh | Start::Force => Ok(None),
    }
}

/// Remove what an earlier run wrote in `out` (`--force`), leaving anything else.
fn clear_run(out: &Path) -> Result<()> {
    for name in RUN_ENTRIES {
        let p = out.join(name);
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else if p.exists() {
            std::fs::remove_file(&p)
        } else {
            Ok(())
        };
        r.map_err(|e| Error::io(&p, e))?;
    }
    Ok(())
}

/// The scheduler_config.json a diffusers DDPMPipeline would read for this run. Its class is
/// the sampler `diffuse sample` uses by default: DPM-Solver++ 2M, 20 steps (README, "Which
/// sampler": on the default MNIST model it reaches the real-data FID floor at 20
/// evaluations, where DDIM needs more than 50). The DDPM keys stay, so `--sampler ddpm` (or
/// diffusers' DDPMScheduler.from_config) gets the training chain.
pub fn scheduler_config(cfg: &TrainConfig) -> SchedulerConfig {
    SchedulerConfig {
        class_name: SamplerKind::DpmSolverPP.diffusers_class().into(),
        ..SchedulerConfig::ddpm(&cfg.schedule, cfg.prediction)
    }
}

/// Run (or resume) training in one process. `interrupt` is polled after every step.
pub fn train(
    cfg: &TrainConfig,
    device: &Device,
    start: Start,
    interrupt: &AtomicBool,
) -> Result<Outcome> {
    train_in(&world::World::single(), cfg, device, start, interrupt)
}

/// Run (or resume) training as one rank of `world` (see `world`): the same optimisation as
/// one process, rank 0 writing.
pub fn train_in(
    world: &world::World,
    cfg: &TrainConfig,
    device: &Device,
    start: Start,
    interrupt: &AtomicBool,
) -> Result<Outcome> {
    validate(cfg)?;
    if !cfg.batch_size.is_multiple_of(world.size()) {
        return Err(Error::invalid(format!(
            "--batch-size {} does not divide among {} processes (it is the global batch)",
            cfg.batch_size,
            world.size()
        )));
    }
    let root = world.is_root();
    let resume_from = check_out_dir(cfg, start)?;
    let mut ucfg = unet::preset_or_file(&cfg.model_config)?;
    let schedule = Schedule::new(&cfg.schedule)?;
    let t_max = schedule.len();
    let fp = ForwardProcess::new(schedule, device)?;

    let (uc, uh, uw) = ucfg.image_shape()?;
    if uh != uw {
        return Err(Error::Model(format!(
            "training needs a square sample_size, the config has {uh}x{uw}"
        )));
    }
    let ds = data::load(&DataConfig {
        dataset: cfg.dataset.clone(),
        data_dir: cfg.data_dir.clone(),
        data_dir_given: cfg.data_dir_given,
        sample_size: uh as u32,
        in_channels: uc,
        hflip: cfg.hflip,
        limit: cfg.limit,
        ..DataConfig::default()
    })?;
    let (c, h, w) = ds.image_dims();
    if (c, h, w) != (uc, uh, uw) {
        return Err(Error::Model(format!(
            "dataset images are {c}x{h}x{w} but the model expects {uc}x{uh}x{uw}"
        )));
    }
    if ds.len() < cfg.batch_size {
        return Err(Error::invalid(format!(
            "the dataset has {} images, fewer than --batch-size {}",
            ds.len(),
            cfg.batch_size
        )));
    }
    // Class conditioning: K classes from the data, the null class K after them.
    let classes = if cfg.class_cond {
        let names = ds.class_names.clone().ok_or_else(|| {
            Error::invalid(format!(
                "--class-cond: {} has no class labels (mnist, fashion-mnist, cifar10, and folders whose images sit in class subfolders do)",
                ds.name
            ))
        })?;
        let Some(labels) = &ds.labels else {
            return Err(Error::invalid(format!(
                "--class-cond: {} came without labels",
                ds.name
            )));
        };
        // Checked once here: the model does not read labels back on a GPU.
        let top = labels.to_dtype(DType::U32)?.max(0)?.to_scalar::<u32>()? as usize;
        if top >= names.len() {
            return Err(Error::format(
                std::path::Path::new(&ds.source),
                format!("holds label {top}, outside its {} classes", names.len()),
            ));
        }
        ucfg.num_class_embeds = Some(names.len() + 1);
        Some(crate::pipeline::Classes {
            null_class: Some(names.len()),
            names,
        })
    } else {
        None
    };
    let bcfg = BatchConfig {
        batch_size: cfg.batch_size,
        hflip: ds.hflip,
        ..BatchConfig::default()
    };
    crate::limits::check_batch_memory("--batch-size", cfg.batch_size, ucfg.bytes_per_image(true)?)?;
    // The sample grids' sampler, built now so a setting it cannot run with (T below its step
    // count) fails before the first step rather than after the last.
    let grid_sampler = grid_sampler_config(cfg);
    grid_sampler.validate()?;
    drop(crate::sampler::build(&grid_sampler)?);
    let eval_sampler = eval_sampler_config(cfg);
    let evaluator = match cfg.eval_every {
        0 => None,
        _ => Some(evaluator(cfg, &ds, device)?),
    };

    let (vm, model) = unet::init(&ucfg, cfg.seed, device)?;
    let vars = sorted_vars(&vm);
    let mut opt = AdamW::new(vars.clone(), AdamWParams::default())?;
    let mut ema = ema::Ema::new(&vars, cfg.ema_decay)?;
    let mut rng = NoiseRng::new(cfg.seed ^ 0x7452_4149_4E00_0000);
    let mut batches;
    let mut step = 0usize;
    // The step of the newest checkpoint on disk, if any.
    let mut last_ckpt = None;
    if let Some(state_path) = &resume_from {
        let st = checkpoint::load(state_path, &ucfg, device)?;
        if let Some(d) = resume_differences(&st.config, cfg) {
            return Err(Error::invalid(format!(
                "--resume: the checkpoint in {} was written with other settings: {d}; resume with its settings, or start anew with --force",
                cfg.out.display()
            )));
        }
        for k in ["lr", "steps", "epochs"] {
            let v = |c: &TrainConfig| {
                serde_json::to_value(c)
                    .ok()
                    .and_then(|j| j.get(k).map(|x| x.to_string()))
                    .unwrap_or_default()
            };
            if v(&st.config) != v(cfg) {
                tracing::info!("--resume: {k} changes from {} to {}", v(&st.config), v(cfg));
            }
        }
        checkpoint::restore(&st, &vars, &mut opt, &mut ema)?;
        rng = st.rng;
        batches = Batches::resume(&ds, bcfg.clone(), st.batches, device)?;
        step = st.step;
        last_ckpt = Some(step);
        tracing::info!(step, "resumed from {}", state_path.display());
    } else {
        batches = Batches::new(&ds, bcfg.clone(), cfg.seed, device)?;
    }
    let total = total_steps(cfg, batches.batches_per_epoch())?;
    if step >= total {
        return Err(Error::invalid(format!(
            "--resume: the checkpoint is at step {step}, and this run has {total} steps; give more --train-steps"
        )));
    }
    // Everything is checked (on every rank, before rank 0 writes anything): only now is the
    // output directory touched.
    world.barrier();
    if resume_from.is_none() && root {
        if start == Start::Force {
            clear_run(&cfg.out)?;
        }
        std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    }
    tracing::info!(
        dataset = %ds.name, source = %ds.source, images = ds.len(), params = unet::param_count(&ucfg)?,
        total, "training"
    );

    let mut pb = Progress::new(
        "train",
        "step",
        total as u64,
        step as u64,
        cfg.progress && root,
    );
    let mut band_loss = loss::BandLoss::new(t_max);
    let (mut log, mut evals) = match root {
        true => (
            Some(LossLog::open(
                &cfg.out.join("loss.csv"),
                step,
                band_loss.names(),
            )?),
            Some(EvalLog::open(
                &cfg.out.join("eval.csv"),
                step,
                evaluator.is_some(),
            )?),
        ),
        false => (None, None),
    };
    let plot = |log: &Option<LossLog>, evals: &Option<EvalLog>| -> Result<()> {
        match (log, evals) {
            (Some(l), Some(e)) => l.plot(&cfg.out.join("loss.png"), &e.rows),
            _ => Ok(()),
        }
    };
    let mut loss_acc: Option<Tensor> = None;
    let (mut acc_n, mut t_log, mut smooth) = (0usize, Instant::now(), f64::NAN);
    let mut last_loss = f64::NAN;

    while step < total {
        let lr = optim::lr_at(step, cfg.lr, cfg.warmup, total, cfg.lr_schedule);
        let batch = batches.next_batch()?;
        let x0 = batch.images;
        let b = x0.dim(0)?;
        let t_host: Vec<u32> = rng
            .uniform_below(b, t_max as u64)
            .into_iter()
            .map(|t| t as u32)
            .collect();
        let t = Tensor::from_slice(&t_host, b, device)?;
        let (x_t, eps) = fp.q_sample_noise(&x0, &t, &mut rng)?;
        let target = loss::target(&fp, cfg.prediction, &x0, &t, &eps)?;
        let wts = loss::weights(&fp, cfg.loss_weighting, cfg.prediction, &t_host)
            .map(|w| Tensor::from_vec(w, b, device))
            .transpose()?;
        let labels = match (&classes, &batch.labels) {
            (Some(c), Some(l)) => {
                // Label dropout: the null class for a `cond_drop` share of the batch, chosen on
                // the host and applied on the device (the labels are never read back).
                let null = c.null_class.unwrap_or(0) as u32;
                let dropped: Vec<u8> = rng
                    .uniform_f32(b)
                    .iter()
                    .map(|u| u8::from((*u as f64) < cfg.cond_drop))
                    .collect();
                let dropped = Tensor::from_vec(dropped, b, device)?;
                let nulls = Tensor::full(null, b, device)?;
                Some(dropped.where_cond(&nulls, &l.to_dtype(DType::U32)?)?)
            }
            _ => None,
        };
        // This rank's share of the global batch (all of it in one process).
        let (lo, n) = world.share(b);
        let rows = |x: &Tensor| match n == b {
            true => Ok(x.clone()),
            false => x.narrow(0, lo, n),
        };
        let (x_t, t, target) = (rows(&x_t)?, rows(&t)?, rows(&target)?);
        let wts = wts.as_ref().map(rows).transpose()?;
        let labels = labels.as_ref().map(rows).transpose()?;
        let pred = model.forward_cond(&x_t, &t, labels.as_ref(), true)?;
        let per = loss::per_sample_mse(&pred, &target)?;
        let loss = loss::weighted_mean(&per, wts.as_ref())?;
        band_loss.add(&per, &t_host[lo..lo + n])?;
        let mut grads = loss.backward()?;
        world.average_grads(&vars, &mut grads)?;
        let clip = opt.clip_factor(&grads, cfg.grad_clip)?;
        opt.step(&grads, lr, clip.as_ref())?;
        ema.update(&vars)?;
        step += 1;
        // Keep the running loss on the device; read it back only when logging.
        let l = loss.detach();
        loss_acc = Some(match loss_acc {
            Some(a) => (a + l)?,
            None => l,
        });
        acc_n += 1;

        // Every rank stops at the same step (mpirun hands Ctrl-C to each).
        let stop = world.any(interrupt.load(Ordering::SeqCst))?;
        let want_ckpt = step.is_multiple_of(cfg.checkpoint_every) || step == total || stop;
        if step.is_multiple_of(cfg.log_every) || want_ckpt {
            let mut mean = [loss_acc
                .take()
                .expect("accumulated")
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?
                / acc_n as f64];
            world.sum_in_place(&mut mean)?;
            let mean = mean[0] / world.size() as f64;
            if !mean.is_finite() {
                pb.abandon();
                let kept = match last_ckpt {
                    Some(s) => format!(
                        "The last good checkpoint (step {s}) is in {}",
                        cfg.out.display()
                    ),
                    None => "No checkpoint had been written yet".to_string(),
                };
                return Err(Error::Runtime(format!(
                    "loss became {mean} between steps {} and {step}; stopped. {kept}. Try a lower --lr or --grad-clip.",
                    step - acc_n + 1,
                )));
            }
            last_loss = mean;
            let ips = (acc_n * b) as f64 / t_log.elapsed().as_secs_f64();
            smooth = if smooth.is_nan() {
                mean
            } else {
                0.9 * smooth + 0.1 * mean
            };
            let bands = band_loss.take_reduced(|v| world.sum_in_place(v))?;
            if let Some(log) = log.as_mut() {
                log.push(LogRow {
                    step,
                    loss: mean,
                    lr,
                    images_per_s: ips,
                    bands,
                })?;
            }
            pb.set_message(format!("loss {smooth:.4}, {ips:.0} images/s"));
            acc_n = 0;
            t_log = Instant::now();
        }
        // After the log row, so a progress line carries this step's loss.
        pb.inc(1);
        if want_ckpt && root {
            checkpoint::save(
                &cfg.out,
                cfg,
                &ucfg,
                step,
                &vars,
                &opt,
                &ema,
                &rng,
                batches.state(),
            )?;
            export(&cfg.out, cfg, &ucfg, &ema, classes.as_ref())?;
            last_ckpt = Some(step);
            plot(&log, &evals)?;
        }
        let want_samples =
            (cfg.sample_every > 0 && step.is_multiple_of(cfg.sample_every)) || step == total;
        if want_samples && !stop && root {
            let dir = cfg.out.join("samples");
            let path = dir.join(format!("step_{step:06}.png"));
            pb.say(&format!(
                "sampling {} images (DDIM {}, EMA weights) to {}",
                cfg.num_samples,
                grid_sampler.steps,
                path.display()
            ));
            let t0 = Instant::now();
            let grid = sample_grid(&grid_sampler, cfg, classes.as_ref(), &ucfg, &ema, device)?;
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            crate::io::imageio::save_png(&crate::io::imageio::upscale(&grid, 256), &path)?;
            pb.say(&format!(
                "wrote {} in {}",
                path.display(),
                crate::progress::duration(t0.elapsed())
            ));
        }
        let want_eval =
            cfg.eval_every > 0 && (step.is_multiple_of(cfg.eval_every) || step == total);
        if let (true, false, Some(ev), Some(ev_log)) =
            (want_eval, stop, evaluator.as_ref(), evals.as_mut())
        {
            let t0 = Instant::now();
            let x = sample_ema(
                &eval_sampler,
                cfg,
                cfg.eval_num,
                4321,
                classes.as_ref(),
                &ucfg,
                &ema,
                device,
            )?;
            // Clamped to [-1, 1] as `diffuse eval` reads samples.
            let x = x.to_device(&Device::Cpu)?.clamp(-1f32, 1f32)?;
            let r = ev.score(&format!("step {step}"), &x)?;
            let best = ev_log.best();
            ev_log.push(EvalPoint {
                step,
                fid: r.fid,
                kid: r.kid,
                precision: r.precision,
                recall: r.recall,
            })?;
            let mut say = format!(
                "step {step}: FID {:.3}, KID x1000 {:.2}, precision {:.3}, recall {:.3} ({} samples, DPM-Solver++ {}, {})",
                r.fid,
                1000.0 * r.kid,
                r.precision,
                r.recall,
                cfg.eval_num,
                eval_sampler.steps,
                crate::progress::duration(t0.elapsed())
            );
            if best.is_none_or(|b| r.fid < b.fid) {
                export(&cfg.out.join(BEST_DIR), cfg, &ucfg, &ema, classes.as_ref())?;
                say.push_str(&format!("; best so far, kept in {}/", BEST_DIR));
            }
            pb.say(&say);
            plot(&log, &evals)?;
        }
        if stop {
            pb.abandon();
            return Ok(Outcome::Interrupted { step });
        }
    }
    pb.finish();
    Ok(Outcome::Finished {
        step,
        loss: last_loss,
    })
}

/// EMA weights as a VarMap (for export).
fn ema_varmap(ema: &ema::Ema) -> Result<VarMap> {
    unet::io::varmap_from(
        ema.shadow
            .iter()
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect(),
    )
}

/// Write the pipeline (EMA weights, the run's scheduler config, and for a class-conditional
/// run classes.json).
fn export(
    out: &Path,
    cfg: &TrainConfig,
    ucfg: &UNetConfig,
    ema: &ema::Ema,
    classes: Option<&crate::pipeline::Classes>,
) -> Result<()> {
    crate::pipeline::save(out, ucfg, &ema_varmap(ema)?, &scheduler_config(cfg))?;
    if let Some(c) = classes {
        crate::io::output::write_bytes_atomic(
            &out.join(crate::pipeline::CLASSES_FILE),
            c.to_json().as_bytes(),
        )?;
    }
    Ok(())
}

/// The sample grids' sampler: DDIM with `sample_steps` (at most T) steps.
fn grid_sampler_config(cfg: &TrainConfig) -> SamplerConfig {
    let sc = scheduler_config(cfg);
    SamplerConfig {
        kind: SamplerKind::Ddim,
        steps: cfg.sample_steps.min(sc.num_train_timesteps).max(1),
        eta: 0.0,
        karras: false,
        scheduler: sc,
    }
}

/// The evaluations' sampler: our models' default, DPM-Solver++ 2M with 20 steps (at most T).
fn eval_sampler_config(cfg: &TrainConfig) -> SamplerConfig {
    let sc = scheduler_config(cfg);
    SamplerConfig {
        kind: SamplerKind::DpmSolverPP,
        steps: SamplerKind::DpmSolverPP
            .default_steps()
            .min(sc.num_train_timesteps)
            .max(1),
        eta: 0.0,
        karras: false,
        scheduler: sc,
    }
}

/// `diffuse eval`'s shipped feature network and evaluation reference for `--eval-every`.
fn evaluator(
    cfg: &TrainConfig,
    ds: &data::Dataset,
    device: &Device,
) -> Result<crate::eval::Evaluator> {
    crate::limits::check_count(
        "--eval-num",
        cfg.eval_num,
        10_000,
        "FID settles long before",
    )?;
    if cfg.eval_num < 2 {
        return Err(Error::invalid("--eval-num must be at least 2"));
    }
    let dc = DataConfig {
        dataset: cfg.dataset.clone(),
        data_dir: cfg.data_dir.clone(),
        data_dir_given: cfg.data_dir_given,
        ..DataConfig::default()
    };
    let kind = data::DatasetKind::parse(&dc.dataset)?;
    if crate::eval::features::shipped(&kind).is_none() {
        return Err(Error::invalid(format!(
            "--eval-every scores mnist and fashion-mnist with diffuse eval's shipped feature network; {} has none",
            ds.name
        )));
    }
    let (clf, _) = crate::eval::features::open(&dc.dataset, None, device)?;
    crate::eval::Evaluator::new(clf, crate::eval::eval_sets(&dc)?, device)
}

/// `n` samples (seed `seed`) from the EMA weights; class-conditional models draw the classes
/// in order with the grids' guidance.
#[allow(clippy::too_many_arguments)]
fn sample_ema(
    scfg: &SamplerConfig,
    cfg: &TrainConfig,
    n: usize,
    seed: u64,
    classes: Option<&crate::pipeline::Classes>,
    ucfg: &UNetConfig,
    ema: &ema::Ema,
    device: &Device,
) -> Result<Tensor> {
    let model = unet::frozen(ucfg, &ema_varmap(ema)?, device)?;
    let mut rng = NoiseRng::new(seed);
    let (c, h, w) = ucfg.image_shape()?;
    let x_t = rng.randn((n, c, h, w), device)?;
    let cond = classes.map(|cl| crate::conditioning::Conditioning::in_order(cl.clone()));
    let labels = cond.as_ref().map(|c| c.labels(0, n, n, &mut rng));
    let steer = cond.as_ref().zip(labels.as_deref());
    crate::conditioning::with_model(&model, steer, cfg.grid_guidance, device, |f| {
        crate::sampler::sample(f, &x_t, scfg, &mut rng, None)
    })
}

/// A grid of `num_samples` samples (fixed seed) from the EMA weights; class-conditional
/// models draw the classes in order (one row each when they divide evenly) with guidance.
fn sample_grid(
    scfg: &SamplerConfig,
    cfg: &TrainConfig,
    classes: Option<&crate::pipeline::Classes>,
    ucfg: &UNetConfig,
    ema: &ema::Ema,
    device: &Device,
) -> Result<image::RgbImage> {
    let n = cfg.num_samples;
    let x0 = sample_ema(scfg, cfg, n, 1234, classes, ucfg, ema, device)?.to_device(&Device::Cpu)?;
    match classes {
        Some(cl) => {
            let k = cl.names.len();
            let cols = if n.is_multiple_of(k) {
                n / k
            } else {
                (n as f64).sqrt().ceil() as usize
            };
            crate::io::imageio::grid_cols(&x0, 2, cols as u32)
        }
        None => crate::io::imageio::grid(&x0, 2),
    }
}

/// One `--eval-every` point.
#[derive(Clone, Copy, Debug)]
pub struct EvalPoint {
    pub step: usize,
    pub fid: f64,
    pub kid: f64,
    pub precision: f64,
    pub recall: f64,
}

/// eval.csv: one row per evaluation (its own file: evaluations are rare and loss rows
/// frequent, so each file keeps one cadence and one header).
struct EvalLog {
    path: PathBuf,
    rows: Vec<EvalPoint>,
    active: bool,
}

impl EvalLog {
    fn open(path: &Path, step: usize, active: bool) -> Result<Self> {
        let mut rows = Vec::new();
        if let Ok(text) = std::fs::read_to_string(path) {
            for line in text.lines().skip(1) {
                let f: Vec<f64> = line.split(',').filter_map(|x| x.parse().ok()).collect();
                if f.len() == 5 && (f[0] as usize) <= step {
                    rows.push(EvalPoint {
                        step: f[0] as usize,
                        fid: f[1],
                        kid: f[2],
                        precision: f[3],
                        recall: f[4],
                    });
                }
            }
        }
        let log = Self {
            path: path.to_path_buf(),
            rows,
            active,
        };
        if active || !log.rows.is_empty() {
            log.write()?;
        }
        Ok(log)
    }

    /// The evaluation with the lowest FID so far.
    fn best(&self) -> Option<EvalPoint> {
        self.rows
            .iter()
            .copied()
            .min_by(|a, b| a.fid.total_cmp(&b.fid))
    }

    fn push(&mut self, p: EvalPoint) -> Result<()> {
        self.rows.push(p);
        self.write()
    }

    fn write(&self) -> Result<()> {
        if !self.active && self.rows.is_empty() {
            return Ok(());
        }
        crate::io::output::write_atomic(&self.path, |w| {
            writeln!(w, "step,fid,kid,precision,recall")?;
            for r in &self.rows {
                writeln!(
                    w,
                    "{},{:?},{:?},{:?},{:?}",
                    r.step, r.fid, r.kid, r.precision, r.recall
                )?;
            }
            Ok(())
        })
    }
}

/// loss.csv (appended, atomically rewritten on resume) and loss.png.
struct LossLog {
    path: PathBuf,
    rows: Vec<LogRow>,
    band_names: Vec<String>,
}

impl LossLog {
    /// Read existing rows up to `step` (resume) so the log continues seamlessly.
    fn open(path: &Path, step: usize, band_names: Vec<String>) -> Result<Self> {
        let mut rows = Vec::new();
        if let Ok(text) = std::fs::read_to_string(path) {
            for line in text.lines().skip(1) {
                let f: Vec<&str> = line.split(',').collect();
                let head: Vec<f64> = f.iter().take(4).filter_map(|x| x.parse().ok()).collect();
                if head.len() == 4 && (head[0] as usize) <= step {
                    rows.push(LogRow {
                        step: head[0] as usize,
                        loss: head[1],
                        lr: head[2],
                        images_per_s: head[3],
                        bands: f[4..].iter().map(|x| x.parse().ok()).collect(),
                    });
                }
            }
        }
        let log = Self {
            path: path.to_path_buf(),
            rows,
            band_names,
        };
        log.write()?;
        Ok(log)
    }

    fn line(&self, r: &LogRow) -> String {
        let mut s = format!("{},{:?},{:e},{:.1}", r.step, r.loss, r.lr, r.images_per_s);
        for j in 0..self.band_names.len() {
            s.push(',');
            if let Some(Some(v)) = r.bands.get(j) {
                s.push_str(&format!("{v:.6}"));
            }
        }
        s
    }

    fn push(&mut self, row: LogRow) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::io(&self.path, e))?;
        writeln!(f, "{}", self.line(&row)).map_err(|e| Error::io(&self.path, e))?;
        self.rows.push(row);
        Ok(())
    }

    fn write(&self) -> Result<()> {
        crate::io::output::write_atomic(&self.path, |w| {
            write!(w, "step,loss,lr,images_per_s")?;
            for n in &self.band_names {
                write!(w, ",{n}")?;
            }
            writeln!(w)?;
            for r in &self.rows {
                writeln!(w, "{}", self.line(r))?;
            }
            Ok(())
        })
    }

    fn plot(&self, path: &Path, evals: &[EvalPoint]) -> Result<()> {
        if self.rows.len() < 2 {
            return Ok(());
        }
        // Bias-corrected EMA (as Adam's moments), so the curve does not lag from its first point.
        let mut smooth = Vec::with_capacity(self.rows.len());
        let (beta, mut m) = (0.8f64, 0.0f64);
        for (i, r) in self.rows.iter().enumerate() {
            m = beta * m + (1.0 - beta) * r.loss;
            smooth.push((r.step as f64, m / (1.0 - beta.powi(i as i32 + 1))));
        }
        let mut panels = vec![crate::io::plot::Panel {
            title: "training loss".into(),
            y_label: "MSE".into(),
            series: vec![
                crate::io::plot::Series {
                    name: "loss".into(),
                    points: self.rows.iter().map(|r| (r.step as f64, r.loss)).collect(),
                },
                crate::io::plot::Series {
                    name: "smoothed".into(),
                    points: smooth,
                },
            ],
        }];
        if !evals.is_empty() {
            panels.push(crate::io::plot::Panel {
                title:
                    "FID of the EMA model (diffuse eval's classifier features; not Inception FID)"
                        .into(),
                y_label: "FID".into(),
                series: vec![crate::io::plot::Series {
                    name: "FID".into(),
                    points: evals.iter().map(|e| (e.step as f64, e.fid)).collect(),
                }],
            });
        }
        crate::io::plot::write_figure(path, "step", &panels)
    }
}
