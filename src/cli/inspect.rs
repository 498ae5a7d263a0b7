use clap::Args;

#[derive(Args, Debug)]
pub struct InspectCmd {
    /// Model directory (config.json + diffusion_pytorch_model.safetensors), a diffusers
    /// pipeline directory with unet/, a config.json, or a preset (mnist, cifar10).
    model: String,
}

pub fn run(c: InspectCmd) -> anyhow::Result<()> {
    super::emit(&diffuse::commands::inspect::report(&c.model)?)
}
