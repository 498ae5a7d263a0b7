//! Datasets from the Hugging Face hub: parquet conversions of the named datasets, read as
//! candle-datasets' loaders read them (revision `refs/convert/parquet`, image column a struct
//! of PNG bytes, label column int64). Lookups go through `crate::io::hub`.
use crate::error::{Error, Result};
pub use crate::io::hub::{cache_dir, offline};
use crate::io::hub::{Lookup, Repo};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Revision the hub's automatic parquet conversion lives at.
pub const PARQUET_REVISION: &str = "refs/convert/parquet";

/// Outcome of looking for a file on the hub.
pub enum HubFile {
    Found(PathBuf),
    /// Not cached and (offline, or the download failed): the reason, for the log.
    Missing(String),
}

/// Find `filename` of dataset `repo_id` at the parquet revision: the cache first, then (unless
/// offline) the network. Anything short of the file is `Missing`, so callers can fall back.
pub fn find(repo_id: &str, filename: &str) -> Result<HubFile> {
    let kind = Repo::Dataset {
        revision: Some(PARQUET_REVISION),
    };
    Ok(match crate::io::hub::lookup(kind, repo_id, filename)? {
        Lookup::Found(p) => HubFile::Found(p),
        Lookup::NotInRepo => HubFile::Missing(format!("{repo_id} has no {filename}")),
        Lookup::Unavailable(why) => HubFile::Missing(why),
    })
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
