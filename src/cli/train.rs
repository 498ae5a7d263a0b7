use super::{DeviceArgs, ScheduleArgs};
use clap::Args;
use diffuse::sampler::PredictionType;
use diffuse::train::loss::LossWeighting;
use diffuse::train::optim::LrSchedule;
use diffuse::train::{self, Outcome, TrainConfig};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TrainCmd {
    /// mnist, fashion-mnist, cifar10, or a folder of images.
    #[arg(long, default_value = "mnist")]
    dataset: String,
    /// Where local dataset copies are looked for.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Model preset (mnist, cifar10) or a UNet2DModel config.json.
    #[arg(long, default_value = "mnist")]
    model_config: String,
    /// Output directory (diffusers layout).
    #[arg(long, default_value = "models/mnist")]
    out: PathBuf,
    /// Optimisation steps (default 3500, ~15 min on 2 CPU cores, when neither --steps nor
    /// --epochs is given).
    #[arg(long, conflicts_with = "epochs")]
    steps: Option<usize>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Peak learning rate (1e-3 suits the short default run; 2e-4 for long runs).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    #[arg(long, value_enum, default_value = "cosine")]
    lr_schedule: LrSchedule,
    #[arg(long, value_enum, default_value = "epsilon")]
    prediction: PredictionType,
    #[arg(long, value_enum, default_value = "none")]
    loss_weighting: LossWeighting,
    #[arg(long, default_value_t = 0.999)]
    ema_decay: f64,
    /// Clip the global gradient norm (0 disables).
    #[arg(long, default_value_t = 1.0)]
    grad_clip: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write a sample grid (DDIM 50, EMA weights) every N steps.
    #[arg(long, default_value_t = 500)]
    sample_every: usize,
    #[arg(long, default_value_t = 500)]
    checkpoint_every: usize,
    #[arg(long, default_value_t = 10)]
    log_every: usize,
    /// Images in each sample grid.
    #[arg(long, default_value_t = 64)]
    num_samples: usize,
    /// Random horizontal flips (default: on for cifar10 and folders, off for digits).
    #[arg(long)]
    hflip: Option<bool>,
    /// Use at most N training images.
    #[arg(long)]
    limit: Option<usize>,
    /// Continue from the last checkpoint in --out.
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    sched: ScheduleArgs,
    #[command(flatten)]
    dev: DeviceArgs,
}

pub fn run(c: TrainCmd) -> anyhow::Result<()> {
    let cfg = TrainConfig {
        dataset: c.dataset,
        data_dir: c.data_dir,
        model_config: c.model_config,
        out: c.out,
        steps: c.steps,
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
        num_samples: c.num_samples,
        hflip: c.hflip,
        limit: c.limit,
        progress: true,
        ..TrainConfig::default()
    };
    let device = c.dev.device()?;
    let flag = train::interrupt_flag();
    match train::train(&cfg, &device, c.resume, &flag)? {
        Outcome::Finished { step } => {
            println!("trained {step} steps; model in {}", cfg.out.display());
            Ok(())
        }
        Outcome::Interrupted { step } => {
            eprintln!(
                "interrupted at step {step}; checkpoint written to {} (continue with --resume)",
                cfg.out.display()
            );
            std::process::exit(130);
        }
    }
}
