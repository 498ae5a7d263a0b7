//! Scoring sample sets against a dataset's evaluation reference: the feature network's
//! statistics of the reference, and every figure `diffuse eval` and `train --eval-every`
//! report for a set of images.
use super::classifier::{Classifier, CLASSES, FEATURES};
use super::frechet::{frechet_distance, kernel_inception_distance, normalize, rms, FeatureStats};
use super::manifold::{self, precision_recall};
use super::reference::EvalSets;
use crate::error::Result;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// One evaluated set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// Class-conditional samples: the share the classifier reads as the class asked for.
    pub class_accuracy: Option<f64>,
}

/// Rows of each set that precision and recall look at (their cost is quadratic).
pub const PR_MAX: usize = 2000;

/// A feature network, the reference set in its feature space, and the floor's pool.
pub struct Evaluator {
    clf: Classifier,
    /// The network's accuracy on the reference (which it never trained on).
    pub accuracy: f64,
    reference: FeatureStats,
    ref_rows: Vec<f32>,
    scale: f64,
    floor: Tensor,
    /// Which images are the reference and the floor's pool, in words.
    pub reference_what: String,
    pub floor_what: String,
}

impl Evaluator {
    /// Measure `sets.reference` with `clf` (features scaled to unit RMS on it).
    pub fn new(clf: Classifier, sets: EvalSets, device: &Device) -> Result<Self> {
        let images = sets.reference.images.to_device(device)?;
        let accuracy = clf.accuracy(&images, &sets.reference.labels)?;
        let mut ref_rows = clf.features_of(&images, 500)?;
        let scale = rms(&ref_rows);
        normalize(&mut ref_rows, scale);
        let reference = FeatureStats::from_rows(&ref_rows, FEATURES)?;
        Ok(Self {
            clf,
            accuracy,
            reference,
            ref_rows,
            scale,
            floor: sets.floor.images.to_device(device)?,
            reference_what: sets.reference.what,
            floor_what: sets.floor.what,
        })
    }

    /// Images in the reference set.
    pub fn reference_len(&self) -> usize {
        self.ref_rows.len() / FEATURES
    }

    /// The floor at `n`: the first `n` real images of the floor's pool (all of it when `n` is
    /// larger) scored like a sample set.
    pub fn floor(&self, n: usize) -> Result<EvalRow> {
        let m = n.clamp(2, self.floor.dim(0)?);
        self.score("real (held-out)", &self.floor.narrow(0, 0, m)?)
    }

    /// Every figure for `images` [N >= 2, 1, 28, 28] in [-1, 1].
    pub fn score(&self, name: &str, images: &Tensor) -> Result<EvalRow> {
        let (clf, ref_rows) = (&self.clf, &self.ref_rows);
        let n = images.dim(0)?;
        let mut feats = clf.features_of(images, 500)?;
        normalize(&mut feats, self.scale);
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
            fid: frechet_distance(&stats, &self.reference)?,
            kid,
            classes,
            class_entropy,
            confidence: conf.iter().map(|c| *c as f64).sum::<f64>() / n as f64,
            precision,
            recall,
            class_accuracy: None,
        })
    }

    /// The share of `images` the classifier reads as the class `asked` for each.
    pub fn accuracy_on(&self, images: &Tensor, asked: &[u32]) -> Result<f64> {
        self.clf.accuracy(images, asked)
    }
}
