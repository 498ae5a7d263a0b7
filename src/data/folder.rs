//! A folder of PNG/JPEG images, searched recursively, each resized (shorter side) and centre
//! cropped to `size`, gray or RGB to match the model's channels.
//!
//! Class folders (torchvision's ImageFolder layout): when every image lies below a subfolder
//! of `dir`, the subfolders are the classes (sorted by name, label = index) and images below
//! them are labelled; images directly in `dir` make the folder unlabelled.
//!
//! An unreadable file inside the folder is skipped with a warning and counted, not fatal:
//! scraped image folders routinely hold a few truncated files, and losing a long run to one
//! of them helps nobody. The count is logged and kept in the dataset; a folder where nothing
//! decodes is an error, as is an empty one.
use super::Loaded;
use crate::error::{Error, Result};
use candle_core::Device;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Image files under `dir`, recursively, sorted so the dataset order is reproducible.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&d, e))?;
            let path = entry.path();
            let ft = entry.file_type().map_err(|e| Error::io(&path, e))?;
            // Follow symlinks to files but not to directories (no cycles).
            if ft.is_dir() {
                stack.push(path);
            } else if path.is_file()
                && path
                    .extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Most classes a folder may have (labels are stored as bytes).
pub const MAX_CLASSES: usize = 256;

/// The first-level subfolder each image lies in (None: directly in `dir`).
fn class_of<'a>(dir: &Path, file: &'a Path) -> Option<&'a std::ffi::OsStr> {
    let rel = file.strip_prefix(dir).ok()?;
    let mut parts = rel.components();
    let first = parts.next()?;
    parts.next().map(|_| first.as_os_str())
}

/// The classes of a class-folder dataset: its subfolders holding images, sorted.
pub fn class_names(dir: &Path) -> Result<Vec<String>> {
    let files = list_images(dir)?;
    let mut names: Vec<String> = files
        .iter()
        .filter_map(|f| class_of(dir, f))
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Labels of `files` when every one lies in a class subfolder, else None.
fn labels(dir: &Path, files: &[PathBuf]) -> Result<Option<Vec<u8>>> {
    if files.iter().any(|f| class_of(dir, f).is_none()) {
        return Ok(None);
    }
    let names = class_names(dir)?;
    if names.len() > MAX_CLASSES {
        return Err(Error::format(
            dir,
            format!(
                "has {} class subfolders; at most {MAX_CLASSES}",
                names.len()
            ),
        ));
    }
    Ok(Some(
        files
            .iter()
            .map(|f| {
                let c = class_of(dir, f).map(|c| c.to_string_lossy().into_owned());
                names
                    .iter()
                    .position(|n| Some(n) == c.as_ref())
                    .unwrap_or(0) as u8
            })
            .collect(),
    ))
}

/// Load every image under `dir` as [N,C,size,size] (labelled if in class subfolders);
/// returns the data and the skipped count.
pub fn load(dir: &Path, size: u32, channels: usize) -> Result<(Loaded, usize)> {
    if channels != 1 && channels != 3 {
        return Err(Error::invalid(format!(
            "in_channels {channels}: a folder of images gives 1 (gray) or 3 (RGB)"
        )));
    }
    if size == 0 {
        return Err(Error::invalid("sample size must be at least 1"));
    }
    if !dir.is_dir() {
        return Err(Error::invalid(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let files = list_images(dir)?;
    if files.is_empty() {
        return Err(Error::format(
            dir,
            "no PNG or JPEG images found (searched recursively)",
        ));
    }
    let all_labels = labels(dir, &files)?;
    let gray = channels == 1;
    let decoded: Vec<std::result::Result<Vec<f32>, String>> = files
        .par_iter()
        .map(|p| {
            let bytes = std::fs::read(p).map_err(|e| e.to_string())?;
            let img = image::load_from_memory(&bytes).map_err(|e| e.to_string())?;
            let t = crate::io::imageio::image_to_tensor(img, gray, Some(size), &Device::Cpu)
                .map_err(|e| e.to_string())?;
            t.flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| e.to_string())
        })
        .collect();
    let per = channels * size as usize * size as usize;
    let mut pixels = Vec::with_capacity(files.len() * per);
    let mut skipped = 0;
    let mut kept_labels = Vec::new();
    for (i, (p, r)) in files.iter().zip(decoded).enumerate() {
        match r {
            Ok(v) => {
                pixels.extend(v);
                kept_labels.extend(all_labels.as_ref().map(|l| l[i]));
            }
            Err(e) => {
                skipped += 1;
                tracing::warn!(file = %p.display(), "skipping unreadable image: {e}");
            }
        }
    }
    let n = files.len() - skipped;
    if n == 0 {
        return Err(Error::format(
            dir,
            format!("none of the {} image files could be decoded", files.len()),
        ));
    }
    if skipped > 0 {
        tracing::warn!(
            skipped,
            loaded = n,
            "{}: skipped {skipped} unreadable image file(s)",
            dir.display()
        );
    }
    let s = size as usize;
    Ok((
        Loaded {
            dims: (n, channels, s, s),
            pixels,
            labels: all_labels.map(|_| kept_labels),
            source: dir.display().to_string(),
        },
        skipped,
    ))
}
