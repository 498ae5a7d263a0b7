//! Which feature network scores a dataset: a weights file (`--features`), or the one shipped
//! for it. The MNIST and Fashion-MNIST networks are built into the binary (assets/features/,
//! made by `make features`; 1.7 MB each), so `diffuse eval` works offline at once.
use super::classifier::{Classifier, FeatureInfo};
use crate::data::DatasetKind;
use crate::error::{Error, Result};
use candle_core::Device;
use std::path::Path;

const MNIST: &[u8] = include_bytes!("../../assets/features/mnist.safetensors");
const FASHION_MNIST: &[u8] = include_bytes!("../../assets/features/fashion-mnist.safetensors");

/// The shipped weights for a dataset, if any.
pub fn shipped(kind: &DatasetKind) -> Option<(&'static [u8], &'static str)> {
    match kind {
        DatasetKind::Mnist => Some((MNIST, "assets/features/mnist.safetensors")),
        DatasetKind::FashionMnist => {
            Some((FASHION_MNIST, "assets/features/fashion-mnist.safetensors"))
        }
        _ => None,
    }
}

/// The feature network for `dataset`: `file` when given, else the shipped one. The network
/// must have been trained for that dataset (its reference is what it was kept away from).
pub fn open(
    dataset: &str,
    file: Option<&Path>,
    device: &Device,
) -> Result<(Classifier, FeatureInfo)> {
    let kind = DatasetKind::parse(dataset)?;
    let (clf, info) = match file {
        Some(p) => Classifier::load(p, device)?,
        None => {
            let (bytes, origin) = shipped(&kind).ok_or_else(|| {
                Error::invalid(format!(
                    "no feature network ships for {}: train one with diffuse eval --train-features --dataset {0} -o F, then pass --features F",
                    kind.name()
                ))
            })?;
            Classifier::from_bytes(bytes, Path::new(origin), device)?
        }
    };
    if info.dataset != kind.name() {
        return Err(Error::invalid(format!(
            "the feature network was trained for {}, not {}",
            info.dataset,
            kind.name()
        )));
    }
    Ok((clf, info))
}
