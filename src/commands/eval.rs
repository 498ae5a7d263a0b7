//! `diffuse eval`: sample quality of saved samples (`diffuse sample --save-tensors`) against
//! a digit dataset, in the feature space of a classifier trained here (see `eval`): FID, KID
//! and the share of each predicted class.
use crate::commands::sample::{self, SampleRequest};
use crate::data::{self, DataConfig};
use crate::error::{Error, Result};
use crate::eval::classifier::FEATURES;
pub use crate::eval::evaluator::EvalRow;
use crate::eval::{ClassifierConfig, Evaluator};
use crate::limits;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalRequest {
    /// safetensors files holding `samples` [N, 1, 28, 28] in [-1, 1].
    pub samples: Vec<PathBuf>,
    /// The reference images and the classifier's training data (labelled digits).
    pub data: DataConfig,
    pub classifier: ClassifierConfig,
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
    pub reference: usize,
    pub classifier_accuracy: f64,
    /// The held-out real images scored like a sample set: the floor at that n.
    pub real: EvalRow,
    pub rows: Vec<EvalRow>,
}

/// Load a samples file: `samples` [N, 1, 28, 28], clamped to [-1, 1].
fn load_samples(p: &PathBuf, device: &Device) -> Result<Tensor> {
    let meta = std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
    // 28x28 f32 images: 10M of them would be 31 GB; refuse files beyond MAX_NUM images.
    let max = (limits::MAX_NUM as u64) * 28 * 28 * 4 + (1 << 20);
    if meta.len() > max {
        return Err(Error::format(p, "larger than 10,000,000 28x28 samples"));
    }
    let ts = candle_core::safetensors::load(p, &Device::Cpu)
        .map_err(|e| Error::format(p, format!("not a safetensors file ({e})")))?;
    let x = ts.get("samples").ok_or_else(|| {
        Error::format(
            p,
            "no tensor 'samples' (write it with diffuse sample --save-tensors)",
        )
    })?;
    if x.rank() != 4 || x.dims()[1..] != [1, 28, 28] || x.dim(0)? < 2 {
        return Err(Error::format(
            p,
            format!(
                "'samples' has shape {:?}; eval takes [N >= 2, 1, 28, 28] digits",
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
    progress: bool,
    device: &Device,
) -> Result<(Tensor, Option<Vec<u32>>)> {
    limits::check_count("--num", num, 100_000, "FID settles long before")?;
    let loc = crate::pipeline::locate(model)?;
    let ucfg = crate::unet::UNetConfig::from_file(&loc.unet_dir.join("config.json"))?;
    if ucfg.image_shape()? != (1, 28, 28) {
        return Err(Error::invalid(format!(
            "eval's classifier is for 28x28 gray digits; {model} draws {:?}",
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
        progress,
    };
    sample::run(&req, device)?;
    let x = load_samples(&tensors, device)?;
    let asked = k.map(|k| (0..num).map(|j| (j * k / num) as u32).collect());
    Ok((x, asked))
}

pub fn run(req: &EvalRequest, device: &Device) -> Result<EvalReport> {
    if req.samples.is_empty() && req.model.is_none() {
        return Err(Error::invalid(
            "no samples files given (or --model to draw them)",
        ));
    }
    let ds = data::load(&req.data)?;
    if ds.image_dims() != (1, 28, 28) {
        return Err(Error::invalid(format!(
            "eval's classifier is for 28x28 gray digits; {} has {:?} images",
            ds.name,
            ds.image_dims()
        )));
    }
    let labels: Vec<u32> = ds
        .labels
        .as_ref()
        .ok_or_else(|| {
            Error::invalid(format!("{} has no labels to train the classifier", ds.name))
        })?
        .to_dtype(DType::U32)?
        .to_vec1()?;
    // Check every samples file before the classifier's half minute of training.
    let sets = req
        .samples
        .iter()
        .map(|p| load_samples(p, device))
        .collect::<Result<Vec<_>>>()?;
    let drawn = match &req.model {
        Some(m) => Some((m, draw(m, req.num, req.progress, device)?)),
        None => None,
    };
    let ev = Evaluator::new(&ds.images, &labels, &req.classifier, device)?;
    tracing::info!(
        "classifier: {:.2}% on {} held-out images",
        100.0 * ev.accuracy,
        req.classifier.held_out
    );
    let real = ev.floor()?;
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
    Ok(EvalReport {
        dataset: ds.name,
        reference: ds.images.dim(0)?,
        classifier_accuracy: ev.accuracy,
        real,
        rows,
    })
}

impl EvalReport {
    /// A plain table: one line per set.
    pub fn table(&self) -> String {
        let mut s = format!(
            "# {} reference images of {}; classifier held-out accuracy {:.2}%; FID/KID in its {}-d feature space, scaled to unit RMS on the reference\n",
            self.reference,
            self.dataset,
            100.0 * self.classifier_accuracy,
            FEATURES
        );
        s.push_str("set\tn\tfid\tkid_x1000\tprecision\trecall\tconfidence\tclass_entropy_bits\tclass_accuracy\tclass_shares(0-9)\n");
        for r in std::iter::once(&self.real).chain(&self.rows) {
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
        s.push_str("# not Inception FID: comparable only between runs of this classifier (same seed, same reference), never with papers' numbers\n");
        s
    }
}
