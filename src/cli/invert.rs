use super::DeviceArgs;
use clap::Args;
use diffuse::commands::invert::{
    self, EditSettings, InvertRequest, DEFAULT_INVERT_STEPS, DEFAULT_REFINE,
};
use std::path::PathBuf;

/// The flags `invert` and `interpolate` share.
#[derive(Args, Debug)]
pub struct EditArgs {
    /// A directory written by `diffuse train`, a diffusers model directory, or a hub id.
    #[arg(long)]
    model: String,
    /// DDIM steps of the inversion(s) and of each drawing.
    #[arg(long, default_value_t = DEFAULT_INVERT_STEPS)]
    steps: usize,
    /// Fixed-point iterations per inversion step, each one more model evaluation: they make
    /// the step the exact inverse of DDIM's step down (0: diffusers' DDIMInverseScheduler).
    #[arg(long, default_value_t = DEFAULT_REFINE)]
    refine: usize,
    /// Class-conditional models: the class [default: the null class].
    #[arg(long)]
    class: Option<String>,
    /// Classifier-free guidance scale of both directions [default: 1, which reconstructs
    /// best].
    #[arg(long, allow_negative_numbers = true)]
    guidance: Option<f64>,
}

impl EditArgs {
    pub fn settings(self) -> EditSettings {
        EditSettings {
            model: self.model,
            steps: self.steps,
            refine: self.refine,
            class: self.class,
            guidance: self.guidance.into_iter().collect(),
        }
    }
}

#[derive(Args, Debug)]
pub struct InvertCmd {
    /// Images to invert (any size or channels; resized, cropped and converted to the
    /// model's), at most 256.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    #[command(flatten)]
    edit: EditArgs,
    /// The latents x_T (safetensors, key "latent", [N, C, H, W]).
    #[arg(short, long, value_name = "FILE", default_value = "latent.safetensors")]
    output: PathBuf,
    /// A grid of what DDIM draws back from the latents.
    #[arg(long, value_name = "FILE", default_value = "reconstruction.png")]
    reconstruction: PathBuf,
    #[command(flatten)]
    dev: DeviceArgs,
}

pub fn run(c: InvertCmd) -> anyhow::Result<()> {
    let req = InvertRequest {
        images: c.images,
        edit: c.edit.settings(),
        output: c.output,
        reconstruction: c.reconstruction,
        progress: true,
    };
    let device = c.dev.device()?;
    let r = invert::run(&req, &device)?;
    super::emit(&format!(
        "reconstruction: RMSE {:.4}, max |error| {:.4} (pixels in [-1, 1])\n",
        r.rmse, r.max_error
    ))?;
    super::emit_written(&r.written)
}
