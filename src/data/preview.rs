//! A grid of real images, as the first shuffled batch of a run with this seed sees them.
use super::{BatchConfig, Batches, Dataset};
use crate::error::{Error, Result};
use candle_core::Device;
use image::RgbImage;

/// The first `n` images of the seeded shuffle (flipped when the dataset flips), tiled and
/// upscaled so small images stay visible.
pub fn grid(ds: &Dataset, n: usize, seed: u64) -> Result<RgbImage> {
    if n == 0 {
        return Err(Error::invalid("-n must be at least 1"));
    }
    let cfg = BatchConfig {
        batch_size: n.min(ds.len()),
        shuffle: true,
        hflip: ds.hflip,
        drop_last: false,
    };
    let batch = Batches::new(ds, cfg, seed, &Device::Cpu)?.next_batch()?;
    let g = crate::io::imageio::grid(&batch.images, 2)?;
    Ok(crate::io::imageio::upscale(&g, 512))
}
