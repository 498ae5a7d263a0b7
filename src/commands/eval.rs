//! `diffuse eval`: sample quality of saved samples (`diffuse sample --save-tensors`) against
//! a digit dataset, in the feature space of a classifier trained here (see `eval`): FID, KID
//! and the share of each predicted class.
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
}

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

pub fn run(req: &EvalRequest, device: &Device) -> Result<EvalReport> {
    if req.samples.is_empty() {
        return Err(Error::invalid("no samples files given"));
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
    let ev = Evaluator::new(&ds.images, &labels, &req.classifier, device)?;
    tracing::info!(
        "classifier: {:.2}% on {} held-out images",
        100.0 * ev.accuracy,
        req.classifier.held_out
    );
    let real = ev.floor()?;
    let rows = req
        .samples
        .iter()
        .zip(&sets)
        .map(|(p, x)| ev.score(&p.display().to_string(), x))
        .collect::<Result<Vec<_>>>()?;
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
        s.push_str("set\tn\tfid\tkid_x1000\tprecision\trecall\tconfidence\tclass_entropy_bits\tclass_shares(0-9)\n");
        for r in std::iter::once(&self.real).chain(&self.rows) {
            let shares: Vec<String> = r.classes.iter().map(|c| format!("{c:.3}")).collect();
            s.push_str(&format!(
                "{}\t{}\t{:.3}\t{:.3}\t{:.3}\t{:.3}\t{:.3}\t{:.3}\t{}\n",
                r.name,
                r.n,
                r.fid,
                1000.0 * r.kid,
                r.precision,
                r.recall,
                r.confidence,
                r.class_entropy,
                shares.join(",")
            ));
        }
        s.push_str("# not Inception FID: comparable only between runs of this classifier (same seed, same reference), never with papers' numbers\n");
        s
    }
}
