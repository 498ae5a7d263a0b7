use super::data::DataArgs;
use super::DeviceArgs;
use clap::Args;
use diffuse::commands::eval::{self, EvalRequest};
use diffuse::commands::loss_by_t::{self, LossByTRequest, DEFAULT_BANDS, DEFAULT_IMAGES};
use diffuse::data::Split;
use diffuse::eval::ClassifierConfig;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EvalCmd {
    /// safetensors files from `diffuse sample --save-tensors` (key "samples", [N,1,28,28]).
    #[arg(required_unless_present_any = ["loss_by_t", "model"], conflicts_with = "loss_by_t")]
    samples: Vec<PathBuf>,
    /// Instead: the denoising loss of --model on real images (the test split unless --split
    /// says otherwise) in --buckets equal bands of t, the same t and noise for every model;
    /// a table and a chart (-o).
    #[arg(long, requires = "model")]
    loss_by_t: bool,
    /// A model (a directory from `diffuse train`, a diffusers directory or a hub id): draw -n
    /// samples with its default sampler and score them too (a class-conditional model draws
    /// every class equally often, and its accuracy on them is reported); with --loss-by-t,
    /// the model measured.
    #[arg(long)]
    model: Option<String>,
    /// --loss-by-t: bands of t.
    #[arg(long, default_value_t = DEFAULT_BANDS, requires = "loss_by_t")]
    buckets: usize,
    /// Samples drawn from --model [default: 1000]; with --loss-by-t, real images measured
    /// (each once per band) [default: 512].
    #[arg(short = 'n', long)]
    num: Option<usize>,
    /// --loss-by-t: images per forward pass.
    #[arg(long, default_value_t = 256, requires = "loss_by_t")]
    batch_size: usize,
    /// --loss-by-t: the chart (.png or .svg).
    #[arg(
        short,
        long,
        value_name = "FILE",
        default_value = "loss_by_t.png",
        requires = "loss_by_t"
    )]
    output: PathBuf,
    /// Print the report as JSON (for machines) instead of the table.
    #[arg(long)]
    json: bool,
    /// Labelled digits (mnist or fashion-mnist): the reference set and the feature
    /// classifier's training data; for --loss-by-t, the real images.
    #[command(flatten)]
    data: DataArgs,
    /// Seed of the feature classifier (scores compare only under the same seed); for
    /// --loss-by-t, of the timesteps and noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    dev: DeviceArgs,
}

pub fn run(c: EvalCmd) -> anyhow::Result<()> {
    let mut data = c.data.config();
    data.hflip = Some(false);
    let device = c.dev.device()?;
    if c.loss_by_t {
        data.split = c.data.split.unwrap_or(Split::Test);
        let req = LossByTRequest {
            model: c.model.unwrap_or_default(),
            data,
            num: c.num.unwrap_or(DEFAULT_IMAGES),
            bands: c.buckets,
            seed: c.seed,
            batch_size: c.batch_size,
            output: c.output,
            progress: true,
        };
        let r = loss_by_t::run(&req, &device)?;
        if c.json {
            return super::emit(&(serde_json::to_string_pretty(&r)? + "\n"));
        }
        super::emit(&r.table())?;
        return super::emit_written(&r.written);
    }
    let req = EvalRequest {
        samples: c.samples,
        data,
        classifier: ClassifierConfig {
            seed: c.seed,
            ..ClassifierConfig::default()
        },
        model: c.model,
        num: c.num.unwrap_or(eval::DEFAULT_MODEL_SAMPLES),
        progress: true,
    };
    let report = eval::run(&req, &device)?;
    if c.json {
        return super::emit(&(serde_json::to_string_pretty(&report)? + "\n"));
    }
    super::emit(&report.table())
}
