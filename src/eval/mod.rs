//! Sample quality: a small digit classifier trained here (seeded, on the data the diffusion
//! model trains on), whose penultimate features stand in for Inception's in FID and KID
//! (Heusel et al. 2017; Binkowski et al. 2018). Inception features mean little on 28x28
//! digits; a classifier of the domain itself is the usual substitute (e.g. the MNIST
//! "FID" of many diffusion papers' appendices). Numbers are comparable only between runs of
//! this same classifier (same seed, same reference set).
pub mod classifier;
pub mod evaluator;
pub mod frechet;
pub mod loss_by_t;
pub mod manifold;

pub use classifier::{Classifier, ClassifierConfig};
pub use evaluator::{EvalRow, Evaluator};
pub use frechet::{frechet_distance, kernel_inception_distance, normalize, rms, FeatureStats};
