//! `diffuse eval`: sample quality of saved samples (`diffuse sample --save-tensors`) or of a
//! model's draws against a dataset's evaluation reference, in the feature space of a small
//! classifier (see `eval`); and `--train-features`, which trains that classifier.
use crate::commands::sample::{self, SampleRequest};
use crate::data::DataConfig;
use crate::error::{Error, Result};
use crate::eval::classifier::FEATURES;
pub use crate::eval::evaluator::EvalRow;
use crate::eval::{features, Classifier, ClassifierConfig, EvalSets, Evaluator, FeatureInfo};
use crate::limits;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalRequest {
    /// safetensors files holding `samples` [N, C, H, W] in [-1, 1].
    pub samples: Vec<PathBuf>,
    /// The dataset whose evaluation reference the samples are measured against.
    pub data: DataConfig,
    /// A feature network from `--train-features`; None: the one shipped for the dataset.
    pub features: Option<PathBuf>,
    /// Also draw `num` samples from this model with its default sampler and score them; a
    /// class-conditional model draws every class equally often and its accuracy on the
    /// classes asked for is reported.
    pub model: Option<String>,
    pub num: usize,
    pub progress: bool,
}

/// Samples drawn from `--model` when `-n` is not given.
pub const DEFAULT_MODEL_SAMPLES: usize = 1000;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalReport {
    pub dataset: String,
    /// The feature network: where it came from and what it trained on.
    pub features: String,
    /// Images in the reference, and which they are.
    pub reference: usize,
    pub reference_images: String,
    /// The feature network's accuracy on the reference.
    pub classifier_accuracy: f64,
    /// Real images (never in the reference) scored like a sample set: the floor at each
    /// sample set's n (at most the floor's pool).
    pub real: Vec<EvalRow>,
    pub rows: Vec<EvalRow>,
}

/// Load a samples file: `samples` [N, C, H, W] of the feature network's shape, clamped to
/// [-1, 1].
fn load_samples(p: &PathBuf, dims: (usize, usize, usize), device: &Device) -> Result<Tensor> {
    let meta = std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
    let (c, h, w) = dims;
    // f32 images: 10M 28x28 ones would be 31 GB; refuse files beyond MAX_NUM images.
    let max = (limits::MAX_NUM as u64) * (c * h * w * 4) as u64 + (1 << 20);
    if meta.len() > max {
        return Err(Error::format(p, "larger than 10,000,000 samples"));
    }
    let ts = candle_core::safetensors::load(p, &Device::Cpu)
        .map_err(|e| Error::format(p, format!("not a safetensors file ({e})")))?;
    let x = ts.get("samples").ok_or_else(|| {
        Error::format(
            p,
            "no tensor 'samples' (write it with diffuse sample --save-tensors)",
        )
    })?;
    if x.rank() != 4 || x.dims()[1..] != [c, h, w] || x.dim(0)? < 2 {
        return Err(Error::format(
            p,
            format!(
                "'samples' has shape {:?}; eval takes [N >= 2, {c}, {h}, {w}] images here",
                x.dims()
            ),
        ));
    }
    Ok(x.to_dtype(DType::F32)?
        .clamp(-1f32, 1f32)?
        .to_device(device)?)
}

/// `num` samples from `model` by `diffuse sample` with the model's defaults, and the classes
/// asked for when it is class-conditional (every class equally often, in order).
fn draw(
    model: &str,
    num: usize,
    dims: (usize, usize, usize),
    progress: bool,
    device: &Device,
) -> Result<(Tensor, Option<Vec<u32>>)> {
    limits::check_count("--num", num, 100_000, "FID settles long before")?;
    let loc = crate::pipeline::locate(model)?;
    let ucfg = crate::unet::UNetConfig::from_file(&loc.unet_dir.join("config.json"))?;
    if ucfg.image_shape()? != dims {
        return Err(Error::invalid(format!(
            "the feature network takes {dims:?} images; {model} draws {:?}",
            ucfg.image_shape()?
        )));
    }
    let k = match ucfg.num_class_embeds {
        Some(e) => Some(loc.classes(e)?.names.len()),
        None => None,
    };
    let dir =
        tempfile::tempdir().map_err(|e| Error::Runtime(format!("a temporary folder: {e}")))?;
    let tensors = dir.path().join("samples.safetensors");
    let req = SampleRequest {
        model: model.to_string(),
        kind: None,
        steps: None,
        eta: 0.0,
        karras: false,
        class: k.map(|_| "all".to_string()),
        guidance: vec![],
        init: None,
        strength: 0.8,
        mask: None,
        jump_length: sample::REPAINT_JUMP_LENGTH,
        jump_n_sample: sample::REPAINT_JUMP_N_SAMPLE,
        spacing: None,
        clip_sample: None,
        prediction: None,
        num,
        batch_size: None,
        seed: 0,
        output: dir.path().join("grid.png"),
        gif: None,
        gif_frames: 25,
        save_tensors: Some(tensors.clone()),
        trace: None,
        trace_steps: 10,
        precision: Default::default(),
        progress,
    };
    sample::run(&req, device)?;
    let x = load_samples(&tensors, dims, device)?;
    let asked = k.map(|k| (0..num).map(|j| (j * k / num) as u32).collect());
    Ok((x, asked))
}

/// What `features::open` returned, in words for the report.
fn describe(info: &FeatureInfo, file: Option<&Path>) -> String {
    let from = file.map_or_else(
        || format!("shipped {} network", info.dataset),
        |p| p.display().to_string(),
    );
    format!(
        "{from} (trained on {}, seed {})",
        info.trained_on, info.config.seed
    )
}

pub fn run(req: &EvalRequest, device: &Device) -> Result<EvalReport> {
    if req.samples.is_empty() && req.model.is_none() {
        return Err(Error::invalid(
            "no samples files given (or --model to draw them)",
        ));
    }
    let (clf, info) = features::open(&req.data.dataset, req.features.as_deref(), device)?;
    let dims = clf.image_dims();
    // Check every samples file before drawing or loading the dataset.
    let sets = req
        .samples
        .iter()
        .map(|p| load_samples(p, dims, device))
        .collect::<Result<Vec<_>>>()?;
    let eval_sets = crate::eval::eval_sets(&req.data)?;
    let drawn = match &req.model {
        Some(m) => Some((m, draw(m, req.num, dims, req.progress, device)?)),
        None => None,
    };
    let ev = Evaluator::new(clf, eval_sets, device)?;
    let mut rows = req
        .samples
        .iter()
        .zip(&sets)
        .map(|(p, x)| ev.score(&p.display().to_string(), x))
        .collect::<Result<Vec<_>>>()?;
    if let Some((m, (x, asked))) = drawn {
        let mut row = ev.score(&format!("{m} (its default sampler)"), &x)?;
        if let Some(asked) = asked {
            row.class_accuracy = Some(ev.accuracy_on(&x, &asked)?);
        }
        rows.push(row);
    }
    // One floor per sample count, as FID depends on n.
    let mut ns: Vec<usize> = rows.iter().map(|r| r.n).collect();
    ns.sort_unstable();
    ns.dedup();
    let mut real = Vec::new();
    for n in ns {
        let r = ev.floor(n)?;
        if real.last().is_none_or(|l: &EvalRow| l.n != r.n) {
            real.push(r);
        }
    }
    Ok(EvalReport {
        dataset: info.dataset.clone(),
        features: describe(&info, req.features.as_deref()),
        reference: ev.reference_len(),
        reference_images: ev.reference_what.clone(),
        classifier_accuracy: ev.accuracy,
        real,
        rows,
    })
}

/// `diffuse eval --train-features`: train the feature network for a dataset on its
/// feature-training images (never the reference) and write it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainFeaturesRequest {
    pub data: DataConfig,
    pub config: ClassifierConfig,
    pub output: PathBuf,
    /// Recorded in the weights' metadata.
    pub command: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainFeaturesReport {
    pub info: FeatureInfo,
    pub seconds: f64,
    pub written: PathBuf,
}

pub fn train_features(req: &TrainFeaturesRequest, device: &Device) -> Result<TrainFeaturesReport> {
    crate::io::output::check_outputs(&[&req.output], &[], &[])?;
    req.config.validate()?;
    if req.output.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        return Err(Error::invalid(format!(
            "--train-features writes a .safetensors file, not {}",
            req.output.display()
        )));
    }
    let t0 = std::time::Instant::now();
    let EvalSets {
        dataset,
        features,
        reference,
        ..
    } = crate::eval::eval_sets(&req.data)?;
    let d = features.images.dims();
    tracing::info!(
        "training the {dataset} feature network on {} ({} epochs)",
        features.what,
        req.config.epochs_for(d[0])
    );
    let clf = Classifier::train(&features.images, &features.labels, &req.config, device)?;
    let accuracy = clf.accuracy(&reference.images.to_device(device)?, &reference.labels)?;
    let info = FeatureInfo {
        dataset,
        trained_on: features.what,
        image_dims: [d[1], d[2], d[3]],
        config: ClassifierConfig {
            epochs: Some(req.config.epochs_for(d[0])),
            ..req.config.clone()
        },
        reference_accuracy: accuracy,
        command: req.command.clone(),
    };
    clf.save(&req.output, &info)?;
    Ok(TrainFeaturesReport {
        info,
        seconds: t0.elapsed().as_secs_f64(),
        written: req.output.clone(),
    })
}

impl EvalReport {
    /// A plain table: one line per set.
    pub fn table(&self) -> String {
        let mut s = format!(
            "# reference: {} ({} images); features: {}, {:.2}% accurate on the reference; FID/KID in its {}-d feature space, scaled to unit RMS on the reference\n",
            self.reference_images,
            self.reference,
            self.features,
            100.0 * self.classifier_accuracy,
            FEATURES
        );
        s.push_str("set\tn\tfid\tkid_x1000\tprecision\trecall\tconfidence\tclass_entropy_bits\tclass_accuracy\tclass_shares(0-9)\n");
        for r in self.real.iter().chain(&self.rows) {
            let shares: Vec<String> = r.classes.iter().map(|c| format!("{c:.3}")).collect();
            s.push_str(&format!(
                "{}\t{}\t{:.3}\t{:.3}\t{:.3}\t{:.3}\t{:.3}\t{:.3}\t{}\t{}\n",
                r.name,
                r.n,
                r.fid,
                1000.0 * r.kid,
                r.precision,
                r.recall,
                r.confidence,
                r.class_entropy,
                r.class_accuracy
                    .map_or("-".to_string(), |a| format!("{a:.3}")),
                shares.join(",")
            ));
        }
        s.push_str("# not Inception FID: comparable only between runs of this feature network (same weights, same reference), never with papers' numbers\n");
        s
    }
}
