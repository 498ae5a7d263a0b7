//! `diffuse interpolate`: invert two images with DDIM, walk between their latents along the
//! sphere (slerp), and draw each point with DDIM; writes a strip and a GIF.
use super::invert::{EditSettings, Editor};
use crate::error::{Error, Result};
use crate::io::imageio;
use crate::io::output::Outputs;
use crate::progress::Progress;
use crate::sampler::slerp::slerp;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Frames of a walk, ends included.
pub const DEFAULT_FRAMES: usize = 8;
pub const MAX_FRAMES: usize = 64;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InterpolateRequest {
    pub from: PathBuf,
    pub to: PathBuf,
    pub frames: usize,
    #[serde(flatten)]
    pub edit: EditSettings,
    /// The strip (one row, `from` to `to`).
    pub output: PathBuf,
    /// The walk animated there and back.
    pub gif: PathBuf,
    pub progress: bool,
}

pub fn run(req: &InterpolateRequest, device: &Device) -> Result<Vec<PathBuf>> {
    if !(2..=MAX_FRAMES).contains(&req.frames) {
        return Err(Error::invalid(format!(
            "--frames {} must be in [2, {MAX_FRAMES}]",
            req.frames
        )));
    }
    let outs: Vec<&Path> = vec![&req.output, &req.gif];
    let inputs: Vec<&Path> = vec![&req.from, &req.to];
    let ed = Editor::open(&req.edit, &outs, &inputs, device)?;
    let x0 = ed.images(&[req.from.clone(), req.to.clone()])?;
    let mut pb = Progress::new(
        "interpolate",
        "step",
        (ed.inversion_evals() + ed.steps()) as u64,
        0,
        req.progress,
    );
    let latents = ed.invert(&x0, &mut pb)?;
    let (a, b) = (latents.get(0)?, latents.get(1)?);
    let walk = (0..req.frames)
        .map(|i| slerp(&a, &b, i as f64 / (req.frames - 1) as f64))
        .collect::<Result<Vec<_>>>()?;
    let images = ed.generate(&Tensor::stack(&walk, 0)?, &mut pb)?;
    pb.finish();
    let mut outputs = Outputs::new();
    let strip = imageio::grid_cols(&images, 2, req.frames as u32)?;
    outputs.add(
        &req.output,
        &imageio::png_bytes(&imageio::upscale(&strip, 256), &req.output)?,
    )?;
    // There and back, so the loop does not jump.
    let order: Vec<usize> = (0..req.frames).chain((1..req.frames - 1).rev()).collect();
    let frames = order
        .iter()
        .map(|&i| {
            let img = imageio::tensor_to_rgb(&images.get(i)?)?;
            Ok(imageio::upscale(&img, 256))
        })
        .collect::<Result<Vec<_>>>()?;
    outputs.add(&req.gif, &imageio::gif_bytes(&frames, 150, &req.gif)?)?;
    outputs.commit()
}
