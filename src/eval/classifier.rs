//! A small convolutional digit classifier (two 3x3 conv + max-pool stages, a 128-unit hidden
//! layer, 10 classes) for 28x28 single-channel images in [-1, 1], trained here from a seed
//! in about half a minute on 2 CPU cores. Its 128 hidden units are the feature space of our
//! FID/KID; its predictions say which digit a sample shows.
use crate::core::rng::NoiseRng;
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};

/// Width of the feature layer.
pub const FEATURES: usize = 128;
pub const CLASSES: usize = 10;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClassifierConfig {
    pub seed: u64,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// Images held out (the last ones) to measure accuracy.
    pub held_out: usize,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            epochs: 4,
            batch_size: 128,
            lr: 2e-3,
            held_out: 1000,
        }
    }
}

pub struct Classifier {
    /// conv1 w/b, conv2 w/b, fc1 w/b, fc2 w/b.
    params: Vec<Var>,
}

const SHAPES: [&[usize]; 8] = [
    &[32, 1, 3, 3],
    &[32],
    &[64, 32, 3, 3],
    &[64],
    &[FEATURES, 64 * 7 * 7],
    &[FEATURES],
    &[CLASSES, FEATURES],
    &[CLASSES],
];

impl Classifier {
    /// He-normal weights and zero biases from `seed` (Candle's CPU randn cannot be seeded).
    pub fn init(seed: u64, device: &Device) -> Result<Self> {
        let mut rng = NoiseRng::new(seed);
        let params = SHAPES
            .iter()
            .map(|s| {
                let t = if s.len() == 1 {
                    Tensor::zeros(s[0], DType::F32, device)?
                } else {
                    let fan_in: usize = s[1..].iter().product();
                    (rng.randn(*s, device)? * (2.0 / fan_in as f64).sqrt())?
                };
                Ok(Var::from_tensor(&t)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { params })
    }

    fn check(x: &Tensor) -> Result<()> {
        if x.rank() != 4 || x.dims()[1..] != [1, 28, 28] {
            return Err(Error::invalid(format!(
                "the digit classifier takes [N, 1, 28, 28] images, got {:?}",
                x.dims()
            )));
        }
        Ok(())
    }

    /// The 128 hidden features of a batch [N, 1, 28, 28].
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        Self::check(x)?;
        let p = &self.params;
        let conv = |x: &Tensor, w: &Var, b: &Var| -> Result<Tensor> {
            let y = x.conv2d(w, 1, 1, 1, 1)?;
            Ok(y.broadcast_add(&b.reshape((1, (), 1, 1))?)?
                .relu()?
                .max_pool2d(2)?)
        };
        let h = conv(x, &p[0], &p[1])?;
        let h = conv(&h, &p[2], &p[3])?;
        let h = h.flatten_from(1)?;
        Ok(h.matmul(&p[4].t()?)?.broadcast_add(&p[5])?.relu()?)
    }

    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let f = self.features(x)?;
        Ok(f.matmul(&self.params[6].t()?)?
            .broadcast_add(&self.params[7])?)
    }

    /// Predicted classes of a batch.
    pub fn predict(&self, x: &Tensor) -> Result<Vec<u32>> {
        Ok(self.logits(x)?.argmax(D::Minus1)?.to_vec1()?)
    }

    /// Features of many images, in batches (host rows of FEATURES floats).
    pub fn features_of(&self, images: &Tensor, batch: usize) -> Result<Vec<f32>> {
        let n = images.dim(0)?;
        let mut out = Vec::with_capacity(n * FEATURES);
        for s in (0..n).step_by(batch.max(1)) {
            let b = batch.min(n - s);
            let f = self.features(&images.narrow(0, s, b)?)?;
            out.extend(f.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// Predictions and their softmax probability for many images, in batches.
    pub fn predict_confident(&self, images: &Tensor, batch: usize) -> Result<(Vec<u32>, Vec<f32>)> {
        let n = images.dim(0)?;
        let (mut classes, mut conf) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for s in (0..n).step_by(batch.max(1)) {
            let logits = self.logits(&images.narrow(0, s, batch.min(n - s))?)?;
            let p = candle_nn::ops::softmax_last_dim(&logits)?;
            classes.extend(p.argmax(D::Minus1)?.to_vec1::<u32>()?);
            conf.extend(p.max(D::Minus1)?.to_vec1::<f32>()?);
        }
        Ok((classes, conf))
    }

    /// Predictions for many images, in batches.
    pub fn predict_all(&self, images: &Tensor, batch: usize) -> Result<Vec<u32>> {
        let n = images.dim(0)?;
        let mut out = Vec::with_capacity(n);
        for s in (0..n).step_by(batch.max(1)) {
            out.extend(self.predict(&images.narrow(0, s, batch.min(n - s))?)?);
        }
        Ok(out)
    }

    /// Train on `images` [N, 1, 28, 28] with `labels` [N] (the last `held_out` kept out);
    /// returns the classifier and its accuracy on the held-out images.
    pub fn train(
        images: &Tensor,
        labels: &[u32],
        cfg: &ClassifierConfig,
        device: &Device,
    ) -> Result<(Self, f64)> {
        Self::check(images)?;
        let n = images.dim(0)?;
        if labels.len() != n || n <= cfg.held_out + cfg.batch_size {
            return Err(Error::invalid(format!(
                "classifier training needs more than {} labelled images, got {n}",
                cfg.held_out + cfg.batch_size
            )));
        }
        if let Some(l) = labels.iter().find(|l| **l as usize >= CLASSES) {
            return Err(Error::invalid(format!("label {l} is not a digit class")));
        }
        let n_train = n - cfg.held_out;
        let images = images.to_device(device)?;
        let model = Self::init(cfg.seed, device)?;
        let mut opt = AdamW::new(
            model.params.clone(),
            ParamsAdamW {
                lr: cfg.lr,
                weight_decay: 1e-4,
                ..Default::default()
            },
        )?;
        let mut rng = NoiseRng::new(cfg.seed ^ 0xC1A5_51F1);
        let steps_per_epoch = n_train / cfg.batch_size;
        let total = cfg.epochs * steps_per_epoch;
        let mut step = 0;
        for _ in 0..cfg.epochs {
            // A fresh permutation each epoch: sort by random keys.
            let keys = rng.uniform_f32(n_train);
            let mut order: Vec<u32> = (0..n_train as u32).collect();
            order.sort_by(|a, b| keys[*a as usize].total_cmp(&keys[*b as usize]));
            for chunk in order.chunks_exact(cfg.batch_size) {
                let idx = Tensor::new(chunk, device)?;
                let x = images.index_select(&idx, 0)?;
                // Cross-entropy against one-hot targets (candle's gather-based loss needs a
                // contiguous scatter in its backward pass, which this graph does not give).
                let mut onehot = vec![0f32; chunk.len() * CLASSES];
                for (r, i) in chunk.iter().enumerate() {
                    onehot[r * CLASSES + labels[*i as usize] as usize] = 1.0;
                }
                let y = Tensor::from_vec(onehot, (chunk.len(), CLASSES), device)?;
                let logp = candle_nn::ops::log_softmax(&model.logits(&x)?, D::Minus1)?;
                let loss = (logp * y)?.sum(D::Minus1)?.mean_all()?.neg()?;
                // Cosine decay to zero over the run.
                let p = step as f64 / total as f64;
                opt.set_learning_rate(cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()));
                opt.backward_step(&loss)?;
                step += 1;
            }
        }
        let held = images.narrow(0, n_train, cfg.held_out)?;
        let pred = model.predict_all(&held, 500)?;
        let correct = pred
            .iter()
            .zip(&labels[n_train..])
            .filter(|(p, l)| p == l)
            .count();
        Ok((model, correct as f64 / cfg.held_out as f64))
    }
}
