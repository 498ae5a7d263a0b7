use super::data::DataArgs;
use super::DeviceArgs;
use clap::Args;
use diffuse::commands::eval::{self, EvalRequest};
use diffuse::eval::ClassifierConfig;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EvalCmd {
    /// safetensors files from `diffuse sample --save-tensors` (key "samples", [N,1,28,28]).
    #[arg(required = true)]
    samples: Vec<PathBuf>,
    /// Labelled digits (mnist or fashion-mnist): the reference set and the feature
    /// classifier's training data.
    #[command(flatten)]
    data: DataArgs,
    /// Seed of the feature classifier (scores compare only under the same seed).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    dev: DeviceArgs,
}

pub fn run(c: EvalCmd) -> anyhow::Result<()> {
    let mut data = c.data.config();
    data.hflip = Some(false);
    let req = EvalRequest {
        samples: c.samples,
        data,
        classifier: ClassifierConfig {
            seed: c.seed,
            ..ClassifierConfig::default()
        },
    };
    let device = c.dev.device()?;
    super::emit(&eval::run(&req, &device)?.table())
}
