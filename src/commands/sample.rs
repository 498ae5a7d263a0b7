//! `diffuse sample`: resolve a model (our training output, a diffusers directory, or a hub id
//! from the local cache), run a sampler over it, and write a grid, a trajectory GIF and tensors.
use crate::core::rng::NoiseRng;
use crate::error::{Error, Result};
use crate::io::imageio;
use crate::io::output::{self, Outputs};
use crate::limits;
use crate::pipeline::{self, ModelLocation};
use crate::progress::Progress;
use crate::sampler::guidance;
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

/// Guidance for class-conditional models with a null class when none is given: on the
/// default class-conditional MNIST model, 100 samples per class are read as the class asked
/// for 83% of the time at w = 1, 96% at 2, 97% at 4 (README, "Steering").
pub const DEFAULT_GUIDANCE: f64 = 4.0;

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
    limits::check_gif_frames(req.gif_frames)
}

/// Class labels and guidance for a class-conditional model.
struct Conditioning {
    classes: pipeline::Classes,
    /// A fixed class, or all in order (None with `all`), or random (both false).
    fixed: Option<u32>,
    all: bool,
    null: Option<u32>,
}

impl Conditioning {
    fn new(
        req: &SampleRequest,
        loc: &ModelLocation,
        embeds: Option<usize>,
    ) -> Result<Option<Self>> {
        let Some(k) = embeds else {
            if req.class.is_some() || req.guidance.iter().any(|w| *w != 1.0) {
                return Err(Error::invalid(
                    "--class and --guidance need a class-conditional model (num_class_embeds); this one is unconditional",
                ));
            }
            return Ok(None);
        };
        let classes = loc.classes(k)?;
        let null = classes.null_class.map(|n| n as u32);
        if null.is_none() && req.guidance.iter().any(|w| *w != 1.0) {
            return Err(Error::invalid(
                "guidance other than 1 needs a null class (classes.json null_class, from training with --cond-drop); this model has none",
            ));
        }
        let (fixed, all) = match req.class.as_deref() {
            None => {
                tracing::info!(
                    "no --class: classes drawn uniformly ({})",
                    classes.names.join(", ")
                );
                (None, false)
            }
            Some(c) if c.eq_ignore_ascii_case("all") => (None, true),
            Some(c) => (Some(classes.resolve(c)?), false),
        };
        Ok(Some(Self {
            classes,
            fixed,
            all,
            null,
        }))
    }

    /// Labels of samples `start..start + b` of `num`.
    fn labels(&self, start: usize, b: usize, num: usize, rng: &mut NoiseRng) -> Vec<u32> {
        let k = self.classes.names.len();
        match (self.fixed, self.all) {
            (Some(c), _) => vec![c; b],
            (None, true) => (start..start + b).map(|j| (j * k / num) as u32).collect(),
            (None, false) => rng
                .uniform_below(b, k as u64)
                .into_iter()
                .map(|v| v as u32)
                .collect(),
        }
    }
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

/// The init image for img2img as a [1, C, H, W] tensor of the model's shape: resized and
/// centre-cropped, gray or RGB converted to the model's channels.
fn init_image(path: &Path, shape: (usize, usize, usize), device: &Device) -> Result<Tensor> {
    let (c, h, w) = shape;
    if h != w {
        return Err(Error::invalid(format!(
            "--init needs a square model (this one is {h}x{w})"
        )));
    }
    let img = imageio::load_image(path, Some(h as u32), device)?;
    let have = img.dim(0)?;
    let img = match (have, c) {
        (a, b) if a == b => img,
        (3, 1) => img.mean_keepdim(0)?,
        (1, 3) => img.repeat((3, 1, 1))?,
        (a, b) => {
            return Err(Error::format(
                path,
                format!("has {a} channels; the model takes {b}"),
            ))
        }
    };
    Ok(img.unsqueeze(0)?)
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
    let inputs: Vec<&Path> = req.init.as_deref().into_iter().collect();
    output::check_outputs(&outs, &inputs, &protected)?;
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
    // img2img's first step, checked before any model work.
    let start = match &req.init {
        Some(_) => sampler::img2img_start(sampler::build(&scfg)?.as_ref(), steps, req.strength)?,
        None => 0,
    };
    let t0 = std::time::Instant::now();
    let (ucfg, vm, _) = unet::load(&loc.unet_dir, device)?;
    // Inference copy: no autograd graph is recorded through the weights.
    let model = unet::frozen(&ucfg, &vm, device)?;
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "model loaded");
    let shape = ucfg.image_shape()?;
    let bs = req.batch_size.unwrap_or(DEFAULT_BATCH).min(req.num);
    limits::check_batch_memory("--batch-size", bs, ucfg.bytes_per_image(false)?)?;
    let cond = Conditioning::new(req, &loc, model.num_class_embeds())?;
    let init = match &req.init {
        Some(p) => Some(init_image(p, shape, device)?),
        None => None,
    };
    let n_batches = req.num.div_ceil(bs);
    let scales: Vec<f64> = if !req.guidance.is_empty() {
        req.guidance.clone()
    } else if cond.as_ref().is_some_and(|c| c.null.is_some()) {
        tracing::info!("guidance {DEFAULT_GUIDANCE} (the default for a model with a null class)");
        vec![DEFAULT_GUIDANCE]
    } else {
        vec![1.0]
    };
    let sweeps = scales.len();
    let mut pb = Progress::new(
        "sample",
        "step",
        (sweeps * n_batches * (n_steps - start)) as u64,
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
            // SDEdit: the init image noised to the start level by the core's closed form,
            // then the ordinary loop from there.
            let img2img = match &init {
                Some(img) => {
                    let s = sampler::build(&scfg)?;
                    let x0 = img
                        .broadcast_as((b, shape.0, shape.1, shape.2))?
                        .contiguous()?;
                    let x = s.add_noise(start, &x0, &x_t)?;
                    Some((s, x))
                }
                None => None,
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
                Ok(())
            };
            let mut plain = |x: &Tensor, t: &Tensor| model.forward(x, t, false);
            let mut cond_model =
                |x: &Tensor, t: &Tensor, l: &Tensor| model.forward_cond(x, t, Some(l), false);
            let labels = cond
                .as_ref()
                .map(|c| c.labels(bi * bs, b, req.num, &mut label_rng));
            let mut guided_model;
            let f: &mut sampler::Model = match (&cond, labels) {
                (Some(c), Some(l)) => {
                    let l = Tensor::new(l.as_slice(), device)?;
                    guided_model = guidance::guided(&mut cond_model, &l, c.null.unwrap_or(0), w)?;
                    &mut guided_model
                }
                _ => &mut plain,
            };
            let x0 = match img2img {
                Some((mut s, x)) => {
                    sampler::run_from(s.as_mut(), f, &x, start, &mut rng, Some(&mut on_step))?
                }
                None => sampler::sample(f, &x_t, &scfg, &mut rng, Some(&mut on_step))?,
            };
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
