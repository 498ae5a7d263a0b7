//! diffuse: denoising diffusion models on Candle.
//!
//! Three layers (docs/architecture.md):
//! - the core, [`core`]: schedules, alpha-bar tables, the closed-form forward process, the
//!   noise generator;
//! - libraries over it: the model and its CPU kernels ([`unet`], [`kernels`]), the samplers
//!   ([`sampler`]), data ([`data`]), training ([`train`]), sample quality ([`eval`]),
//!   diffusers pipeline directories
//!   ([`pipeline`]) and file output ([`io`]);
//! - [`commands`], one module per subcommand, which only composes the libraries.
//!
//! The `diffuse` binary parses arguments into the commands' requests and reports errors.
pub mod commands;
pub mod conditioning;
pub mod core;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod io;
pub mod kernels;
pub mod limits;
pub mod pipeline;
pub mod progress;
pub mod runtime;
pub mod sampler;
pub mod train;
pub mod unet;

pub use error::{Error, Result};
