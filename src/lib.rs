//! diffuse: denoising diffusion models on Candle.
//!
//! The library holds all logic; the `diffuse` binary only parses arguments and calls it.
pub mod device;
pub mod error;
pub mod forward;
pub mod fsutil;
pub mod hub;
pub mod kernels;
pub mod rng;
pub mod schedule;
pub mod unet;

pub use error::{Error, Result};
pub mod data;
pub mod imageio;
pub mod modelhub;
pub mod noising;
pub mod plot;
pub mod report;
pub mod runtime;
pub mod sample;
pub mod sampler;
pub mod train;
