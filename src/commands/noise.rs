//! `diffuse noise`: jump an image to timestep(s) t in one step with the closed form, and show
//! the forward process as a labelled strip or a GIF.
use crate::core::forward::ForwardProcess;
use crate::core::rng::NoiseRng;
use crate::core::schedule::{Schedule, ScheduleConfig};
use crate::error::{Error, Result};
use crate::io::output::{self, Outputs};
use crate::io::{imageio, plot};
use crate::limits;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What to noise and where to write it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NoiseRequest {
    pub input: PathBuf,
    /// Timesteps to show; one gives a single image, several a labelled strip. Empty: T/2, or
    /// `panels` evenly spaced ones.
    pub timesteps: Vec<usize>,
    /// Show this many timesteps evenly spaced over [0, T-1] instead of `timesteps`.
    pub panels: Option<usize>,
    pub schedule: ScheduleConfig,
    pub size: Option<u32>,
    pub seed: u64,
    pub output: Option<PathBuf>,
    pub gif: Option<PathBuf>,
    /// Frames in the GIF (evenly spaced over [0, T-1]).
    pub gif_frames: usize,
    pub save_tensors: Option<PathBuf>,
}

impl NoiseRequest {
    /// The timesteps this request shows, checked against the schedule.
    pub fn resolve_timesteps(&self, schedule: &Schedule) -> Result<Vec<usize>> {
        let ts = match (self.panels, self.timesteps.is_empty()) {
            (Some(_), false) => {
                return Err(Error::invalid("give --t or --panels, not both"));
            }
            (Some(n), true) => {
                limits::check_count(
                    "--panels",
                    n,
                    limits::MAX_PANELS,
                    "a wider strip is unreadable",
                )?;
                spaced_timesteps(n, schedule.len() - 1)
            }
            (None, false) => self.timesteps.clone(),
            (None, true) => vec![schedule.len() / 2],
        };
        if ts.len() > limits::MAX_PANELS {
            return Err(Error::invalid(format!(
                "--t lists {} timesteps, above the limit of {} panels (a wider strip is unreadable)",
                ts.len(),
                limits::MAX_PANELS
            )));
        }
        for &t in &ts {
            schedule.check_t(t)?;
        }
        Ok(ts)
    }
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

/// Run the request; returns the files written (all of them, or none on failure).
pub fn run(req: &NoiseRequest, device: &Device) -> Result<Vec<PathBuf>> {
    let schedule = Schedule::new(&req.schedule)?;
    let timesteps = req.resolve_timesteps(&schedule)?;
    if let Some(s) = req.size {
        limits::check_image_side(s)?;
    }
    if req.gif.is_some() {
        limits::check_gif_frames(req.gif_frames)?;
    }
    let out = req
        .output
        .clone()
        .unwrap_or_else(|| default_output(&req.input, &timesteps));
    // The input first: a missing or unreadable image is the first thing to say.
    let x0 = imageio::load_image(&req.input, req.size, device)?.unsqueeze(0)?;
    let mut outs: Vec<&Path> = vec![&out];
    outs.extend(req.gif.as_deref());
    outs.extend(req.save_tensors.as_deref());
    output::check_outputs(&outs, &[&req.input], &[])?;
    let fp = ForwardProcess::new(schedule, device)?;
    let (c, h, w) = (x0.dim(1)?, x0.dim(2)?, x0.dim(3)?);
    limits::check_pixels("panels", timesteps.len() + 1, h, w)?;
    if req.gif.is_some() {
        limits::check_pixels("frames", req.gif_frames.max(2), h, w)?;
    }
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
    let xt = noised(&timesteps)?;
    let mut outputs = Outputs::new();

    if let [_] = timesteps.as_slice() {
        outputs.add(&out, &imageio::tensor_png_bytes(&xt.get(0)?, &out)?)?;
    } else {
        let mut panels = vec![imageio::tensor_to_rgb(&x0.get(0)?)?];
        let mut labels = vec!["x0".to_string()];
        for (i, t) in timesteps.iter().enumerate() {
            panels.push(imageio::tensor_to_rgb(&xt.get(i)?)?);
            labels.push(format!("t={t}"));
        }
        let strip = plot::labelled_strip(&panels, &labels, 96)?;
        outputs.add(&out, &imageio::png_bytes(&strip, &out)?)?;
    }

    if let Some(gif) = &req.gif {
        let ts = spaced_timesteps(req.gif_frames.max(2), fp.schedule.len() - 1);
        let frames_t = noised(&ts)?;
        let mut frames = Vec::with_capacity(ts.len());
        for (i, t) in ts.iter().enumerate() {
            let img = imageio::tensor_to_rgb(&frames_t.get(i)?)?;
            frames.push(plot::labelled_strip(&[img], &[format!("t={t}")], 128)?);
        }
        outputs.add(gif, &imageio::gif_bytes(&frames, 80, gif)?)?;
    }

    if let Some(path) = &req.save_tensors {
        let n = timesteps.len();
        let t: Vec<i64> = timesteps.iter().map(|t| *t as i64).collect();
        let tensors = [
            ("x0".to_string(), x0.to_device(&Device::Cpu)?),
            ("eps".to_string(), eps.to_device(&Device::Cpu)?),
            ("t".to_string(), Tensor::from_vec(t, n, &Device::Cpu)?),
            (
                "x_t".to_string(),
                xt.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
            ),
        ];
        outputs.add(path, &output::safetensors_bytes(path, &tensors, None)?)?;
    }
    outputs.commit()
}
