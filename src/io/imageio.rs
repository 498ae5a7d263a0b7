//! Images in and out: decode to [-1,1] tensors, encode tensors as PNG, grids, labelled strips
//! and GIF animations. Every file is written atomically.
use crate::error::{Error, Result};
use crate::io::output::write_atomic;
use candle_core::{DType, Device, Tensor};
use image::{imageops::FilterType, DynamicImage, ImageFormat, RgbImage};
use std::path::Path;

/// Decode an image file to a [C,H,W] f32 tensor in [-1,1]; C is 1 for gray images, 3 otherwise.
/// `size` resizes (shorter side to `size`, then centre crop to size x size).
pub fn load_image(path: &Path, size: Option<u32>, device: &Device) -> Result<Tensor> {
    // 256 MB of compressed image is beyond any image this tool works on.
    let bytes = crate::io::input::read_bounded(path, 256 << 20)?;
    let img = image::load_from_memory(&bytes)
        .map_err(|e| Error::format(path, format!("not a readable image: {e}")))?;
    let gray = matches!(
        img.color(),
        image::ColorType::L8
            | image::ColorType::L16
            | image::ColorType::La8
            | image::ColorType::La16
    );
    image_to_tensor(img, gray, size, device)
}

/// Resize (shorter side to `size`, centre crop) and convert to a [C,H,W] tensor in [-1,1].
pub fn image_to_tensor(
    img: DynamicImage,
    gray: bool,
    size: Option<u32>,
    device: &Device,
) -> Result<Tensor> {
    let img = match size {
        Some(0) => return Err(Error::invalid("--size must be at least 1")),
        Some(s) => resize_crop(img, s),
        None => img,
    };
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (c, data) = if gray {
        (1, img.to_luma8().into_raw())
    } else {
        (3, img.to_rgb8().into_raw())
    };
    // HWC bytes -> CHW floats in [-1, 1].
    let mut out = vec![0f32; c * h * w];
    for (i, px) in data.chunks(c).enumerate() {
        for (k, v) in px.iter().enumerate() {
            out[k * h * w + i] = *v as f32 / 127.5 - 1.0;
        }
    }
    Ok(Tensor::from_vec(out, (c, h, w), device)?)
}

fn resize_crop(img: DynamicImage, size: u32) -> DynamicImage {
    let (w, h) = (img.width(), img.height());
    let scale = size as f64 / w.min(h) as f64;
    let (nw, nh) = (
        ((w as f64 * scale).round() as u32).max(size),
        ((h as f64 * scale).round() as u32).max(size),
    );
    let img = img.resize_exact(nw, nh, FilterType::Lanczos3);
    img.crop_imm((nw - size) / 2, (nh - size) / 2, size, size)
}

/// A [C,H,W] tensor in [-1,1] (values clamped) to an RGB image.
pub fn tensor_to_rgb(t: &Tensor) -> Result<RgbImage> {
    let (c, h, w) = t.dims3()?;
    if c != 1 && c != 3 {
        return Err(Error::invalid(format!(
            "cannot show an image with {c} channels (1 or 3 expected)"
        )));
    }
    let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let to_u8 = |x: f32| ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
    let mut img = RgbImage::new(w as u32, h as u32);
    for y in 0..h {
        for x in 0..w {
            let px = |k: usize| to_u8(v[(k.min(c - 1)) * h * w + y * w + x]);
            img.put_pixel(x as u32, y as u32, image::Rgb([px(0), px(1), px(2)]));
        }
    }
    Ok(img)
}

/// Encode an image as PNG at `path`, atomically.
pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    save_image(
        &DynamicImage::ImageRgb8(img.clone()),
        path,
        ImageFormat::Png,
    )
}

/// Encode in the given format atomically. Gray images stay 8-bit gray.
pub fn save_image(img: &DynamicImage, path: &Path, format: ImageFormat) -> Result<()> {
    let buf = encode(img, path, format)?;
    write_atomic(path, |w| w.write_all(&buf))
}

/// Encode in memory (`path` only names the output in errors).
pub fn encode(img: &DynamicImage, path: &Path, format: ImageFormat) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut buf), format)
        .map_err(|e| Error::format(path, format!("could not encode image: {e}")))?;
    Ok(buf)
}

/// An RGB image as PNG bytes.
pub fn png_bytes(img: &RgbImage, path: &Path) -> Result<Vec<u8>> {
    encode(
        &DynamicImage::ImageRgb8(img.clone()),
        path,
        ImageFormat::Png,
    )
}

/// A [C,H,W] tensor in [-1,1] as PNG bytes (gray stays gray).
pub fn tensor_png_bytes(t: &Tensor, path: &Path) -> Result<Vec<u8>> {
    let rgb = tensor_to_rgb(t)?;
    let img = if t.dim(0)? == 1 {
        DynamicImage::ImageLuma8(DynamicImage::ImageRgb8(rgb).to_luma8())
    } else {
        DynamicImage::ImageRgb8(rgb)
    };
    encode(&img, path, ImageFormat::Png)
}

/// Tile a batch [B,C,H,W] into a square-ish grid with `pad` pixels of padding; a grid of one
/// is the image itself (no frame), so it can go back in as an input.
pub fn grid(batch: &Tensor, pad: u32) -> Result<RgbImage> {
    let b = batch.dim(0)?;
    if b == 1 {
        return tensor_to_rgb(&batch.get(0)?);
    }
    grid_cols(batch, pad, (b as f64).sqrt().ceil().max(1.0) as u32)
}

/// Tile a batch [B,C,H,W] row by row, `cols` tiles per row.
pub fn grid_cols(batch: &Tensor, pad: u32, cols: u32) -> Result<RgbImage> {
    let (b, _, h, w) = batch.dims4()?;
    let cols = cols.max(1);
    let rows = (b as u32).div_ceil(cols);
    let (h, w) = (h as u32, w as u32);
    let mut out = RgbImage::from_pixel(
        cols * (w + pad) + pad,
        rows * (h + pad) + pad,
        image::Rgb([40, 40, 40]),
    );
    for i in 0..b {
        let tile = tensor_to_rgb(&batch.get(i)?)?;
        let (r, c) = (i as u32 / cols, i as u32 % cols);
        image::imageops::replace(
            &mut out,
            &tile,
            (pad + c * (w + pad)) as i64,
            (pad + r * (h + pad)) as i64,
        );
    }
    Ok(out)
}

/// Upscale with nearest neighbour so small images (28x28) stay visible.
pub fn upscale(img: &RgbImage, min_side: u32) -> RgbImage {
    let side = img.width().min(img.height()).max(1);
    let k = min_side.div_ceil(side).max(1);
    if k == 1 {
        return img.clone();
    }
    image::imageops::resize(img, img.width() * k, img.height() * k, FilterType::Nearest)
}

/// Frames as an infinitely looping GIF in memory.
pub fn gif_bytes(frames: &[RgbImage], delay_ms: u32, path: &Path) -> Result<Vec<u8>> {
    use image::codecs::gif::{GifEncoder, Repeat};
    let mut buf = Vec::new();
    {
        let mut enc = GifEncoder::new_with_speed(&mut buf, 10);
        enc.set_repeat(Repeat::Infinite)
            .map_err(|e| Error::format(path, e.to_string()))?;
        for f in frames {
            let rgba = DynamicImage::ImageRgb8(f.clone()).to_rgba8();
            let frame = image::Frame::from_parts(
                rgba,
                0,
                0,
                image::Delay::from_numer_denom_ms(delay_ms, 1),
            );
            enc.encode_frame(frame)
                .map_err(|e| Error::format(path, format!("could not encode GIF: {e}")))?;
        }
    }
    Ok(buf)
}

/// An image input for a model taking (C, H, W) images, as [1, C, H, W] in [-1, 1]: resized
/// (shorter side) and centre-cropped, gray or RGB converted to the model's channels.
pub fn load_for_model(
    path: &Path,
    shape: (usize, usize, usize),
    device: &Device,
) -> Result<Tensor> {
    let (c, h, w) = shape;
    if h != w {
        return Err(Error::invalid(format!(
            "image inputs need a square model (this one is {h}x{w})"
        )));
    }
    let img = load_image(path, Some(h as u32), device)?;
    let img = match (img.dim(0)?, c) {
        (a, b) if a == b => img,
        (3, 1) => img.mean_keepdim(0)?,
        (1, 3) => img.repeat((3, 1, 1))?,
        (a, b) => {
            return Err(Error::format(
                path,
                format!("has {a} channels; the model takes {b}"),
            ))
        }
    };
    Ok(img.unsqueeze(0)?)
}
