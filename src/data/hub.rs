//! The Hugging Face hub cache: parquet conversions of the named datasets, read as
//! candle-datasets' loaders read them (revision `refs/convert/parquet`, image column a struct
//! of PNG bytes, label column int64).
//!
//! hf-hub 1.0 honours HF_HOME / HF_HUB_CACHE / HF_ENDPOINT but has no offline switch, so
//! HF_HUB_OFFLINE is read here and turns every lookup into a cache-only one.
use crate::error::{Error, Result};
use hf_hub::HFError;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Revision the hub's automatic parquet conversion lives at.
pub const PARQUET_REVISION: &str = "refs/convert/parquet";

/// True when HF_HUB_OFFLINE asks for no network (1/true/yes/on, any case).
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// Where hub files are cached: HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub.
pub fn cache_dir() -> PathBuf {
    hf_hub::resolve_cache_dir()
}

/// Outcome of looking for a file on the hub.
pub enum HubFile {
    Found(PathBuf),
    /// Not cached and (offline, or the download failed): the reason, for the log.
    Missing(String),
}

/// Find `filename` of dataset `repo_id` at the parquet revision: the cache first, then (unless
/// offline) the network. A failed download is `Missing`, so callers can fall back.
pub fn find(repo_id: &str, filename: &str) -> Result<HubFile> {
    // Two attempts, not five: a missing network should fall back quickly.
    let client = hf_hub::HFClient::builder()
        .retry_max_attempts(2)
        .build_sync()
        .map_err(|e| Error::Runtime(format!("hugging face hub client: {e}")))?;
    let (owner, name) = hf_hub::split_id(repo_id);
    let repo = client.dataset(owner, name);
    let download = repo
        .download_file()
        .filename(filename)
        .revision(PARQUET_REVISION);
    match download.clone().local_files_only(true).send() {
        Ok(p) => return Ok(HubFile::Found(p)),
        Err(HFError::LocalEntryNotFound { .. }) | Err(HFError::EntryNotFound { .. }) => {}
        Err(e) => return Ok(HubFile::Missing(format!("hub cache lookup failed: {e}"))),
    }
    if offline() {
        return Ok(HubFile::Missing(format!(
            "{filename} of {repo_id} is not in the hub cache {} and HF_HUB_OFFLINE is set",
            cache_dir().display()
        )));
    }
    match download.send() {
        Ok(p) => Ok(HubFile::Found(p)),
        Err(e) => Ok(HubFile::Missing(format!(
            "could not download {filename} of {repo_id}: {e}"
        ))),
    }
}

/// Images and labels decoded from a parquet file: `channels` 1 (luma) or 3 (RGB); every image
/// must be `size` x `size`. Returns ([N,C,H,W] pixels in [-1,1], labels).
pub fn read_parquet(path: &Path, channels: usize, size: usize) -> Result<(Vec<f32>, Vec<u8>)> {
    let fail = |m: String| Error::format(path, m);
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader =
        SerializedFileReader::new(file).map_err(|e| fail(format!("not a parquet file: {e}")))?;
    let rows = reader.metadata().file_metadata().num_rows().max(0) as usize;
    let mut encoded: Vec<Vec<u8>> = Vec::with_capacity(rows);
    let mut labels: Vec<u8> = Vec::with_capacity(rows);
    let iter = reader
        .get_row_iter(None)
        .map_err(|e| fail(format!("unreadable parquet rows: {e}")))?;
    for row in iter {
        let row = row.map_err(|e| fail(format!("unreadable parquet row: {e}")))?;
        let (mut image, mut label) = (None, None);
        for (_name, field) in row.get_column_iter() {
            match field {
                // The image column is a struct {bytes, path}; take its bytes.
                Field::Group(sub) => {
                    for (_n, f) in sub.get_column_iter() {
                        if let Field::Bytes(b) = f {
                            image = Some(b.data().to_vec());
                        }
                    }
                }
                Field::Long(l) => label = Some(*l),
                Field::Int(l) => label = Some(*l as i64),
                _ => {}
            }
        }
        let image =
            image.ok_or_else(|| fail(format!("row {} has no image bytes", labels.len())))?;
        let label =
            label.ok_or_else(|| fail(format!("row {} has no integer label", labels.len())))?;
        let label = u8::try_from(label)
            .map_err(|_| fail(format!("row {}: label {label} out of range", labels.len())))?;
        encoded.push(image);
        labels.push(label);
    }
    // PNG decoding dominates: do it in parallel, straight into CHW floats.
    let per = channels * size * size;
    let mut pixels = vec![0f32; encoded.len() * per];
    pixels
        .par_chunks_mut(per.max(1))
        .zip(encoded.par_iter())
        .enumerate()
        .try_for_each(|(i, (out, bytes))| {
            decode_into(bytes, channels, size, out).map_err(|m| fail(format!("row {i}: {m}")))
        })?;
    Ok((pixels, labels))
}

/// Decode one encoded image into `out` as [C,H,W] in [-1,1].
fn decode_into(
    bytes: &[u8],
    channels: usize,
    size: usize,
    out: &mut [f32],
) -> std::result::Result<(), String> {
    let img = image::load_from_memory(bytes).map_err(|e| format!("undecodable image: {e}"))?;
    if img.width() as usize != size || img.height() as usize != size {
        return Err(format!(
            "image is {}x{}, expected {size}x{size}",
            img.width(),
            img.height()
        ));
    }
    let raw = if channels == 1 {
        img.to_luma8().into_raw()
    } else {
        img.to_rgb8().into_raw()
    };
    // HWC bytes -> CHW floats.
    let plane = size * size;
    for (i, px) in raw.chunks_exact(channels).enumerate() {
        for (k, v) in px.iter().enumerate() {
            out[k * plane + i] = *v as f32 / 127.5 - 1.0;
        }
    }
    Ok(())
}
