//! A Candle implementation of diffusers' `UNet2DModel` (DownBlock2D / AttnDownBlock2D /
//! UpBlock2D / AttnUpBlock2D, UNetMidBlock2D, positional time embedding) that loads and saves
//! diffusers checkpoints with identical tensor names.
pub mod blocks;
pub mod config;
pub mod io;
pub mod model;
pub mod ops;
pub mod precision;

pub use config::{preset_or_file, UNetConfig};
pub use io::{frozen, frozen_as, init, load, param_count, param_counts_by_block, param_spec, save};
pub use model::{Intermediates, UNet2DModel};
pub use precision::Precision;
