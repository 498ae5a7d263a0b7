//! Training data: named datasets (mnist, fashion-mnist, cifar10) resolved from a local copy,
//! the Hugging Face hub cache, or (MNIST only) the digits built into the binary; or a folder of
//! images. Everything lands in one f32 tensor [N,C,H,W] in [-1,1] on the CPU; `batches`
//! shuffles it per epoch from the run's seed, resumably.
pub mod batches;
pub mod cifar;
pub mod folder;
pub mod hub;
pub mod idx;
pub mod mnist;
pub mod preview;

pub use batches::{Batch, BatchConfig, BatchState, Batches};

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which part of a named dataset to load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    #[default]
    Train,
    Test,
}

impl std::str::FromStr for Split {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "test" | "t10k" => Ok(Split::Test),
            _ => Err(Error::invalid(format!(
                "unknown split '{s}' (expected train or test)"
            ))),
        }
    }
}

/// What `--dataset` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatasetKind {
    Mnist,
    FashionMnist,
    Cifar10,
    Folder(PathBuf),
}

impl DatasetKind {
    /// A dataset name (case-insensitive, `_` and `-` interchangeable) or an existing folder.
    pub fn parse(s: &str) -> Result<Self> {
        let norm = s.trim().to_ascii_lowercase().replace('_', "-");
        match norm.as_str() {
            "mnist" => return Ok(Self::Mnist),
            "fashion-mnist" | "fashionmnist" => return Ok(Self::FashionMnist),
            "cifar10" | "cifar-10" => return Ok(Self::Cifar10),
            _ => {}
        }
        let p = Path::new(s);
        if p.is_dir() {
            return Ok(Self::Folder(p.to_path_buf()));
        }
        if p.exists() {
            return Err(Error::format(p, "is a file, not a folder of images"));
        }
        if crate::io::input::looks_like_path(s) {
            return Err(Error::io(
                p,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such folder of images (and not mnist, fashion-mnist or cifar10)",
                ),
            ));
        }
        Err(Error::invalid(format!(
            "unknown dataset '{s}': expected mnist, fashion-mnist, cifar10 or a folder of images"
        )))
    }

    /// Random horizontal flips by default: on for natural images, off for digits and
    /// clothing (a mirrored 2 or a mirrored shoe label is not in the data distribution).
    pub fn default_hflip(&self) -> bool {
        matches!(self, Self::Cifar10 | Self::Folder(_))
    }

    /// The names of the label values of a named set (None for folders: their subfolders
    /// name the classes, see `folder`).
    pub fn class_names(&self) -> Option<Vec<String>> {
        let names: &[&str] = match self {
            Self::Mnist => &[
                "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
            ],
            Self::FashionMnist => &[
                "t-shirt",
                "trouser",
                "pullover",
                "dress",
                "coat",
                "sandal",
                "shirt",
                "sneaker",
                "bag",
                "ankle-boot",
            ],
            Self::Cifar10 => &[
                "airplane",
                "automobile",
                "bird",
                "cat",
                "deer",
                "dog",
                "frog",
                "horse",
                "ship",
                "truck",
            ],
            Self::Folder(_) => return None,
        };
        Some(names.iter().map(|s| s.to_string()).collect())
    }

    pub fn name(&self) -> String {
        match self {
            Self::Mnist => "mnist".into(),
            Self::FashionMnist => "fashion-mnist".into(),
            Self::Cifar10 => "cifar10".into(),
            Self::Folder(p) => p.display().to_string(),
        }
    }
}

/// How to find and shape the data. Serialisable so a training run can record it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DataConfig {
    /// mnist | fashion-mnist | cifar10 | PATH to a folder of images.
    pub dataset: String,
    /// Where local copies of named datasets live (`<data_dir>/<name>/...`).
    pub data_dir: PathBuf,
    pub split: Split,
    /// Side of the square images a folder is resized and cropped to (named sets keep theirs).
    pub sample_size: u32,
    /// 1 (gray) or 3 (RGB) for folders; named sets have their own channel count.
    pub in_channels: usize,
    /// Random horizontal flip; None = the dataset's default.
    pub hflip: Option<bool>,
    /// Keep only the first `limit` images (quick runs).
    pub limit: Option<usize>,
    /// The user named `data_dir` (`--data-dir`): it must exist, and a named set found neither
    /// there nor in the hub cache is an error rather than the bundled MNIST digits.
    pub data_dir_given: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dataset: "mnist".into(),
            data_dir: PathBuf::from("data"),
            split: Split::Train,
            sample_size: 32,
            in_channels: 3,
            hflip: None,
            limit: None,
            data_dir_given: false,
        }
    }
}

/// Raw loader output: pixels in [-1,1] laid out as `dims` (N,C,H,W).
pub struct Loaded {
    pub dims: (usize, usize, usize, usize),
    pub pixels: Vec<f32>,
    pub labels: Option<Vec<u8>>,
    pub source: String,
}

/// Images in memory: `images` [N,C,H,W] f32 in [-1,1] on the CPU, `labels` [N] u32 if known.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub images: Tensor,
    pub labels: Option<Tensor>,
    /// Dataset name as resolved (mnist, cifar10, or the folder path).
    pub name: String,
    /// Where the images came from (file, folder, hub cache path or "bundled ...").
    pub source: String,
    /// Whether batches are randomly flipped by default (config or dataset default).
    pub hflip: bool,
    /// Unreadable files skipped in a folder.
    pub skipped: usize,
    /// What each label value means (named sets; folders whose images sit in class
    /// subfolders).
    pub class_names: Option<Vec<String>>,
}

impl Dataset {
    /// Build from raw pixels, checking the sizes agree.
    pub fn from_loaded(l: Loaded, name: String, hflip: bool, skipped: usize) -> Result<Self> {
        let (n, c, h, w) = l.dims;
        if l.pixels.len() != n * c * h * w {
            return Err(Error::Runtime(format!(
                "{}: {} pixel values for {n}x{c}x{h}x{w} images",
                l.source,
                l.pixels.len()
            )));
        }
        let images = Tensor::from_vec(l.pixels, (n, c, h, w), &Device::Cpu)?;
        let labels = match l.labels {
            Some(v) => {
                let v: Vec<u32> = v.into_iter().map(u32::from).collect();
                let len = v.len();
                Some(Tensor::from_vec(v, len, &Device::Cpu)?)
            }
            None => None,
        };
        Ok(Self {
            images,
            labels,
            name,
            source: l.source,
            hflip,
            skipped,
            class_names: None,
        })
    }

    pub fn len(&self) -> usize {
        self.images.dims()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (channels, height, width) of each image.
    pub fn image_dims(&self) -> (usize, usize, usize) {
        let d = self.images.dims();
        (d[1], d[2], d[3])
    }

    /// Keep the first `n` images.
    pub fn truncate(&mut self, n: usize) -> Result<()> {
        if n < self.len() {
            self.images = self.images.narrow(0, 0, n)?.contiguous()?;
            if let Some(l) = &self.labels {
                self.labels = Some(l.narrow(0, 0, n)?.contiguous()?);
            }
        }
        Ok(())
    }

    /// Label counts per class (0..=max label), when labels are known.
    pub fn label_histogram(&self) -> Result<Option<Vec<usize>>> {
        let Some(l) = &self.labels else {
            return Ok(None);
        };
        let v: Vec<u32> = l.to_dtype(DType::U32)?.to_vec1()?;
        let mut h = vec![0usize; v.iter().max().map_or(0, |m| *m as usize + 1)];
        for x in v {
            h[x as usize] += 1;
        }
        Ok(Some(h))
    }
}

/// Load the dataset `cfg` names, following the fallback order described in docs/data.md.
pub fn load(cfg: &DataConfig) -> Result<Dataset> {
    let kind = DatasetKind::parse(&cfg.dataset)?;
    if cfg.limit == Some(0) {
        return Err(Error::invalid("--limit must be at least 1"));
    }
    if cfg.data_dir_given && !cfg.data_dir.is_dir() {
        return Err(Error::io(
            &cfg.data_dir,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "--data-dir: no such directory",
            ),
        ));
    }
    let start = std::time::Instant::now();
    let bundled = !cfg.data_dir_given;
    let (loaded, skipped) = match &kind {
        DatasetKind::Mnist => (
            mnist::load(&mnist::MNIST, &cfg.data_dir, cfg.split, bundled)?,
            0,
        ),
        DatasetKind::FashionMnist => (
            mnist::load(&mnist::FASHION_MNIST, &cfg.data_dir, cfg.split, bundled)?,
            0,
        ),
        DatasetKind::Cifar10 => (cifar::load(&cfg.data_dir, cfg.split)?, 0),
        DatasetKind::Folder(dir) => {
            crate::limits::check_image_side(cfg.sample_size)?;
            folder::load(dir, cfg.sample_size, cfg.in_channels)?
        }
    };
    let class_names = match &kind {
        DatasetKind::Folder(dir) if loaded.labels.is_some() => Some(folder::class_names(dir)?),
        k => k.class_names(),
    };
    let hflip = cfg.hflip.unwrap_or_else(|| kind.default_hflip());
    let mut ds = Dataset::from_loaded(loaded, kind.name(), hflip, skipped)?;
    ds.class_names = class_names;
    if let Some(n) = cfg.limit {
        ds.truncate(n)?;
    }
    let (c, h, w) = ds.image_dims();
    tracing::info!(
        dataset = %ds.name,
        images = ds.len(),
        source = %ds.source,
        ms = start.elapsed().as_millis() as u64,
        "loaded {}x{c}x{h}x{w}",
        ds.len()
    );
    Ok(ds)
}
