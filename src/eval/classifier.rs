//! The feature network: a small convolutional classifier (two 3x3 conv + max-pool stages, a
//! 128-unit hidden layer, 10 classes) for [C, H, W] images in [-1, 1] (H and W multiples of 4),
//! trained by `diffuse eval --train-features` from a seed on a dataset's training images
//! (MNIST's recipe: 39 epochs, 56 s on 2 CPU cores). Its 128 hidden units are the feature
//! space of our FID/KID; its predictions say which class a sample shows. Weights are saved as
//! safetensors with what made them in the metadata (`FeatureInfo`).
use crate::core::rng::NoiseRng;
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Width of the feature layer.
pub const FEATURES: usize = 128;
pub const CLASSES: usize = 10;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClassifierConfig {
    pub seed: u64,
    /// Passes over the training images; None: enough for about `DEFAULT_STEPS` steps.
    pub epochs: Option<usize>,
    pub batch_size: usize,
    pub lr: f64,
}

/// Optimizer steps a training run aims at when `epochs` is not given: MNIST's 4,000
/// training digits then take 39 epochs and Fashion-MNIST's 50,000 take 4.
pub const DEFAULT_STEPS: usize = 1200;

impl Default for ClassifierConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            epochs: None,
            batch_size: 128,
            lr: 2e-3,
        }
    }
}

impl ClassifierConfig {
    /// Refuse settings that can never train, before any data is read.
    pub fn validate(&self) -> Result<()> {
        if let Some(e) = self.epochs {
            if !(1..=1000).contains(&e) {
                return Err(Error::invalid(format!("--epochs {e} must be in [1, 1000]")));
            }
        }
        if self.batch_size == 0 {
            return Err(Error::invalid(
                "the feature network's batch size must be positive",
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::invalid(format!(
                "the feature network's learning rate {} must be positive",
                self.lr
            )));
        }
        Ok(())
    }

    /// Epochs for `n` training images.
    pub fn epochs_for(&self, n: usize) -> usize {
        self.epochs.unwrap_or_else(|| {
            let per_epoch = (n / self.batch_size.max(1)).max(1);
            DEFAULT_STEPS.div_ceil(per_epoch).clamp(1, 100)
        })
    }
}

/// What made a feature network, kept in its weights file's metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureInfo {
    /// The dataset it was trained for (mnist, fashion-mnist, cifar10).
    pub dataset: String,
    /// Which images it trained on, in words ("mnist test digits 0-3999").
    pub trained_on: String,
    /// [C, H, W] of the images it takes.
    pub image_dims: [usize; 3],
    pub config: ClassifierConfig,
    /// Its accuracy on the evaluation reference (which it never trained on).
    pub reference_accuracy: f64,
    /// The command that made it.
    pub command: String,
}

/// The metadata key holding `FeatureInfo` as JSON.
const INFO_KEY: &str = "diffuse_features";
const NAMES: [&str; 8] = [
    "conv1.weight",
    "conv1.bias",
    "conv2.weight",
    "conv2.bias",
    "fc1.weight",
    "fc1.bias",
    "fc2.weight",
    "fc2.bias",
];

pub struct Classifier {
    /// conv1 w/b, conv2 w/b, fc1 w/b, fc2 w/b.
    params: Vec<Var>,
    dims: (usize, usize, usize),
}

fn shapes((c, h, w): (usize, usize, usize)) -> [Vec<usize>; 8] {
    [
        vec![32, c, 3, 3],
        vec![32],
        vec![64, 32, 3, 3],
        vec![64],
        vec![FEATURES, 64 * (h / 4) * (w / 4)],
        vec![FEATURES],
        vec![CLASSES, FEATURES],
        vec![CLASSES],
    ]
}

fn check_dims((c, h, w): (usize, usize, usize)) -> Result<()> {
    if !(1..=4).contains(&c)
        || !(4..=64).contains(&h)
        || !(4..=64).contains(&w)
        || h % 4 != 0
        || w % 4 != 0
    {
        return Err(Error::invalid(format!(
            "the feature network takes 1-4 channel images whose sides are multiples of 4 up to 64, not {c}x{h}x{w}"
        )));
    }
    Ok(())
}

impl Classifier {
    /// He-normal weights and zero biases from `seed` (Candle's CPU randn cannot be seeded).
    pub fn init(dims: (usize, usize, usize), seed: u64, device: &Device) -> Result<Self> {
        check_dims(dims)?;
        let mut rng = NoiseRng::new(seed);
        let params = shapes(dims)
            .iter()
            .map(|s| {
                let t = if s.len() == 1 {
                    Tensor::zeros(s[0], DType::F32, device)?
                } else {
                    let fan_in: usize = s[1..].iter().product();
                    (rng.randn(s.as_slice(), device)? * (2.0 / fan_in as f64).sqrt())?
                };
                Ok(Var::from_tensor(&t)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { params, dims })
    }

    /// (channels, height, width) of the images it takes.
    pub fn image_dims(&self) -> (usize, usize, usize) {
        self.dims
    }

    fn check(&self, x: &Tensor) -> Result<()> {
        let (c, h, w) = self.dims;
        if x.rank() != 4 || x.dims()[1..] != [c, h, w] {
            return Err(Error::invalid(format!(
                "the feature network takes [N, {c}, {h}, {w}] images, got {:?}",
                x.dims()
            )));
        }
        Ok(())
    }

    /// The 128 hidden features of a batch [N, C, H, W].
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        self.check(x)?;
        let p = &self.params;
        // The project's conv2d: our CPU kernels (MNIST's 39 epochs 293 -> 56 s on 2 cores against
        // Candle's, measured side by side), our CUDA path or a cuDNN build's cached cuDNN calls.
        let conv = |x: &Tensor, w: &Var, b: &Var| -> Result<Tensor> {
            let y = crate::kernels::conv::conv2d(x, w, Some(b), 1, 1)?;
            Ok(y.relu()?.max_pool2d(2)?)
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

    /// The share of `images` predicted as their `labels`.
    pub fn accuracy(&self, images: &Tensor, labels: &[u32]) -> Result<f64> {
        let got = self.predict_all(images, 500)?;
        if got.len() != labels.len() {
            return Err(Error::invalid(format!(
                "{} labels for {} images",
                labels.len(),
                got.len()
            )));
        }
        let hits = got.iter().zip(labels).filter(|(g, l)| g == l).count();
        Ok(hits as f64 / got.len().max(1) as f64)
    }

    /// Train on every one of `images` [N, C, H, W] with `labels` [N].
    pub fn train(
        images: &Tensor,
        labels: &[u32],
        cfg: &ClassifierConfig,
        device: &Device,
    ) -> Result<Self> {
        if images.rank() != 4 {
            return Err(Error::invalid(format!(
                "the feature network trains on [N, C, H, W] images, got {:?}",
                images.dims()
            )));
        }
        let d = images.dims();
        let model = Self::init((d[1], d[2], d[3]), cfg.seed, device)?;
        let n = d[0];
        if labels.len() != n || cfg.batch_size == 0 || n < cfg.batch_size {
            return Err(Error::invalid(format!(
                "the feature network needs at least one batch ({}) of labelled images, got {n} images and {} labels",
                cfg.batch_size,
                labels.len()
            )));
        }
        if let Some(l) = labels.iter().find(|l| **l as usize >= CLASSES) {
            return Err(Error::invalid(format!(
                "label {l}: the feature network knows {CLASSES} classes"
            )));
        }
        let images = images.to_device(device)?;
        let mut opt = AdamW::new(
            model.params.clone(),
            ParamsAdamW {
                lr: cfg.lr,
                weight_decay: 1e-4,
                ..Default::default()
            },
        )?;
        let mut rng = NoiseRng::new(cfg.seed ^ 0xC1A5_51F1);
        cfg.validate()?;
        let epochs = cfg.epochs_for(n);
        let total = epochs * (n / cfg.batch_size);
        let mut step = 0;
        for _ in 0..epochs {
            // A fresh permutation each epoch: sort by random keys.
            let keys = rng.uniform_f32(n);
            let mut order: Vec<u32> = (0..n as u32).collect();
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
        Ok(model)
    }

    /// Write the weights (f32) and `info` as one safetensors file, atomically.
    pub fn save(&self, path: &Path, info: &FeatureInfo) -> Result<()> {
        let tensors = NAMES
            .iter()
            .zip(&self.params)
            .map(|(n, v)| Ok((n.to_string(), v.as_tensor().to_device(&Device::Cpu)?)))
            .collect::<Result<Vec<_>>>()?;
        let json = serde_json::to_string(info)
            .map_err(|e| Error::Runtime(format!("feature network metadata: {e}")))?;
        let meta = HashMap::from([(INFO_KEY.to_string(), json)]);
        crate::io::output::write_safetensors(path, &tensors, Some(meta))
    }

    /// Weights and their `FeatureInfo` from safetensors bytes (`origin` names them in errors).
    pub fn from_bytes(bytes: &[u8], origin: &Path, device: &Device) -> Result<(Self, FeatureInfo)> {
        let bad = |m: String| Error::format(origin, m);
        let (_, st_meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let info: FeatureInfo = st_meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(INFO_KEY))
            .ok_or_else(|| {
                bad(
                    "no feature network metadata (write it with diffuse eval --train-features)"
                        .into(),
                )
            })
            .and_then(|j| {
                serde_json::from_str(j).map_err(|e| bad(format!("feature network metadata: {e}")))
            })?;
        let [c, h, w] = info.image_dims;
        check_dims((c, h, w)).map_err(|e| bad(e.to_string()))?;
        let loaded = candle_core::safetensors::load_buffer(bytes, device)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let params = NAMES
            .iter()
            .zip(shapes((c, h, w)))
            .map(|(n, s)| {
                let t = loaded
                    .get(*n)
                    .ok_or_else(|| bad(format!("no tensor '{n}'")))?;
                if t.dims() != s.as_slice() {
                    return Err(bad(format!("'{n}' has shape {:?}, not {s:?}", t.dims())));
                }
                Ok(Var::from_tensor(&t.to_dtype(DType::F32)?)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((
            Self {
                params,
                dims: (c, h, w),
            },
            info,
        ))
    }

    /// Weights and their `FeatureInfo` from a file written by `save`.
    pub fn load(path: &Path, device: &Device) -> Result<(Self, FeatureInfo)> {
        let len = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        // The largest network (4x64x64) holds 8.4M weights: 34 MB; refuse anything far beyond.
        if len > 64 << 20 {
            return Err(Error::format(
                path,
                "larger than any feature network (64 MiB)",
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, path, device)
    }

    /// Every weight, flattened, in order (for comparing two networks).
    pub fn weights(&self) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        for p in &self.params {
            out.extend(p.as_tensor().flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits(n: usize, dims: (usize, usize, usize)) -> (Tensor, Vec<u32>) {
        let mut rng = NoiseRng::new(3);
        let x = rng
            .randn((n, dims.0, dims.1, dims.2), &Device::Cpu)
            .unwrap();
        let labels = (0..n as u32).map(|i| i % 10).collect();
        (x, labels)
    }

    #[test]
    fn training_is_deterministic_and_weights_round_trip() {
        let cfg = ClassifierConfig {
            epochs: Some(1),
            batch_size: 16,
            ..Default::default()
        };
        let (x, l) = digits(64, (1, 28, 28));
        let a = Classifier::train(&x, &l, &cfg, &Device::Cpu).unwrap();
        let b = Classifier::train(&x, &l, &cfg, &Device::Cpu).unwrap();
        assert_eq!(a.weights().unwrap(), b.weights().unwrap());
        let c = Classifier::train(
            &x,
            &l,
            &ClassifierConfig {
                seed: 1,
                ..cfg.clone()
            },
            &Device::Cpu,
        )
        .unwrap();
        assert_ne!(a.weights().unwrap(), c.weights().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.safetensors");
        let info = FeatureInfo {
            dataset: "mnist".into(),
            trained_on: "noise".into(),
            image_dims: [1, 28, 28],
            config: cfg,
            reference_accuracy: 0.1,
            command: "test".into(),
        };
        a.save(&p, &info).unwrap();
        let (back, info_back) = Classifier::load(&p, &Device::Cpu).unwrap();
        assert_eq!(info_back, info);
        assert_eq!(back.weights().unwrap(), a.weights().unwrap());
        assert_eq!(
            back.features(&x).unwrap().to_vec2::<f32>().unwrap(),
            a.features(&x).unwrap().to_vec2::<f32>().unwrap()
        );
    }

    #[test]
    fn colour_images_and_bad_shapes() {
        let c = Classifier::init((3, 32, 32), 0, &Device::Cpu).unwrap();
        let (x, _) = digits(4, (3, 32, 32));
        assert_eq!(c.features(&x).unwrap().dims(), &[4, FEATURES]);
        assert_eq!(c.logits(&x).unwrap().dims(), &[4, CLASSES]);
        let (gray, _) = digits(4, (1, 28, 28));
        assert!(c.features(&gray).is_err());
        for bad in [(3, 30, 32), (5, 32, 32), (1, 128, 128)] {
            assert!(Classifier::init(bad, 0, &Device::Cpu).is_err(), "{bad:?}");
        }
    }
}
