//! Sane upper bounds on sizes users give, checked before anything is allocated, so a typo
//! (`--timesteps 99999999999`) is one line and exit 2 instead of an allocation abort or the
//! OOM killer. Each bound says why it is where it is.
use crate::error::{Error, Result};

/// Diffusion timesteps T. Trained models use 1000 (4000 in Improved DDPM); a schedule table of
/// 100,000 rows is already 7 MB and no sampler needs more.
pub const MAX_TIMESTEPS: usize = 100_000;

/// Side of a resized image (`noise --size`, folder datasets' `--size`): 4096 x 4096 RGB in f32
/// is 200 MB per image; diffusion models are trained far below that.
pub const MAX_IMAGE_SIDE: u32 = 4096;

/// Panels in a `noise` strip and frames in a GIF: beyond this a strip is too wide to read and
/// a GIF too large to share.
pub const MAX_PANELS: usize = 100;
pub const MAX_GIF_FRAMES: usize = 1000;

/// Pixels of all panels of a `noise` strip, or of all frames of a GIF, together (the tensors
/// behind them are f32, so 2^27 pixels are 512 MB per channel): 8 panels at 4096x4096, or
/// 100 at 1158x1158.
pub const MAX_PIXELS: u64 = 1 << 27;

/// Images `sample` draws in one command: 10 million 32x32 RGB images are 123 GB of samples; use
/// several commands with different seeds beyond that.
pub const MAX_NUM: usize = 10_000_000;

/// Images shown in one grid PNG (`sample`, `train`'s sample grids, `data show`): a 100x100 grid
/// is already larger than a screen; `--save-tensors` keeps every sample.
pub const MAX_GRID: usize = 10_000;

/// `--name N` must lie in `1..=max`; the message says the bound and why.
pub fn check_count(flag: &str, n: usize, max: usize, why: &str) -> Result<()> {
    if n == 0 {
        return Err(Error::invalid(format!("{flag} must be at least 1")));
    }
    if n > max {
        return Err(Error::invalid(format!(
            "{flag} {n} is above the limit of {max} ({why})"
        )));
    }
    Ok(())
}

/// `n` images of `h` x `w` pixels (panels or frames, `what`) must fit [`MAX_PIXELS`].
pub fn check_pixels(what: &str, n: usize, h: usize, w: usize) -> Result<()> {
    let px = (n as u64).saturating_mul(h as u64).saturating_mul(w as u64);
    if px > MAX_PIXELS {
        return Err(Error::invalid(format!(
            "{n} {what} of {h}x{w} pixels are {px} pixels, above the limit of {MAX_PIXELS}; use fewer {what} or a smaller --size"
        )));
    }
    Ok(())
}

/// `--gif-frames` within 1..=[`MAX_GIF_FRAMES`].
pub fn check_gif_frames(n: usize) -> Result<()> {
    check_count(
        "--gif-frames",
        n,
        MAX_GIF_FRAMES,
        "a longer GIF is too large to share",
    )
}

/// `--num` images in one grid within 1..=[`MAX_GRID`].
pub fn check_grid(n: usize) -> Result<()> {
    check_count(
        "--num",
        n,
        MAX_GRID,
        "a larger grid is bigger than any screen",
    )
}

/// `--size` within 1..=[`MAX_IMAGE_SIDE`].
pub fn check_image_side(n: u32) -> Result<()> {
    check_count(
        "--size",
        n as usize,
        MAX_IMAGE_SIDE as usize,
        "a 4096x4096 RGB image is already 200 MB in f32",
    )
}

/// Memory the system can still give (Linux `MemAvailable`), in bytes; None where unknown.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuse a batch whose activations cannot fit: `bytes_per_image` is an estimate of what one
/// image of the batch holds at peak (the caller's model-specific figure).
pub fn check_batch_memory(flag: &str, batch: usize, bytes_per_image: u64) -> Result<()> {
    let need = (batch as u64).saturating_mul(bytes_per_image);
    if let Some(avail) = available_memory() {
        if need > avail {
            let gb = |b: u64| b as f64 / (1u64 << 30) as f64;
            return Err(Error::invalid(format!(
                "{flag} {batch} needs about {:.1} GiB for activations, more than the {:.1} GiB of memory available; use a smaller {flag}",
                gb(need),
                gb(avail)
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn counts_and_memory() {
        assert!(check_count("--num", 0, 10, "x").unwrap_err().is_usage());
        assert!(check_count("--num", 11, 10, "x")
            .unwrap_err()
            .to_string()
            .contains("limit of 10"));
        assert!(check_count("--num", 10, 10, "x").is_ok());
        assert!(check_batch_memory("--batch-size", usize::MAX, u64::MAX).is_err());
        assert!(check_batch_memory("--batch-size", 1, 1).is_ok());
    }
}
