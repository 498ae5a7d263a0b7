use super::{DeviceArgs, FlipArgs, ScheduleArgs};
use clap::Args;
use diffuse::commands::train as command;
use diffuse::sampler::PredictionType;
use diffuse::train::loss::LossWeighting;
use diffuse::train::optim::LrSchedule;
use diffuse::train::{Outcome, Start, TrainConfig};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TrainCmd {
    /// mnist, fashion-mnist, cifar10, or a folder of images.
    #[arg(long, default_value = "mnist")]
    dataset: String,
    /// Where local dataset copies are looked for (DIR/mnist, DIR/fashion-mnist, DIR/cifar10)
    /// [default: data, relative to the current directory, falling back to the hub cache and
    /// the bundled MNIST digits]. A directory given here must exist, and is never replaced by
    /// the bundled digits.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Model preset (mnist, cifar10) or a UNet2DModel config.json.
    #[arg(long, default_value = "mnist")]
    model_config: String,
    /// Output directory (a diffusers pipeline), relative to the current directory.
    #[arg(
        short,
        long,
        alias = "out",
        value_name = "DIR",
        default_value = "models/mnist"
    )]
    output: PathBuf,
    /// Optimisation steps [default: 3500, about 13 min on 2 CPU cores, when neither
    /// --train-steps nor --epochs is given].
    #[arg(long, alias = "steps", conflicts_with = "epochs")]
    train_steps: Option<usize>,
    /// Train for this many passes over the data instead of --train-steps.
    #[arg(long)]
    epochs: Option<usize>,
    /// Images per optimisation step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Peak learning rate (1e-3 suits the short default run; 2e-4 for long runs).
    #[arg(long, default_value_t = 1e-3, allow_negative_numbers = true)]
    lr: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// Learning-rate schedule after warm-up.
    #[arg(long, value_enum, default_value = "cosine")]
    lr_schedule: LrSchedule,
    /// What the UNet predicts.
    #[arg(long, value_enum, default_value = "epsilon")]
    prediction: PredictionType,
    /// Per-timestep loss weights.
    #[arg(long, value_enum, default_value = "none")]
    loss_weighting: LossWeighting,
    /// Decay of the EMA of the weights (the exported model), in [0, 1).
    #[arg(long, default_value_t = 0.999, allow_negative_numbers = true)]
    ema_decay: f64,
    /// Clip the global gradient norm to this value (0 disables clipping).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    grad_clip: f64,
    /// Seed of everything random: initial weights, data order, flips, t and noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write a sample grid (DDIM 50, EMA weights) every N steps (0: only at the end).
    #[arg(long, default_value_t = 500)]
    sample_every: usize,
    /// Score the EMA model every N steps (0: never) with `diffuse eval`'s digit classifier
    /// (trained once at the start, about a minute): FID, KID, precision and recall of
    /// --eval-num samples (DPM-Solver++ 20) in eval.csv and loss.png; the best model so far
    /// is kept in OUT/best/. Digit datasets only (mnist, fashion-mnist).
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    /// Samples per evaluation (2 to 10,000).
    #[arg(long, default_value_t = 500)]
    eval_num: usize,
    /// Write a checkpoint (training_state.safetensors and the exported model) every N steps.
    #[arg(long, default_value_t = 500)]
    checkpoint_every: usize,
    /// Log the mean loss to loss.csv every N steps.
    #[arg(long, default_value_t = 10)]
    log_every: usize,
    /// Images in each sample grid (at most 10,000).
    #[arg(short = 'n', long, alias = "num-samples", default_value_t = 64)]
    num: usize,
    #[command(flatten)]
    flip: FlipArgs,
    /// Use at most N training images.
    #[arg(long)]
    limit: Option<usize>,
    /// Class-conditional training (mnist, fashion-mnist, cifar10): the UNet gets one class
    /// embedding per class plus a null class, and classes.json is written beside it.
    #[arg(long)]
    class_cond: bool,
    /// With --class-cond: share of labels replaced by the null class (classifier-free
    /// guidance).
    #[arg(long, default_value_t = 0.1, requires = "class_cond")]
    cond_drop: f64,
    /// With --class-cond: guidance scale of the sample grids (one row per class).
    #[arg(
        long,
        default_value_t = 2.0,
        requires = "class_cond",
        allow_negative_numbers = true
    )]
    guidance: f64,
    /// Continue from the checkpoint in --output (settings that change the optimisation must
    /// match it; --lr, --train-steps and the logging cadence may change).
    #[arg(long, conflicts_with = "force")]
    resume: bool,
    /// Start anew even if --output holds an earlier run: what that run wrote is removed first.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    sched: ScheduleArgs,
    #[command(flatten)]
    dev: DeviceArgs,
}

pub fn run(c: TrainCmd) -> anyhow::Result<()> {
    if !(c.grad_clip >= 0.0 && c.grad_clip.is_finite()) {
        return Err(diffuse::Error::invalid(format!(
            "--grad-clip {} must be positive, or 0 to disable clipping",
            c.grad_clip
        ))
        .into());
    }
    let cfg = TrainConfig {
        dataset: c.dataset,
        data_dir_given: c.data_dir.is_some(),
        data_dir: c
            .data_dir
            .unwrap_or_else(|| PathBuf::from(super::DEFAULT_DATA_DIR)),
        model_config: c.model_config,
        out: c.output,
        steps: c.train_steps,
        epochs: c.epochs,
        batch_size: c.batch_size,
        lr: c.lr,
        warmup: c.warmup,
        lr_schedule: c.lr_schedule,
        prediction: c.prediction,
        loss_weighting: c.loss_weighting,
        schedule: c.sched.config()?,
        ema_decay: c.ema_decay,
        grad_clip: (c.grad_clip > 0.0).then_some(c.grad_clip),
        seed: c.seed,
        sample_every: c.sample_every,
        checkpoint_every: c.checkpoint_every,
        log_every: c.log_every,
        num_samples: c.num,
        hflip: c.flip.value(),
        limit: c.limit,
        class_cond: c.class_cond,
        cond_drop: c.cond_drop,
        grid_guidance: c.guidance,
        eval_every: c.eval_every,
        eval_num: c.eval_num,
        progress: true,
        ..TrainConfig::default()
    };
    let start = match (c.resume, c.force) {
        (true, _) => Start::Resume,
        (_, true) => Start::Force,
        _ => Start::Fresh,
    };
    let device = c.dev.device()?;
    let report = command::run(&cfg, start, &device)?;
    match report.outcome {
        Outcome::Finished { .. } if report.summary.is_empty() => Ok(()),
        Outcome::Finished { .. } => super::emit(&format!("{}\n", report.summary)),
        Outcome::Interrupted { .. } => {
            if !report.summary.is_empty() {
                eprintln!("{}", report.summary);
            }
            std::process::exit(130);
        }
    }
}
