//! `diffuse noise`: jump an image to timestep(s) t in one step with the closed form, and show
//! the forward process as a labelled strip or a GIF.
use crate::error::{Error, Result};
use crate::forward::ForwardProcess;
use crate::imageio;
use crate::plot;
use crate::rng::NoiseRng;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What to noise and where to write it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NoiseRequest {
    pub input: PathBuf,
    /// Timesteps to show; one gives a single image, several a labelled strip.
    pub timesteps: Vec<usize>,
    pub size: Option<u32>,
    pub seed: u64,
    pub output: Option<PathBuf>,
    pub gif: Option<PathBuf>,
    /// Frames in the GIF (evenly spaced over [0, T-1]).
    pub gif_frames: usize,
    pub save_tensors: Option<PathBuf>,
}

/// `n` timesteps evenly spaced over [0, T-1], rounded half to even as numpy does.
pub fn spaced_timesteps(n: usize, t_max: usize) -> Vec<usize> {
    if n <= 1 {
        return vec![t_max];
    }
    let mut v: Vec<usize> = (0..n)
        .map(|i| (i as f64 * t_max as f64 / (n - 1) as f64).round_ties_even() as usize)
        .collect();
    v.dedup();
    v
}

/// Default output name beside the input: `img_t500.png`, or `img_strip.png` for several t.
pub fn default_output(input: &Path, timesteps: &[usize]) -> PathBuf {
    let stem = input
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("image");
    let name = match timesteps {
        [t] => format!("{stem}_t{t}.png"),
        _ => format!("{stem}_strip.png"),
    };
    input.with_file_name(name)
}

/// Run the request; returns the files written.
pub fn run(req: &NoiseRequest, fp: &ForwardProcess, device: &Device) -> Result<Vec<PathBuf>> {
    if req.timesteps.is_empty() {
        return Err(Error::invalid("no timesteps given"));
    }
    for &t in &req.timesteps {
        fp.schedule.check_t(t)?;
    }
    let x0 = imageio::load_image(&req.input, req.size, device)?.unsqueeze(0)?;
    let (c, h, w) = (x0.dim(1)?, x0.dim(2)?, x0.dim(3)?);
    // One noise draw shared by every panel and frame, so they differ only in t.
    let mut rng = NoiseRng::new(req.seed);
    let eps = rng.randn((1, c, h, w), device)?;
    let noised = |ts: &[usize]| -> Result<Tensor> {
        let n = ts.len();
        let t32: Vec<u32> = ts.iter().map(|t| *t as u32).collect();
        let t = fp.timesteps_tensor(&t32)?;
        fp.q_sample(
            &x0.broadcast_as((n, c, h, w))?.contiguous()?,
            &t,
            &eps.broadcast_as((n, c, h, w))?.contiguous()?,
        )
    };
    let xt = noised(&req.timesteps)?;
    let mut written = Vec::new();

    let out = req
        .output
        .clone()
        .unwrap_or_else(|| default_output(&req.input, &req.timesteps));
    if let [_] = req.timesteps.as_slice() {
        imageio::save_tensor_png(&xt.get(0)?, &out)?;
    } else {
        let mut panels = vec![imageio::tensor_to_rgb(&x0.get(0)?)?];
        let mut labels = vec!["x0".to_string()];
        for (i, t) in req.timesteps.iter().enumerate() {
            panels.push(imageio::tensor_to_rgb(&xt.get(i)?)?);
            labels.push(format!("t={t}"));
        }
        let strip = plot::labelled_strip(&panels, &labels, 96)?;
        imageio::save_png(&strip, &out)?;
    }
    written.push(out);

    if let Some(gif) = &req.gif {
        let ts = spaced_timesteps(req.gif_frames.max(2), fp.schedule.len() - 1);
        let frames_t = noised(&ts)?;
        let mut frames = Vec::with_capacity(ts.len());
        for (i, t) in ts.iter().enumerate() {
            let img = imageio::tensor_to_rgb(&frames_t.get(i)?)?;
            frames.push(plot::labelled_strip(&[img], &[format!("t={t}")], 128)?);
        }
        imageio::save_gif(&frames, 80, gif)?;
        written.push(gif.clone());
    }

    if let Some(path) = &req.save_tensors {
        let n = req.timesteps.len();
        let t: Vec<i64> = req.timesteps.iter().map(|t| *t as i64).collect();
        let tensors = [
            ("x0".to_string(), x0.to_device(&Device::Cpu)?),
            ("eps".to_string(), eps.to_device(&Device::Cpu)?),
            ("t".to_string(), Tensor::from_vec(t, n, &Device::Cpu)?),
            (
                "x_t".to_string(),
                xt.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
            ),
        ];
        crate::fsutil::write_safetensors(path, &tensors, None)?;
        written.push(path.clone());
    }
    Ok(written)
}
