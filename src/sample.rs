//! `diffuse sample`: resolve a model (our training output, a diffusers directory, or a hub id
//! from the local cache), run a sampler over it, and write a grid, a trajectory GIF and tensors.
use crate::error::{Error, Result};
use crate::imageio;
use crate::rng::NoiseRng;
use crate::sampler::{self, SamplerConfig, SamplerKind, SchedulerConfig, TimestepSpacing};
use crate::unet;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A model on disk: its UNet directory and its scheduler config, if any.
#[derive(Clone, Debug)]
pub struct ModelLocation {
    pub unet_dir: PathBuf,
    pub scheduler_config: Option<PathBuf>,
}

fn find_scheduler(root: &Path) -> Option<PathBuf> {
    [
        root.join("scheduler").join("scheduler_config.json"),
        root.join("scheduler_config.json"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// Resolve `--model`: a directory (`unet/` + `scheduler/`, or a bare UNet2DModel folder), or a
/// hub id found in (or, unless HF_HUB_OFFLINE is set, fetched into) the hub cache.
pub fn locate(model: &str) -> Result<ModelLocation> {
    let p = Path::new(model);
    if p.is_dir() {
        let unet_dir = if p.join("unet").join("config.json").is_file() {
            p.join("unet")
        } else {
            p.to_path_buf()
        };
        if !unet_dir.join("config.json").is_file() {
            return Err(Error::format(
                p,
                "no config.json here or in unet/: not a UNet2DModel or diffusers pipeline directory",
            ));
        }
        return Ok(ModelLocation {
            unet_dir,
            scheduler_config: find_scheduler(p),
        });
    }
    if p.exists() {
        return Err(Error::invalid(format!(
            "--model {model}: a file, not a model directory"
        )));
    }
    if model.matches('/').count() == 1 && !model.starts_with('.') && !model.starts_with('/') {
        return crate::modelhub::fetch(model);
    }
    Err(Error::invalid(format!(
        "--model {model}: no such directory, and not a hub id of the form owner/name"
    )))
}

/// What to sample and where to write it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SampleRequest {
    pub model: String,
    pub kind: SamplerKind,
    pub steps: Option<usize>,
    pub eta: f64,
    pub spacing: Option<TimestepSpacing>,
    pub clip_sample: Option<bool>,
    pub prediction: Option<sampler::PredictionType>,
    pub num: usize,
    pub batch_size: Option<usize>,
    pub seed: u64,
    pub output: PathBuf,
    pub gif: Option<PathBuf>,
    /// GIF frames over the trajectory.
    pub gif_frames: usize,
    pub save_tensors: Option<PathBuf>,
    pub progress: bool,
}

/// The scheduler config from the model, with the request's overrides.
pub fn scheduler_config(loc: &ModelLocation, req: &SampleRequest) -> Result<SchedulerConfig> {
    let mut sc = match &loc.scheduler_config {
        Some(p) => SchedulerConfig::load(p)?,
        None => {
            tracing::info!("no scheduler_config.json found; using diffusers' DDPMScheduler defaults (linear 1e-4..0.02, T = 1000, epsilon)");
            SchedulerConfig::default()
        }
    };
    if let Some(s) = req.spacing {
        sc.timestep_spacing = Some(s);
    }
    if let Some(c) = req.clip_sample {
        sc.clip_sample = c;
    }
    if let Some(p) = req.prediction {
        sc.prediction_type = p;
    }
    Ok(sc)
}

/// Default steps: all T for DDPM, 50 for DDIM, 20 for DPM-Solver++.
pub fn default_steps(kind: SamplerKind, t: usize) -> usize {
    match kind {
        SamplerKind::Ddpm => t,
        SamplerKind::Ddim => 50.min(t),
        SamplerKind::DpmSolverPP => 20.min(t),
    }
}

/// Run the request; returns the files written.
pub fn run(req: &SampleRequest, device: &Device) -> Result<Vec<PathBuf>> {
    if req.num == 0 {
        return Err(Error::invalid("--num must be at least 1"));
    }
    let loc = locate(&req.model)?;
    let sc = scheduler_config(&loc, req)?;
    let steps = req
        .steps
        .unwrap_or_else(|| default_steps(req.kind, sc.num_train_timesteps));
    let scfg = SamplerConfig {
        kind: req.kind,
        steps,
        eta: req.eta,
        scheduler: sc,
    };
    scfg.validate()?;
    // Build the scheduler once up front so bad step counts fail before any model work.
    drop(sampler::build(&scfg)?);
    let t0 = std::time::Instant::now();
    let (ucfg, vm, _) = unet::load(&loc.unet_dir, device)?;
    // Inference copy: no autograd graph is recorded through the weights.
    let model = unet::frozen(&ucfg, &vm, device)?;
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "model loaded");
    let shape = ucfg.image_shape()?;
    let bs = req.batch_size.unwrap_or(req.num).clamp(1, req.num);
    let mut rng = NoiseRng::new(req.seed);
    let n_batches = req.num.div_ceil(bs);
    let pb = if req.progress {
        indicatif::ProgressBar::new((n_batches * steps) as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] step {pos}/{len} ({per_sec}, ETA {eta}) {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let every = (steps / req.gif_frames.max(1)).max(1);
    let mut samples = Vec::with_capacity(n_batches);
    // Trajectory frames of the first batch only: the grid people look at.
    let mut frames: Vec<Tensor> = Vec::new();
    for bi in 0..n_batches {
        let b = bs.min(req.num - bi * bs);
        let x_t = rng.randn((b, shape.0, shape.1, shape.2), device)?;
        if bi == 0 && req.gif.is_some() {
            frames.push(x_t.to_device(&Device::Cpu)?);
        }
        let mut f = |x: &Tensor, t: &Tensor| model.forward(x, t, false);
        let want_frames = bi == 0 && req.gif.is_some();
        let mut on_step = |info: &sampler::StepInfo| -> Result<()> {
            pb.inc(1);
            if want_frames
                && ((info.index + 1).is_multiple_of(every) || info.index + 1 == info.steps)
            {
                frames.push(info.sample.to_device(&Device::Cpu)?);
            }
            Ok(())
        };
        let x0 = sampler::sample(&mut f, &x_t, &scfg, &mut rng, Some(&mut on_step))?;
        samples.push(x0.to_device(&Device::Cpu)?);
    }
    pb.finish_and_clear();
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "sampled");
    let all = Tensor::cat(&samples, 0)?;
    let mut written = Vec::new();
    let grid = imageio::grid(&all, 2)?;
    imageio::save_png(&imageio::upscale(&grid, 256), &req.output)?;
    written.push(req.output.clone());
    if let Some(gif) = &req.gif {
        let imgs = frames
            .iter()
            .map(|f| imageio::grid(f, 2).map(|g| imageio::upscale(&g, 256)))
            .collect::<Result<Vec<_>>>()?;
        imageio::save_gif(&imgs, 100, gif)?;
        written.push(gif.clone());
    }
    if let Some(p) = &req.save_tensors {
        crate::fsutil::write_safetensors(p, &[("samples".to_string(), all)], None)?;
        written.push(p.clone());
    }
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "written");
    Ok(written)
}
