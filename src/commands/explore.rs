//! `diffuse explore`: one self-contained HTML page (no network, no external scripts) to move
//! t along a schedule and watch alpha_bar, the coefficients, SNR and an image noised at t with
//! one fixed noise draw. The page's code lives in `assets/explore/` and is embedded at build
//! time; the image and the noise (the draw `diffuse noise --seed` makes) are embedded as f32.
use crate::core::rng::NoiseRng;
use crate::core::schedule::{Schedule, ScheduleConfig};
use crate::error::{Error, Result};
use crate::io::{imageio, output};
use base64::Engine;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const HTML: &str = include_str!("../../assets/explore/explore.html");
const CSS: &str = include_str!("../../assets/explore/explore.css");
const JS: &str = include_str!("../../assets/explore/explore.js");
/// The picture used when none is given.
const SAMPLE_PNG: &[u8] = include_bytes!("../../data/sample.png");

/// The page's image side, at most: 3 x 256 x 256 floats twice is 1.5 MB of base64.
pub const MAX_SIZE: u32 = 256;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExploreRequest {
    /// The image (None: the bundled sample picture).
    pub image: Option<PathBuf>,
    /// Resize (shorter side) and centre crop to this side.
    pub size: u32,
    pub seed: u64,
    /// The schedule the page opens with (the page changes it freely).
    pub schedule: ScheduleConfig,
    /// The t the page opens at (None: T/2).
    pub t: Option<usize>,
    pub output: PathBuf,
}

fn base64_f32(t: &Tensor) -> Result<String> {
    let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The page for `req`, as text.
pub fn page(req: &ExploreRequest) -> Result<String> {
    if req.schedule.betas.is_some() {
        return Err(Error::invalid(
            "--betas: the page computes its schedules from parameters; give --schedule, --timesteps and the beta range",
        ));
    }
    if req.size == 0 || req.size > MAX_SIZE {
        return Err(Error::invalid(format!(
            "--size {} must be in [1, {MAX_SIZE}]",
            req.size
        )));
    }
    let schedule = Schedule::new(&req.schedule)?;
    if schedule.len() < 2 {
        return Err(Error::invalid("the page needs T >= 2"));
    }
    let t = req.t.unwrap_or(schedule.len() / 2);
    schedule.check_t(t)?;
    let dev = Device::Cpu;
    let x0 = match &req.image {
        Some(p) => imageio::load_image(p, Some(req.size), &dev)?,
        None => {
            let img = image::load_from_memory(SAMPLE_PNG)
                .map_err(|e| Error::Runtime(format!("the bundled sample image: {e}")))?;
            imageio::image_to_tensor(img, false, Some(req.size), &dev)?
        }
    };
    let (c, h, w) = x0.dims3()?;
    // The same draw as `diffuse noise --seed` for this image (one [1, C, H, W] randn).
    let eps = NoiseRng::new(req.seed).randn((1, c, h, w), &dev)?;
    let (start, end) = req.schedule.beta_range();
    let data = serde_json::json!({
        "c": c, "h": h, "w": w,
        "seed": req.seed,
        "x0": base64_f32(&x0)?,
        "eps": base64_f32(&eps)?,
        "init": {
            "schedule": req.schedule.schedule.name(),
            "T": schedule.len(),
            "start": start,
            "end": end,
            "zeroSnr": req.schedule.zero_snr,
            "t": t,
        },
    })
    .to_string()
    // Inside <script>: no "</script>" can close it early.
    .replace('<', "\\u003c");
    Ok(HTML
        .replace("{{style}}", CSS)
        .replace("{{script}}", JS)
        .replace("{{data}}", &data))
}

pub fn run(req: &ExploreRequest) -> Result<Vec<PathBuf>> {
    let inputs: Vec<&Path> = req.image.as_deref().into_iter().collect();
    output::check_outputs(&[&req.output], &inputs, &[])?;
    let html = page(req)?;
    output::write_bytes_atomic(&req.output, html.as_bytes())?;
    Ok(vec![req.output.clone()])
}
