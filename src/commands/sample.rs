//! `diffuse sample`: resolve a model (our training output, a diffusers directory, or a hub id
//! from the local cache), run a sampler over it, and write a grid, a trajectory GIF and tensors.
use crate::core::rng::NoiseRng;
use crate::error::{Error, Result};
use crate::io::imageio;
use crate::io::output::{self, Outputs};
use crate::limits;
use crate::pipeline::{self, ModelLocation};
use crate::progress::Progress;
use crate::sampler::{self, SamplerConfig, SamplerKind, SchedulerConfig, TimestepSpacing};
use crate::unet;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What to sample and where to write it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SampleRequest {
    pub model: String,
    /// None: the model's scheduler_config.json `_class_name` decides (DDIM if we lack it).
    pub kind: Option<SamplerKind>,
    pub steps: Option<usize>,
    pub eta: f64,
    /// Karras sigmas (samplers with sigmas only).
    pub karras: bool,
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
    let mut sc = loc.scheduler()?;
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

/// Default steps: all T for DDPM, else the sampler's default (at most T).
pub fn default_steps(kind: SamplerKind, t: usize) -> usize {
    match kind {
        SamplerKind::Ddpm => t,
        k => k.default_steps().min(t),
    }
}

/// The sampler asked for, else the one the scheduler config names, else DDIM.
pub fn resolve_kind(asked: Option<SamplerKind>, sc: &SchedulerConfig) -> SamplerKind {
    asked.unwrap_or_else(|| match sc.sampler_kind() {
        Some(k) => {
            tracing::info!(
                "sampler: {} (the model's scheduler is {}; --sampler picks another)",
                k.name(),
                sc.class_name
            );
            k
        }
        None => {
            tracing::info!(
                "sampler: ddim (the model's scheduler {} is not one we have)",
                sc.class_name
            );
            SamplerKind::Ddim
        }
    })
}

/// Images per forward pass when `--batch-size` is not given: all of `--num` up to 256, so
/// small requests draw the same noise as before and large ones stream.
pub const DEFAULT_BATCH: usize = 256;

/// Check what can be checked without the model: counts and their limits.
fn validate(req: &SampleRequest) -> Result<()> {
    limits::check_count(
        "--num",
        req.num,
        limits::MAX_NUM,
        "draw more with several commands and seeds",
    )?;
    if let Some(b) = req.batch_size {
        limits::check_count("--batch-size", b, limits::MAX_NUM, "the bound of --num")?;
    }
    limits::check_gif_frames(req.gif_frames)
}

/// The safetensors header for one F32 tensor "samples" of `shape`, padded to 8 bytes as the
/// format's writers do; the data follows it batch by batch.
fn safetensors_header(shape: &[usize]) -> Vec<u8> {
    let n: usize = shape.iter().product();
    let json = serde_json::json!({
        "samples": {"dtype": "F32", "shape": shape, "data_offsets": [0, n * 4]}
    })
    .to_string();
    let mut header = json.into_bytes();
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out
}

/// Run the request; returns the files written. Batches are sampled one after another: the
/// first `limits::MAX_GRID` samples are kept for the grid, and `--save-tensors` streams every
/// sample to its file, so `--num` is bounded by disk, not memory. All outputs are written
/// together at the end, or none.
pub fn run(req: &SampleRequest, device: &Device) -> Result<Vec<PathBuf>> {
    validate(req)?;
    let loc = pipeline::locate(&req.model)?;
    let mut outs: Vec<&Path> = vec![&req.output];
    outs.extend(req.gif.as_deref());
    outs.extend(req.save_tensors.as_deref());
    let protected: Vec<&Path> = loc.root.as_deref().into_iter().collect();
    output::check_outputs(&outs, &[], &protected)?;
    let sc = scheduler_config(&loc, req)?;
    let kind = resolve_kind(req.kind, &sc);
    let steps = req
        .steps
        .unwrap_or_else(|| default_steps(kind, sc.num_train_timesteps));
    let scfg = SamplerConfig {
        kind,
        steps,
        eta: req.eta,
        karras: req.karras,
        scheduler: sc,
    };
    scfg.validate()?;
    // Build the scheduler once up front so bad step counts fail before any model work.
    let n_steps = sampler::build(&scfg)?.timesteps().len();
    let t0 = std::time::Instant::now();
    let (ucfg, vm, _) = unet::load(&loc.unet_dir, device)?;
    // Inference copy: no autograd graph is recorded through the weights.
    let model = unet::frozen(&ucfg, &vm, device)?;
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "model loaded");
    let shape = ucfg.image_shape()?;
    let bs = req.batch_size.unwrap_or(DEFAULT_BATCH).min(req.num);
    limits::check_batch_memory("--batch-size", bs, ucfg.bytes_per_image(false)?)?;
    let mut rng = NoiseRng::new(req.seed);
    let n_batches = req.num.div_ceil(bs);
    let mut pb = Progress::new(
        "sample",
        "step",
        (n_batches * n_steps) as u64,
        0,
        req.progress,
    );
    let every = (n_steps / req.gif_frames).max(1);
    let grid_n = req.num.min(limits::MAX_GRID);
    if grid_n < req.num {
        pb.say(&format!(
            "the grid shows the first {grid_n} of {} samples (--save-tensors keeps all)",
            req.num
        ));
    }
    let mut kept = Vec::new();
    // Trajectory frames of the first batch only: the grid people look at.
    let mut frames: Vec<Tensor> = Vec::new();
    let mut tensors = match &req.save_tensors {
        Some(p) => {
            let mut st = output::Staged::begin(p)?;
            st.write_all(&safetensors_header(&[req.num, shape.0, shape.1, shape.2]))
                .map_err(|e| st.error(e))?;
            Some(std::io::BufWriter::new(st))
        }
        None => None,
    };
    for bi in 0..n_batches {
        let b = bs.min(req.num - bi * bs);
        let x_t = rng.randn((b, shape.0, shape.1, shape.2), device)?;
        let want_frames = bi == 0 && req.gif.is_some();
        if want_frames {
            frames.push(x_t.to_device(&Device::Cpu)?);
        }
        let mut f = |x: &Tensor, t: &Tensor| model.forward(x, t, false);
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
        let x0 = x0.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        let bad = unet::io::count_non_finite(&x0)?;
        if bad > 0 {
            pb.abandon();
            return Err(Error::Runtime(format!(
                "the samples hold {bad} non-finite values (NaN or inf) in batch {}: the model's outputs diverged; nothing was written",
                bi + 1
            )));
        }
        if let Some(w) = tensors.as_mut() {
            let v: Vec<f32> = x0.flatten_all()?.to_vec1()?;
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            w.write_all(&bytes).map_err(|e| w.get_ref().error(e))?;
        }
        let have: usize = kept.iter().map(|t: &Tensor| t.dim(0).unwrap_or(0)).sum();
        if have < grid_n {
            kept.push(x0.narrow(0, 0, b.min(grid_n - have))?);
        }
    }
    pb.finish();
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "sampled");
    let mut outputs = Outputs::new();
    let grid = imageio::grid(&Tensor::cat(&kept, 0)?, 2)?;
    outputs.add(
        &req.output,
        &imageio::png_bytes(&imageio::upscale(&grid, 256), &req.output)?,
    )?;
    if let Some(gif) = &req.gif {
        let imgs = frames
            .iter()
            .map(|f| imageio::grid(f, 2).map(|g| imageio::upscale(&g, 256)))
            .collect::<Result<Vec<_>>>()?;
        outputs.add(gif, &imageio::gif_bytes(&imgs, 100, gif)?)?;
    }
    if let Some(w) = tensors {
        let st = w.into_inner().map_err(|e| {
            Error::Runtime(format!("could not finish the tensors file: {}", e.error()))
        })?;
        outputs.push(st);
    }
    let written = outputs.commit()?;
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "written");
    Ok(written)
}
