//! Scoring sample sets against a labelled digit set: a classifier trained once (see
//! `classifier`), the reference's feature statistics, and every figure `diffuse eval` and
//! `train --eval-every` report for a set of images.
use super::classifier::{Classifier, ClassifierConfig, CLASSES, FEATURES};
use super::frechet::{frechet_distance, kernel_inception_distance, normalize, rms, FeatureStats};
use super::manifold::{self, precision_recall};
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

/// A trained classifier and the reference set in its feature space.
pub struct Evaluator {
    clf: Classifier,
    /// The classifier's accuracy on its held-out images.
    pub accuracy: f64,
    reference: FeatureStats,
    ref_rows: Vec<f32>,
    scale: f64,
    held: Tensor,
}

impl Evaluator {
    /// Train the classifier on `images` [N, 1, 28, 28] with `labels` (the last
    /// `cfg.held_out` kept out) and take every image as the reference.
    pub fn new(
        images: &Tensor,
        labels: &[u32],
        cfg: &ClassifierConfig,
        device: &Device,
    ) -> Result<Self> {
        let (clf, accuracy) = Classifier::train(images, labels, cfg, device)?;
        let images = images.to_device(device)?;
        let mut ref_rows = clf.features_of(&images, 500)?;
        let scale = rms(&ref_rows);
        normalize(&mut ref_rows, scale);
        let reference = FeatureStats::from_rows(&ref_rows, FEATURES)?;
        let n = images.dim(0)?;
        let held = images.narrow(0, n - cfg.held_out, cfg.held_out)?;
        Ok(Self {
            clf,
            accuracy,
            reference,
            ref_rows,
            scale,
            held,
        })
    }

    /// The held-out real images scored like a sample set: the floor at their n.
    pub fn floor(&self) -> Result<EvalRow> {
        self.score("real (held-out)", &self.held)
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
        let got = self.clf.predict_all(images, 500)?;
        if got.len() != asked.len() {
            return Err(crate::error::Error::invalid(format!(
                "{} classes asked for {} images",
                asked.len(),
                got.len()
            )));
        }
        let hits = got.iter().zip(asked).filter(|(g, a)| g == a).count();
        Ok(hits as f64 / got.len().max(1) as f64)
    }
}
