//! CIFAR-10: the binary batches (cifar-10-batches-bin) locally, then the hub's parquet
//! conversion. Each binary record is a label byte and 3072 pixel bytes already in CHW order.
use super::hub::{self, HubFile};
use super::{Loaded, Split};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

const SIDE: usize = 32;
const RECORD: usize = 1 + 3 * SIDE * SIDE;
/// Candidate hub repos: the current id, then the legacy un-namespaced one, which older
/// caches (and candle-datasets' loader) use.
const HUB_REPOS: [&str; 2] = ["uoft-cs/cifar10", "cifar10"];

/// Directories that may hold the binary batches, in order.
pub fn local_dirs(data_dir: &Path) -> Vec<PathBuf> {
    vec![
        data_dir.join("cifar10").join("cifar-10-batches-bin"),
        data_dir.join("cifar-10-batches-bin"),
        data_dir.join("cifar10"),
        data_dir.to_path_buf(),
    ]
}

fn batch_files(dir: &Path, split: Split) -> Vec<PathBuf> {
    match split {
        Split::Train => (1..=5)
            .map(|i| dir.join(format!("data_batch_{i}.bin")))
            .collect(),
        Split::Test => vec![dir.join("test_batch.bin")],
    }
}

/// Decode one binary batch file's bytes, appending to `pixels` and `labels`.
pub fn decode_batch(
    bytes: &[u8],
    path: &Path,
    pixels: &mut Vec<f32>,
    labels: &mut Vec<u8>,
) -> Result<()> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
        return Err(Error::format(
            path,
            format!(
                "{} bytes is not a whole number of CIFAR-10 records ({RECORD} bytes each)",
                bytes.len()
            ),
        ));
    }
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        if rec[0] > 9 {
            return Err(Error::format(
                path,
                format!("record {i}: label {} is not a CIFAR-10 class (0-9)", rec[0]),
            ));
        }
        labels.push(rec[0]);
    }
    // Gather the pixel bytes (skipping label bytes) and convert through the shared table.
    let px: Vec<u8> = bytes
        .chunks_exact(RECORD)
        .flat_map(|r| &r[1..])
        .copied()
        .collect();
    pixels.extend(super::idx::bytes_to_unit(&px));
    Ok(())
}

/// Load the binary batches of `split` from `dir`, if the first file is there.
pub fn load_dir(dir: &Path, split: Split) -> Result<Option<Loaded>> {
    let files = batch_files(dir, split);
    if !files[0].is_file() {
        return Ok(None);
    }
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for f in &files {
        let bytes = std::fs::read(f).map_err(|e| Error::io(f, e))?;
        decode_batch(&bytes, f, &mut pixels, &mut labels)?;
    }
    Ok(Some(Loaded {
        dims: (labels.len(), 3, SIDE, SIDE),
        pixels,
        labels: Some(labels),
        source: dir.display().to_string(),
    }))
}

/// Resolve CIFAR-10: local binary batches, then the hub cache (or download unless offline).
pub fn load(data_dir: &Path, split: Split) -> Result<Loaded> {
    let dirs = local_dirs(data_dir);
    for dir in &dirs {
        if let Some(l) = load_dir(dir, split)? {
            return Ok(l);
        }
    }
    let file = match split {
        Split::Train => "plain_text/train/0000.parquet",
        Split::Test => "plain_text/test/0000.parquet",
    };
    let mut reasons = Vec::new();
    for repo in HUB_REPOS {
        match hub::find(repo, file)? {
            HubFile::Found(path) => {
                let (pixels, labels) = hub::read_parquet(&path, 3, SIDE)?;
                return Ok(Loaded {
                    dims: (labels.len(), 3, SIDE, SIDE),
                    pixels,
                    labels: Some(labels),
                    source: format!("hub {repo}: {}", path.display()),
                });
            }
            HubFile::Missing(r) => reasons.push(r),
        }
        if hub::offline() {
            continue;
        }
        break; // one download attempt is enough; the legacy id is only checked in the cache
    }
    let searched = dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    Err(Error::Runtime(format!(
        "cifar10 not found: no binary batches in {searched}, and {}; extract cifar-10-binary.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) into {}, or run once online to cache {} from the hub",
        reasons.join("; "),
        data_dir.join("cifar10").display(),
        HUB_REPOS[0]
    )))
}
