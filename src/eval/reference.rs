//! The evaluation split: which images of a dataset train the feature network, which form the
//! reference every sample set is measured against, and which real images, scored like a
//! sample set, give the floor. The three are disjoint (the feature network never sees the
//! reference) and the same on every machine, so figures compare across machines.
//!
//! - mnist: only the 10,000 test digits are at hand everywhere (they are built in), so they are
//!   split by the last digit of their index: 0-3 train the feature network (4,000 digits), 4-5
//!   are the floor's pool (2,000) and 6-9 the reference (4,000). Interleaved, not in blocks:
//!   the test set's first and second halves come from different writers (NIST's SD-3 and SD-1),
//!   and a block split measured that shift (real digits 4,000-4,999 against 6,000-9,999 scored
//!   FID 1.74, above every model's samples).
//! - fashion-mnist, cifar10: the training split but its last 10,000 images trains the feature
//!   network, those 10,000 are the floor's pool, and the whole test split is the reference.
use crate::data::{self, DataConfig, DatasetKind, Split};
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};

/// One part of the split: images [N, C, H, W] in [-1, 1], their labels, and which they are.
pub struct Part {
    pub images: Tensor,
    pub labels: Vec<u32>,
    /// In words, e.g. "mnist test digits 6000-9999".
    pub what: String,
}

pub struct EvalSets {
    /// The dataset's name (mnist, fashion-mnist, cifar10).
    pub dataset: String,
    pub features: Part,
    pub floor: Part,
    pub reference: Part,
}

/// MNIST's split: the last digits of the test digits' indices in each part.
const MNIST_FEATURES: std::ops::Range<usize> = 0..4;
const MNIST_FLOOR: std::ops::Range<usize> = 4..6;
const MNIST_REFERENCE: std::ops::Range<usize> = 6..10;
const MNIST_TEST: usize = 10_000;
/// The floor's pool at the end of a training split.
const FLOOR_POOL: usize = 10_000;

fn load(data: &DataConfig, split: Split) -> Result<(Tensor, Vec<u32>)> {
    let ds = data::load(&DataConfig {
        split,
        limit: None,
        hflip: Some(false),
        ..data.clone()
    })?;
    let labels = ds
        .labels
        .as_ref()
        .ok_or_else(|| Error::invalid(format!("{} has no labels", ds.name)))?
        .to_dtype(DType::U32)?
        .to_vec1()?;
    Ok((ds.images, labels))
}

fn part(images: &Tensor, labels: &[u32], r: std::ops::Range<usize>, what: String) -> Result<Part> {
    Ok(Part {
        images: images.narrow(0, r.start, r.len())?,
        labels: labels[r].to_vec(),
        what,
    })
}

/// The images whose index ends in a digit of `last`.
fn mnist_part(images: &Tensor, labels: &[u32], last: std::ops::Range<usize>) -> Result<Part> {
    let idx: Vec<u32> = (0..labels.len() as u32)
        .filter(|i| last.contains(&(*i as usize % 10)))
        .collect();
    Ok(Part {
        images: images.index_select(&Tensor::new(idx.as_slice(), images.device())?, 0)?,
        labels: idx.iter().map(|i| labels[*i as usize]).collect(),
        what: format!(
            "the {} mnist test digits whose index ends in {}-{}",
            idx.len(),
            last.start,
            last.end - 1
        ),
    })
}

/// Load `data.dataset` and split it (see the module's note).
pub fn eval_sets(data: &DataConfig) -> Result<EvalSets> {
    let kind = DatasetKind::parse(&data.dataset)?;
    let name = kind.name();
    let range = |r: &std::ops::Range<usize>| format!("{}-{}", r.start, r.end - 1);
    match kind {
        DatasetKind::Mnist => {
            let (x, l) = load(data, Split::Test)?;
            if l.len() != MNIST_TEST {
                return Err(Error::invalid(format!(
                    "the mnist test split has {} digits here, not 10,000",
                    l.len()
                )));
            }
            Ok(EvalSets {
                dataset: name,
                features: mnist_part(&x, &l, MNIST_FEATURES)?,
                floor: mnist_part(&x, &l, MNIST_FLOOR)?,
                reference: mnist_part(&x, &l, MNIST_REFERENCE)?,
            })
        }
        DatasetKind::FashionMnist | DatasetKind::Cifar10 => {
            let (xt, lt) = load(data, Split::Train)?;
            let (xr, lr) = load(data, Split::Test)?;
            let n = lt.len();
            if n < 2 * FLOOR_POOL {
                return Err(Error::invalid(format!(
                    "the {name} training split has {n} images here; the evaluation split needs at least {}",
                    2 * FLOOR_POOL
                )));
            }
            let (f, p) = (0..n - FLOOR_POOL, n - FLOOR_POOL..n);
            Ok(EvalSets {
                features: part(
                    &xt,
                    &lt,
                    f.clone(),
                    format!("{name} training images {}", range(&f)),
                )?,
                floor: part(
                    &xt,
                    &lt,
                    p.clone(),
                    format!("{name} training images {}", range(&p)),
                )?,
                reference: Part {
                    what: format!("the {} {name} test images", lr.len()),
                    images: xr,
                    labels: lr,
                },
                dataset: name,
            })
        }
        DatasetKind::Folder(p) => Err(Error::invalid(format!(
            "eval scores mnist, fashion-mnist and cifar10 samples; {} is a folder",
            p.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mnist_splits_its_test_digits_three_ways() {
        let dir = tempfile::tempdir().unwrap();
        let s = eval_sets(&DataConfig {
            dataset: "mnist".into(),
            data_dir: dir.path().join("none"),
            ..Default::default()
        })
        .unwrap();
        let all = data::load(&DataConfig {
            dataset: "mnist".into(),
            data_dir: dir.path().join("none"),
            split: Split::Test,
            ..Default::default()
        })
        .unwrap();
        let labels: Vec<u32> = all.labels.as_ref().unwrap().to_vec1().unwrap();
        for (p, last, what) in [
            (
                &s.features,
                0..4,
                "the 4000 mnist test digits whose index ends in 0-3",
            ),
            (
                &s.floor,
                4..6,
                "the 2000 mnist test digits whose index ends in 4-5",
            ),
            (
                &s.reference,
                6..10,
                "the 4000 mnist test digits whose index ends in 6-9",
            ),
        ] {
            assert_eq!(p.what, what);
            let idx: Vec<usize> = (0..10_000).filter(|i| last.contains(&(i % 10))).collect();
            assert_eq!(p.images.dims(), &[idx.len(), 1, 28, 28]);
            // Rows against the dataset: the first, one inside and the last.
            for k in [0, idx.len() / 3, idx.len() - 1] {
                let d = (p.images.get(k).unwrap() - all.images.get(idx[k]).unwrap())
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap();
                assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
            }
            let want: Vec<u32> = idx.iter().map(|i| labels[*i]).collect();
            assert_eq!(p.labels, want);
        }
        assert!(eval_sets(&DataConfig {
            dataset: dir.path().to_str().unwrap().into(),
            ..Default::default()
        })
        .is_err());
    }
}
