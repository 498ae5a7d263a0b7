//! `diffuse data show`: load a dataset and write a grid of its images.
use crate::data::{self, DataConfig};
use crate::error::Result;
use crate::io::{imageio, output};
use crate::limits;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Which images to show and where.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShowRequest {
    pub data: DataConfig,
    /// Images in the grid.
    pub num: usize,
    pub output: PathBuf,
    /// Shuffle (and flip) seed.
    pub seed: u64,
}

/// Write the grid; returns a one-line summary of the dataset and what was written.
pub fn show(req: &ShowRequest) -> Result<String> {
    limits::check_grid(req.num)?;
    output::check_outputs(&[&req.output], &[], &[])?;
    let ds = data::load(&req.data)?;
    let img = data::preview::grid(&ds, req.num, req.seed)?;
    imageio::save_png(&img, &req.output)?;
    let (ch, h, w) = ds.image_dims();
    Ok(format!(
        "{}: {} images {ch}x{h}x{w} from {}{}; wrote {} ({} images)",
        ds.name,
        ds.len(),
        ds.source,
        if ds.skipped > 0 {
            format!(" ({} unreadable skipped)", ds.skipped)
        } else {
            String::new()
        },
        req.output.display(),
        req.num.min(ds.len())
    ))
}
