//! Sample quality: a small classifier of the dataset's own images (trained by `diffuse eval
//! --train-features` from a seed, never on the evaluation reference; shipped for MNIST and
//! Fashion-MNIST), whose penultimate features stand in for Inception's in FID and KID
//! (Heusel et al. 2017; Binkowski et al. 2018). Inception features mean little on 28x28
//! digits; a classifier of the domain itself is the usual substitute (e.g. the MNIST
//! "FID" of many diffusion papers' appendices). Numbers are comparable only between runs of
//! this same network (same weights, same reference set).
pub mod classifier;
pub mod evaluator;
pub mod features;
pub mod frechet;
pub mod loss_by_t;
pub mod manifold;
pub mod reference;

pub use classifier::{Classifier, ClassifierConfig, FeatureInfo};
pub use evaluator::{EvalRow, Evaluator};
pub use frechet::{frechet_distance, kernel_inception_distance, normalize, rms, FeatureStats};
pub use reference::{eval_sets, EvalSets};
