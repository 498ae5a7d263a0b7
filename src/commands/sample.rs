//! `diffuse sample`: resolve a model (our training output, a diffusers directory, or a hub id
//! from the local cache), run a sampler over it, and write a grid, a trajectory GIF and tensors.
use crate::conditioning::{self, Conditioning, NoClass, DEFAULT_GUIDANCE};
use crate::core::rng::NoiseRng;
use crate::error::{Error, Result};
use crate::io::imageio;
use crate::io::mask::{self, MaskSpec};
use crate::io::output::{self, Outputs};
use crate::limits;
use crate::pipeline::{self, ModelLocation};
use crate::progress::Progress;
use crate::sampler::repaint::{self, RePaint, RePaintConfig};
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
    /// Class-conditional models: a class name or index, or "all" (balanced, in order);
    /// None draws classes uniformly.
    pub class: Option<String>,
    /// Classifier-free guidance scales; several make a sweep grid (one column each). Empty:
    /// `DEFAULT_GUIDANCE` for a model with a null class, else 1.
    pub guidance: Vec<f64>,
    /// img2img (SDEdit): start from this image, noised to the level `strength` selects.
    pub init: Option<PathBuf>,
    /// Share of the steps run from the init image, in (0, 1].
    pub strength: f64,
    /// Inpainting (RePaint) of the init image: a mask image (white keeps) or a built-in
    /// region to inpaint (left, right, top, bottom, center).
    pub mask: Option<String>,
    /// RePaint: inference steps gone back up at each jump.
    pub jump_length: usize,
    /// RePaint: passes through each jump point.
    pub jump_n_sample: usize,
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
    /// The x̂0 trace: x_t beside the model's x̂0 at `trace_steps` steps of the first few
    /// samples, as a PNG here and a GIF beside it (same name, .gif).
    pub trace: Option<PathBuf>,
    pub trace_steps: usize,
    /// The precision the model runs in (weights cast on load); f32 is exact to diffusers.
    #[serde(default)]
    pub precision: unet::Precision,
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

/// RePaint's default steps down: diffusers' pipeline uses 250 with jumps of 10 passed 10
/// times (2,410 model evaluations); 100 with jumps of 10 passed 5 times is 460 evaluations.
pub const REPAINT_STEPS: usize = 100;
pub const REPAINT_JUMP_LENGTH: usize = 10;
pub const REPAINT_JUMP_N_SAMPLE: usize = 5;

/// How the samples are drawn: a sampler (from noise, or img2img from `start`), or RePaint.
enum Plan {
    Sampler {
        cfg: Box<SamplerConfig>,
        /// Steps in the sampler's run.
        n: usize,
        start: usize,
    },
    RePaint(RePaint),
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
    if req.guidance.iter().any(|w| !w.is_finite()) {
        return Err(Error::invalid("--guidance needs finite scales"));
    }
    if req.guidance.len() > 16 {
        return Err(Error::invalid(format!(
            "--guidance: {} scales; at most 16 columns in a sweep",
            req.guidance.len()
        )));
    }
    if req.guidance.len() > 1 && (req.save_tensors.is_some() || req.gif.is_some()) {
        return Err(Error::invalid(
            "a --guidance sweep writes a grid only; give one scale with --save-tensors or --gif",
        ));
    }
    if req.guidance.len() > 1 && req.num * req.guidance.len() > limits::MAX_GRID {
        return Err(Error::invalid(format!(
            "a --guidance sweep of {} scales x {} samples exceeds the {}-image grid",
            req.guidance.len(),
            req.num,
            limits::MAX_GRID
        )));
    }
    if !(req.strength > 0.0 && req.strength <= 1.0) {
        return Err(Error::invalid(format!(
            "--strength {} is outside (0, 1]",
            req.strength
        )));
    }
    limits::check_count(
        "--trace-steps",
        req.trace_steps,
        MAX_TRACE_STEPS,
        "one row per step",
    )?;
    limits::check_gif_frames(req.gif_frames)
}

/// Rows of a trace, at most.
pub const MAX_TRACE_STEPS: usize = 100;

/// Samples shown in a trace: x_t and x̂0 side by side for each.
pub const TRACE_SAMPLES: usize = 4;

/// Where the trace GIF goes: beside the trace PNG.
pub fn trace_gif(trace: &Path) -> PathBuf {
    trace.with_extension("gif")
}

/// `k` step positions spread evenly over `n` steps, first and last included.
fn spread(n: usize, k: usize) -> Vec<usize> {
    if k >= n {
        return (0..n).collect();
    }
    if k == 1 {
        return vec![n - 1];
    }
    let mut v: Vec<usize> = (0..k)
        .map(|j| ((j * (n - 1)) as f64 / (k - 1) as f64).round() as usize)
        .collect();
    v.dedup();
    v
}

/// One trace row per recorded step: x_t and x̂0 of each traced sample, labelled.
fn trace_rows(rows: &[(f64, Tensor, Tensor)]) -> Result<Vec<image::RgbImage>> {
    rows.iter()
        .map(|(t, x, x0)| {
            let mut panels = Vec::new();
            let mut labels = Vec::new();
            for j in 0..x.dim(0)? {
                panels.push(imageio::tensor_to_rgb(&x.get(j)?)?);
                panels.push(imageio::tensor_to_rgb(&x0.get(j)?)?);
                labels.push(if j == 0 {
                    format!("t={}", (t * 10.0).round() / 10.0)
                } else {
                    "x_t".to_string()
                });
                labels.push("pred x0".to_string());
            }
            crate::io::plot::labelled_strip(&panels, &labels, 84)
        })
        .collect()
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
    let mask_spec = req.mask.as_deref().map(MaskSpec::parse);
    let mut outs: Vec<&Path> = vec![&req.output];
    outs.extend(req.gif.as_deref());
    outs.extend(req.save_tensors.as_deref());
    let trace_gif_path = req.trace.as_deref().map(trace_gif);
    outs.extend(req.trace.as_deref());
    outs.extend(trace_gif_path.as_deref());
    let protected: Vec<&Path> = loc.root.as_deref().into_iter().collect();
    let mut inputs: Vec<&Path> = req.init.as_deref().into_iter().collect();
    inputs.extend(mask_spec.as_ref().and_then(|m| m.file()));
    output::check_outputs(&outs, &inputs, &protected)?;
    let sc = scheduler_config(&loc, req)?;
    // Everything about the run is checked here, before any model work.
    let plan = match (&mask_spec, &req.init) {
        (Some(_), None) => {
            return Err(Error::invalid("--mask needs --init (the image to inpaint)"))
        }
        (Some(_), Some(_)) => {
            if let Some(k) = req.kind {
                return Err(Error::invalid(format!(
                    "--mask inpaints with RePaint (DDIM steps with jumps back up); --sampler {} does not apply",
                    k.name()
                )));
            }
            let rc = RePaintConfig {
                steps: req
                    .steps
                    .unwrap_or(REPAINT_STEPS.min(sc.num_train_timesteps)),
                jump_length: req.jump_length,
                jump_n_sample: req.jump_n_sample,
                eta: req.eta,
            };
            tracing::info!(
                "inpainting with RePaint: {} steps, jump length {}, {} passes per jump ({} model evaluations)",
                rc.steps,
                rc.jump_length,
                rc.jump_n_sample,
                rc.evaluations()
            );
            Plan::RePaint(RePaint::new(&rc, &sc)?)
        }
        (None, init) => {
            let kind = resolve_kind(req.kind, &sc);
            let steps = req
                .steps
                .unwrap_or_else(|| default_steps(kind, sc.num_train_timesteps));
            let cfg = SamplerConfig {
                kind,
                steps,
                eta: req.eta,
                karras: req.karras,
                scheduler: sc,
            };
            cfg.validate()?;
            // Build the scheduler once so bad step counts fail here.
            let s = sampler::build(&cfg)?;
            let start = match init {
                Some(_) => sampler::img2img_start(s.as_ref(), steps, req.strength)?,
                None => 0,
            };
            Plan::Sampler {
                n: s.timesteps().len(),
                cfg: Box::new(cfg),
                start,
            }
        }
    };
    let n_steps = match &plan {
        Plan::Sampler { n, start, .. } => n - start,
        Plan::RePaint(r) => r.timesteps().len(),
    };
    if device.is_cpu() && req.precision == unet::Precision::Bf16 {
        return Err(Error::invalid(
            "--dtype bf16 needs a GPU: Candle's CPU backend has no bf16 matmul (use f32 on the CPU)",
        ));
    }
    let t0 = std::time::Instant::now();
    let (ucfg, vm, _) = unet::load(&loc.unet_dir, device)?;
    // Inference copy: no autograd graph is recorded through the weights.
    let model = unet::frozen_as(&ucfg, &vm, req.precision, device)?;
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "model loaded");
    let shape = ucfg.image_shape()?;
    let bs = req.batch_size.unwrap_or(DEFAULT_BATCH).min(req.num);
    limits::check_batch_memory("--batch-size", bs, ucfg.bytes_per_image(false)?)?;
    let cond = Conditioning::new(
        req.class.as_deref(),
        &req.guidance,
        &loc,
        model.num_class_embeds(),
        NoClass::Uniform,
    )?;
    let init = match &req.init {
        Some(p) => Some(imageio::load_for_model(p, shape, device)?),
        None => None,
    };
    let mask = match (&mask_spec, &req.init) {
        (Some(m), Some(p)) => Some(mask::load(m, p, shape.1, device)?),
        _ => None,
    };
    // Said once everything is checked, so a failing command prints its error alone.
    if let Plan::Sampler { cfg, .. } = &plan {
        if cfg.eta != 0.0 && cfg.kind != SamplerKind::Ddim {
            tracing::warn!("--eta applies to ddim only; {} ignores it", cfg.kind.name());
        }
    }
    if device.is_cpu() && req.precision == unet::Precision::F16 {
        tracing::warn!(
            "--dtype f16 on the CPU runs Candle's generic ops, ~13x slower than f32's kernels"
        );
    }
    // With cuDNN in use, half precision runs on its tensor cores (src/kernels/cudnn_conv.rs);
    // otherwise on Candle's convolutions, slower than our f32 ones.
    if device.is_cuda() && req.precision != unet::Precision::F32 && !crate::kernels::cudnn_in_use()
    {
        tracing::warn!(
            "--dtype {} on CUDA without cuDNN runs Candle's convolutions; f32 runs ours and is faster (DIFFUSE_TF32=1 faster still)",
            req.precision.dtype().as_str()
        );
    }
    let n_batches = req.num.div_ceil(bs);
    let scales = conditioning::scales(cond.as_ref(), &req.guidance, DEFAULT_GUIDANCE);
    let sweeps = scales.len();
    let mut pb = Progress::new(
        "sample",
        "step",
        (sweeps * n_batches * n_steps) as u64,
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
    // One list of grid samples per guidance scale.
    let mut kept: Vec<Vec<Tensor>> = vec![Vec::new(); sweeps];
    // Trajectory frames of the first batch only: the grid people look at.
    let mut frames: Vec<Tensor> = Vec::new();
    // The trace of the first batch: (t, x_t, x̂0) of its first samples at the chosen steps.
    let traced = spread(n_steps, req.trace_steps);
    let mut trace: Vec<(f64, Tensor, Tensor)> = Vec::new();
    let mut tensors = match &req.save_tensors {
        Some(p) => {
            let mut st = output::Staged::begin(p)?;
            st.write_all(&safetensors_header(&[req.num, shape.0, shape.1, shape.2]))
                .map_err(|e| st.error(e))?;
            Some(std::io::BufWriter::new(st))
        }
        None => None,
    };
    for (wi, &w) in scales.iter().enumerate() {
        // Every scale of a sweep starts from the same noise and labels.
        let mut rng = NoiseRng::new(req.seed);
        let mut label_rng = NoiseRng::new(req.seed ^ 0x6C61_6265_6C73);
        for bi in 0..n_batches {
            let b = bs.min(req.num - bi * bs);
            let x_t = rng.randn((b, shape.0, shape.1, shape.2), device)?;
            let want_frames = wi == 0 && bi == 0 && req.gif.is_some();
            let want_trace = wi == 0 && bi == 0 && req.trace.is_some();
            let mut done = 0usize;
            // SDEdit: the init image noised to the start level by the core's closed form,
            // then the ordinary loop from there.
            let img2img = match (&plan, &init) {
                (Plan::Sampler { cfg, start, .. }, Some(img)) => {
                    let s = sampler::build(cfg)?;
                    let x0 = img
                        .broadcast_as((b, shape.0, shape.1, shape.2))?
                        .contiguous()?;
                    let x = s.add_noise(*start, &x0, &x_t)?;
                    Some((s, x))
                }
                _ => None,
            };
            if want_frames {
                let first = img2img.as_ref().map_or(&x_t, |(_, x)| x);
                frames.push(first.to_device(&Device::Cpu)?);
            }
            let mut on_step = |info: &sampler::StepInfo| -> Result<()> {
                pb.inc(1);
                if want_frames
                    && ((info.index + 1).is_multiple_of(every) || info.index + 1 == info.steps)
                {
                    frames.push(info.sample.to_device(&Device::Cpu)?);
                }
                if want_trace && traced.contains(&done) {
                    let k = b.min(TRACE_SAMPLES);
                    let cpu = |x: &Tensor| x.narrow(0, 0, k)?.to_device(&Device::Cpu);
                    trace.push((info.t, cpu(info.input)?, cpu(info.pred_original_sample)?));
                }
                done += 1;
                Ok(())
            };
            let labels = cond
                .as_ref()
                .map(|c| c.labels(bi * bs, b, req.num, &mut label_rng));
            let steer = cond.as_ref().zip(labels.as_deref());
            let x0 =
                conditioning::with_model(&model, steer, w, device, |f| match (&plan, img2img) {
                    (Plan::RePaint(rp), _) => {
                        let (known, keep) = init
                            .as_ref()
                            .zip(mask.as_ref())
                            .ok_or_else(|| Error::invalid("RePaint needs an image and a mask"))?;
                        repaint::inpaint(rp, f, &x_t, known, keep, &mut rng, Some(&mut on_step))
                    }
                    (Plan::Sampler { start, .. }, Some((mut s, x))) => {
                        sampler::run_from(s.as_mut(), f, &x, *start, &mut rng, Some(&mut on_step))
                    }
                    (Plan::Sampler { cfg, .. }, None) => {
                        sampler::sample(f, &x_t, cfg, &mut rng, Some(&mut on_step))
                    }
                })?;
            let x0 = x0.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
            let bad = unet::io::count_non_finite(&x0)?;
            if bad > 0 {
                pb.abandon();
                return Err(Error::Runtime(format!(
                    "the samples hold {bad} non-finite values (NaN or inf) in batch {}: the model's outputs diverged; nothing was written",
                    bi + 1
                )));
            }
            if let Some(wr) = tensors.as_mut() {
                let v: Vec<f32> = x0.flatten_all()?.to_vec1()?;
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                wr.write_all(&bytes).map_err(|e| wr.get_ref().error(e))?;
            }
            let have: usize = kept[wi]
                .iter()
                .map(|t: &Tensor| t.dim(0).unwrap_or(0))
                .sum();
            if have < grid_n {
                kept[wi].push(x0.narrow(0, 0, b.min(grid_n - have))?);
            }
        }
    }
    pb.finish();
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "sampled");
    let mut outputs = Outputs::new();
    let grid = if sweeps > 1 {
        // A sweep: one row per sample, one column per guidance scale.
        let sets = kept
            .iter()
            .map(|k| Tensor::cat(k, 0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let tiles = Tensor::stack(&sets, 1)?.flatten_to(1)?;
        imageio::grid_cols(&tiles, 2, sweeps as u32)?
    } else if cond.as_ref().is_some_and(|c| c.all)
        && req
            .num
            .is_multiple_of(cond.as_ref().map_or(1, |c| c.classes.names.len()))
    {
        // --class all: one row per class.
        let k = cond.as_ref().map_or(1, |c| c.classes.names.len());
        imageio::grid_cols(&Tensor::cat(&kept[0], 0)?, 2, (req.num / k) as u32)?
    } else {
        imageio::grid(&Tensor::cat(&kept[0], 0)?, 2)?
    };
    outputs.add(
        &req.output,
        &imageio::png_bytes(&imageio::upscale(&grid, 256), &req.output)?,
    )?;
    if let (Some(png), Some(gif)) = (&req.trace, &trace_gif_path) {
        let rows = trace_rows(&trace)?;
        let first = rows
            .first()
            .ok_or_else(|| Error::Runtime("the trace recorded no step".into()))?;
        let (w, h) = (first.width(), first.height());
        let mut all = image::RgbImage::new(w, h * rows.len() as u32);
        for (i, r) in rows.iter().enumerate() {
            image::imageops::replace(&mut all, r, 0, (i as u32 * h) as i64);
        }
        outputs.add(png, &imageio::png_bytes(&all, png)?)?;
        outputs.add(gif, &imageio::gif_bytes(&rows, 400, gif)?)?;
    }
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
