//! `diffuse eval`: sample quality of saved samples (`diffuse sample --save-tensors`) against
//! a digit dataset, in the feature space of a classifier trained here (see `eval`): FID, KID
//! and the share of each predicted class.
use crate::data::{self, DataConfig};
use crate::error::{Error, Result};
use crate::eval::classifier::{CLASSES, FEATURES};
use crate::eval::manifold::{self, precision_recall};
use crate::eval::{
    frechet_distance, kernel_inception_distance, normalize, rms, Classifier, ClassifierConfig,
    FeatureStats,
};
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

/// One evaluated set.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalRow {
    pub name: String,
    pub n: usize,
    pub fid: f64,
    /// Unbiased KID (x 1000 when printed) against as many reference images.
    pub kid: f64,
    /// Share of each predicted class.
    pub classes: Vec<f64>,
    /// Entropy of those shares in bits (log2 10 = 3.32: every class equally often).
    pub class_entropy: f64,
    /// Mean softmax probability of the predicted class: how digit-like the classifier finds them.
    pub confidence: f64,
    /// k-NN manifold precision and recall (k = 3) against as many reference images, on the
    /// first `PR_MAX` of each.
    pub precision: f64,
    pub recall: f64,
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

/// Rows of each set that precision and recall look at (their cost is quadratic).
pub const PR_MAX: usize = 2000;

fn score(
    clf: &Classifier,
    name: &str,
    images: &Tensor,
    reference: &FeatureStats,
    ref_rows: &[f32],
    scale: f64,
) -> Result<EvalRow> {
    let n = images.dim(0)?;
    let mut feats = clf.features_of(images, 500)?;
    normalize(&mut feats, scale);
    let stats = FeatureStats::from_rows(&feats, FEATURES)?;
    let m = n.min(ref_rows.len() / FEATURES);
    let kid =
        kernel_inception_distance(&feats[..m * FEATURES], &ref_rows[..m * FEATURES], FEATURES)?;
    let mut counts = [0usize; CLASSES];
    let (predicted, conf) = clf.predict_confident(images, 500)?;
    for p in predicted {
        counts[p as usize] += 1;
    }
    let classes: Vec<f64> = counts.iter().map(|c| *c as f64 / n as f64).collect();
    let class_entropy = -classes
        .iter()
        .filter(|p| **p > 0.0)
        .map(|p| p * p.log2())
        .sum::<f64>();
    let pr = n.min(ref_rows.len() / FEATURES).min(PR_MAX);
    let (precision, recall) = precision_recall(
        &ref_rows[..pr * FEATURES],
        &feats[..pr * FEATURES],
        FEATURES,
        manifold::K,
    )?;
    Ok(EvalRow {
        name: name.to_string(),
        n,
        fid: frechet_distance(&stats, reference)?,
        kid,
        classes,
        class_entropy,
        confidence: conf.iter().map(|c| *c as f64).sum::<f64>() / n as f64,
        precision,
        recall,
    })
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
    let (clf, acc) = Classifier::train(&ds.images, &labels, &req.classifier, device)?;
    tracing::info!(
        "classifier: {:.2}% on {} held-out images",
        100.0 * acc,
        req.classifier.held_out
    );
    let images = ds.images.to_device(device)?;
    let mut ref_rows = clf.features_of(&images, 500)?;
    let scale = rms(&ref_rows);
    normalize(&mut ref_rows, scale);
    let reference = FeatureStats::from_rows(&ref_rows, FEATURES)?;
    let n = ds.len();
    let held = images.narrow(0, n - req.classifier.held_out, req.classifier.held_out)?;
    let real = score(&clf, "real (held-out)", &held, &reference, &ref_rows, scale)?;
    let rows = req
        .samples
        .iter()
        .zip(&sets)
        .map(|(p, x)| {
            score(
                &clf,
                &p.display().to_string(),
                x,
                &reference,
                &ref_rows,
                scale,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(EvalReport {
        dataset: ds.name,
        reference: n,
        classifier_accuracy: acc,
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
