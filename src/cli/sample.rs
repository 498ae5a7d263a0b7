use super::DeviceArgs;
use clap::Args;
use diffuse::commands::sample::{self, SampleRequest};
use diffuse::sampler::{PredictionType, SamplerKind, TimestepSpacing};
use diffuse::unet;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct SampleCmd {
    /// A directory written by `diffuse train`, a diffusers model directory, or a hub id
    /// (e.g. google/ddpm-cifar10-32) from the hub cache.
    #[arg(long)]
    model: String,
    /// The sampler [default: the model's scheduler_config.json class, else ddim]; our names,
    /// diffusers' class names, any case.
    #[arg(long, value_enum, ignore_case = true, hide_possible_values = true, long_help = sampler_help())]
    sampler: Option<SamplerKind>,
    /// Sampler (inference) steps [default: per sampler, see --sampler; T for ddpm; 100 for
    /// RePaint].
    #[arg(long)]
    steps: Option<usize>,
    /// Karras et al.'s sigma ladder (diffusers' use_karras_sigmas) for samplers with sigmas:
    /// euler, heun, dpm-solver++, dpm++3m, dpm++2m-sde, unipc.
    #[arg(long)]
    karras: bool,
    /// Class-conditional models: a class name or index (e.g. 7 or seven), or `all` (one row
    /// per class) [default: classes drawn uniformly].
    #[arg(long)]
    class: Option<String>,
    /// Classifier-free guidance scale w (out = out_null + w (out_class - out_null));
    /// several, comma-separated, draw a sweep grid with one column per scale.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1",
        allow_negative_numbers = true
    )]
    guidance: Vec<f64>,
    /// img2img (SDEdit): start from this image (any size or channels; resized, cropped and
    /// converted to the model's), noised to the level --strength selects.
    #[arg(long, value_name = "FILE")]
    init: Option<PathBuf>,
    /// With --init: the share of the steps run, in (0, 1] (diffusers' strength; 1 ignores
    /// the image's content but not its noise level) [default: 0.8].
    #[arg(
        long,
        requires = "init",
        conflicts_with = "mask",
        allow_negative_numbers = true,
        value_name = "S"
    )]
    strength: Option<f64>,
    /// Inpaint --init with RePaint: a mask image of the same size (white keeps, black is
    /// redrawn) or a region to redraw: left, right, top, bottom, center.
    #[arg(long, value_name = "FILE|REGION", requires = "init", conflicts_with_all = ["sampler", "karras"])]
    mask: Option<String>,
    /// RePaint: inference steps gone back up at each jump [default: 10].
    #[arg(long, requires = "mask", value_name = "N")]
    jump_length: Option<usize>,
    /// RePaint: passes through each jump point (1: no jumps) [default: 5].
    #[arg(long, requires = "mask", value_name = "N")]
    jump_n_sample: Option<usize>,
    /// DDIM (and RePaint) noise weight in [0, 1] (0: deterministic DDIM, 1: DDPM-like).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    eta: f64,
    /// Override the scheduler config's timestep spacing.
    #[arg(long, value_enum)]
    timestep_spacing: Option<TimestepSpacing>,
    /// Override the scheduler config's prediction type.
    #[arg(long, value_enum)]
    prediction: Option<PredictionType>,
    /// Clip predicted x0 to [-1, 1] (overrides the scheduler config).
    #[arg(long)]
    clip_sample: bool,
    /// Number of images to draw (at most 10,000,000; the grid shows the first 10,000).
    #[arg(short = 'n', long, default_value_t = 64)]
    num: usize,
    /// Images per forward pass [default: --num, at most 256]; batches are drawn one after
    /// another, so large --num streams.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Seed of the initial noise (and of DDPM's / DDIM eta's step noise).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output grid PNG.
    #[arg(short, long, value_name = "FILE", default_value = "samples.png")]
    output: PathBuf,
    /// Also animate the trajectory of the first batch's grid as a GIF.
    #[arg(long, value_name = "FILE")]
    gif: Option<PathBuf>,
    /// Frames in the GIF (at most 1000).
    #[arg(long, default_value_t = 25, requires = "gif")]
    gif_frames: usize,
    /// Also write the x̂0 trace: for the first 4 samples, x_t beside the model's prediction of
    /// x0 at --trace-steps steps (one row each) as this PNG, and as a GIF beside it (same
    /// name, .gif).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Rows of the trace: steps spread evenly over the run, first and last included.
    #[arg(long, default_value_t = 10, requires = "trace")]
    trace_steps: usize,
    /// Also write every sample as safetensors (key "samples", [N,C,H,W] f32 in [-1, 1]).
    #[arg(long, value_name = "FILE")]
    save_tensors: Option<PathBuf>,
    /// The precision the model runs in: f32 (exact to diffusers), or bf16/f16 weights (the
    /// sampler's math stays f32). Our fast kernels, CPU and CUDA, are f32 only, so half
    /// precision runs Candle's generic ops and is slower on both.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: unet::Precision,
    #[command(flatten)]
    dev: DeviceArgs,
}

/// `--help` for `--sampler`: every sampler, its diffusers class, default steps and when to use it.
fn sampler_help() -> String {
    let mut s = String::from(
        "The sampler [default: the model's scheduler_config.json class, else ddim]. Our names, \
         diffusers' class names, any case. Steps are diffusers' num_inference_steps; model \
         evaluations in brackets where they differ.\n",
    );
    for k in SamplerKind::ALL {
        let d = k.default_steps();
        let nfe = k.evaluations(d);
        let steps = if k == SamplerKind::Ddpm {
            "T steps".to_string()
        } else if nfe != d {
            format!("{d} steps [{nfe} evals]")
        } else {
            format!("{d} steps")
        };
        s.push_str(&format!(
            "\n  {:<12} {:<32} {:<20} {}",
            k.name(),
            k.diffusers_class(),
            steps,
            k.about()
        ));
    }
    s
}

/// diffusers' img2img default strength.
const DEFAULT_STRENGTH: f64 = 0.8;

pub fn run(c: SampleCmd) -> anyhow::Result<()> {
    let req = SampleRequest {
        model: c.model,
        kind: c.sampler,
        steps: c.steps,
        eta: c.eta,
        karras: c.karras,
        class: c.class,
        guidance: c.guidance,
        init: c.init,
        strength: c.strength.unwrap_or(DEFAULT_STRENGTH),
        mask: c.mask,
        jump_length: c.jump_length.unwrap_or(sample::REPAINT_JUMP_LENGTH),
        jump_n_sample: c.jump_n_sample.unwrap_or(sample::REPAINT_JUMP_N_SAMPLE),
        spacing: c.timestep_spacing,
        clip_sample: c.clip_sample.then_some(true),
        prediction: c.prediction,
        num: c.num,
        batch_size: c.batch_size,
        seed: c.seed,
        output: c.output,
        gif: c.gif,
        gif_frames: c.gif_frames,
        save_tensors: c.save_tensors,
        trace: c.trace,
        trace_steps: c.trace_steps,
        precision: c.dtype,
        progress: true,
    };
    let device = c.dev.device()?;
    super::emit_written(&sample::run(&req, &device)?)
}
