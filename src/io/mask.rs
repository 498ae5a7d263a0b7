//! Inpainting masks (diffusers' convention: 1 keeps the known image, 0 is inpainted): a PNG
//! (white keeps) of the same size as the image it masks, or a built-in region to inpaint.
use crate::error::{Error, Result};
use crate::io::imageio;
use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};

/// A built-in region to inpaint, for quick demos.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    Left,
    Right,
    Top,
    Bottom,
    /// The middle square of half the side.
    Center,
}

/// `--mask`: a built-in region's name, or a mask image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MaskSpec {
    Region(Region),
    File(PathBuf),
}

impl MaskSpec {
    pub fn parse(s: &str) -> Self {
        match s.to_ascii_lowercase().as_str() {
            "left" => Self::Region(Region::Left),
            "right" => Self::Region(Region::Right),
            "top" => Self::Region(Region::Top),
            "bottom" => Self::Region(Region::Bottom),
            "center" | "centre" => Self::Region(Region::Center),
            _ => Self::File(PathBuf::from(s)),
        }
    }

    pub fn file(&self) -> Option<&Path> {
        match self {
            Self::File(p) => Some(p),
            Self::Region(_) => None,
        }
    }
}

/// The mask for an `init` image going into a model of side `side`, as [1, 1, side, side] of
/// 0 and 1. A mask file must have the init image's size; it is resized as the image is and
/// binarised at half grey (as diffusers' RePaint pipeline).
pub fn load(spec: &MaskSpec, init: &Path, side: usize, device: &Device) -> Result<Tensor> {
    match spec {
        MaskSpec::Region(r) => region(*r, side, device),
        MaskSpec::File(p) => {
            let dims = |f: &Path| {
                image::image_dimensions(f)
                    .map_err(|e| Error::format(f, format!("not a readable image: {e}")))
            };
            let (want, have) = (dims(init)?, dims(p)?);
            if want != have {
                return Err(Error::format(
                    p,
                    format!(
                        "is {}x{} but the image it masks is {}x{}",
                        have.0, have.1, want.0, want.1
                    ),
                ));
            }
            let m = imageio::load_image(p, Some(side as u32), device)?.mean_keepdim(0)?;
            // [-1, 1] from load_image: half grey is 0.
            Ok(m.ge(0.0)?.to_dtype(candle_core::DType::F32)?.unsqueeze(0)?)
        }
    }
}

/// A built-in mask: 0 over `r`, 1 elsewhere.
pub fn region(r: Region, side: usize, device: &Device) -> Result<Tensor> {
    let (lo, hi) = (side / 4, side - side / 4);
    let half = side / 2;
    let v: Vec<f32> = (0..side * side)
        .map(|i| {
            let (y, x) = (i / side, i % side);
            let hole = match r {
                Region::Left => x < half,
                Region::Right => x >= half,
                Region::Top => y < half,
                Region::Bottom => y >= half,
                Region::Center => (lo..hi).contains(&x) && (lo..hi).contains(&y),
            };
            if hole {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    Ok(Tensor::from_vec(v, (1, 1, side, side), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_cover_what_they_name() {
        let d = Device::Cpu;
        let rows = |r| -> Vec<Vec<f32>> {
            region(r, 4, &d)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec2()
                .unwrap()
        };
        assert_eq!(rows(Region::Left)[0], vec![0., 0., 1., 1.]);
        assert_eq!(rows(Region::Right)[3], vec![1., 1., 0., 0.]);
        assert_eq!(rows(Region::Top)[1], vec![0.; 4]);
        assert_eq!(rows(Region::Bottom)[1], vec![1.; 4]);
        let c = rows(Region::Center);
        assert_eq!(c[0], vec![1.; 4]);
        assert_eq!(c[1], vec![1., 0., 0., 1.]);
        assert_eq!(MaskSpec::parse("Centre"), MaskSpec::Region(Region::Center));
        assert_eq!(MaskSpec::parse("m.png"), MaskSpec::File("m.png".into()));
    }
}
