use super::data::DataArgs;
use super::DeviceArgs;
use clap::Args;
use diffuse::commands::eval::{self, EvalRequest, TrainFeaturesRequest};
use diffuse::commands::loss_by_t::{self, LossByTRequest, DEFAULT_BANDS, DEFAULT_IMAGES};
use diffuse::data::Split;
use diffuse::eval::ClassifierConfig;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EvalCmd {
    /// safetensors files from `diffuse sample --save-tensors` (key "samples", [N,1,28,28]).
    #[arg(required_unless_present_any = ["loss_by_t", "model", "train_features"], conflicts_with_all = ["loss_by_t", "train_features"])]
    samples: Vec<PathBuf>,
    /// Instead: train the feature network for --dataset on its feature-training images
    /// (never the evaluation reference) from --seed, and write it to -o (.safetensors).
    #[arg(long, conflicts_with_all = ["loss_by_t", "model", "features"])]
    train_features: bool,
    /// --train-features: passes over the training images [default: about 1,200 steps' worth].
    #[arg(long, requires = "train_features")]
    epochs: Option<usize>,
    /// A feature network from --train-features [default: the one shipped for --dataset:
    /// mnist, fashion-mnist].
    #[arg(long, value_name = "FILE")]
    features: Option<PathBuf>,
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
    /// --loss-by-t: the chart (.png or .svg) [default: loss_by_t.png]; --train-features: the
    /// weights [default: features.safetensors].
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Print the report as JSON (for machines) instead of the table.
    #[arg(long)]
    json: bool,
    /// The dataset (mnist, fashion-mnist, cifar10) whose evaluation reference samples are
    /// measured against; for --loss-by-t, the real images.
    #[command(flatten)]
    data: DataArgs,
    /// --train-features: seed of the network's weights and data order; --loss-by-t: of the
    /// timesteps and noise.
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
            output: c.output.unwrap_or_else(|| "loss_by_t.png".into()),
            progress: true,
        };
        let r = loss_by_t::run(&req, &device)?;
        if c.json {
            return super::emit(&(serde_json::to_string_pretty(&r)? + "\n"));
        }
        super::emit(&r.table())?;
        return super::emit_written(&r.written);
    }
    if c.output.is_some() && !c.train_features {
        return Err(diffuse::Error::invalid(
            "-o names --loss-by-t's chart or --train-features' weights; eval of samples prints its report",
        )
        .into());
    }
    if c.train_features {
        let req = TrainFeaturesRequest {
            data,
            config: ClassifierConfig {
                seed: c.seed,
                epochs: c.epochs,
                ..ClassifierConfig::default()
            },
            output: c.output.unwrap_or_else(|| "features.safetensors".into()),
            command: std::iter::once("diffuse".to_string())
                .chain(std::env::args().skip(1))
                .collect::<Vec<_>>()
                .join(" "),
        };
        let r = eval::train_features(&req, &device)?;
        if c.json {
            return super::emit(&(serde_json::to_string_pretty(&r)? + "\n"));
        }
        super::emit(&format!(
            "{} feature network: trained on {} in {:.0} s; {:.2}% accurate on the reference\n",
            r.info.dataset,
            r.info.trained_on,
            r.seconds,
            100.0 * r.info.reference_accuracy
        ))?;
        return super::emit_written(std::slice::from_ref(&r.written));
    }
    let req = EvalRequest {
        samples: c.samples,
        data,
        features: c.features,
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
