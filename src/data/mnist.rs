//! MNIST and Fashion-MNIST: local IDX files (gzip or plain), then the hub's parquet
//! conversion, then (MNIST only) the 10,000 test digits compiled into the binary.
use super::hub::{self, HubFile};
use super::{Loaded, Split};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The MNIST test digits, built in so `--dataset mnist` works anywhere, offline.
const BUNDLED_IMAGES: &[u8] = include_bytes!("../../data/mnist/t10k-images-idx3-ubyte.gz");
const BUNDLED_LABELS: &[u8] = include_bytes!("../../data/mnist/t10k-labels-idx1-ubyte.gz");

/// One member of the MNIST family and where it can be found.
pub struct IdxSet {
    pub name: &'static str,
    pub hub_repo: &'static str,
    /// Folder of the parquet files inside the hub repo ("mnist/train/0000.parquet").
    pub hub_config: &'static str,
    /// A system-wide copy (Debian's dataset-fashion-mnist package).
    pub system_dir: Option<&'static str>,
    pub bundled: bool,
    /// Extra advice when the set is missing.
    pub install_hint: &'static str,
}

pub const MNIST: IdxSet = IdxSet {
    name: "mnist",
    hub_repo: "ylecun/mnist",
    hub_config: "mnist",
    system_dir: None,
    bundled: true,
    install_hint: "",
};

pub const FASHION_MNIST: IdxSet = IdxSet {
    name: "fashion-mnist",
    hub_repo: "zalando-datasets/fashion_mnist",
    hub_config: "fashion_mnist",
    system_dir: Some("/usr/share/datasets/fashion-mnist"),
    bundled: false,
    install_hint: ", or apt-get install dataset-fashion-mnist",
};

fn prefix(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Test => "t10k",
    }
}

/// `dir/stem.gz` or `dir/stem`, whichever exists (gzip preferred: that is how it ships).
fn find_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.gz"), stem.to_string()]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// Directories searched for local IDX files, in order.
pub fn local_dirs(set: &IdxSet, data_dir: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![data_dir.join(set.name), data_dir.to_path_buf()];
    dirs.extend(set.system_dir.map(PathBuf::from));
    dirs
}

/// Load images (and labels when present) from IDX files in `dir`, if the image file exists.
pub fn load_idx_dir(dir: &Path, split: Split) -> Result<Option<Loaded>> {
    let p = prefix(split);
    let Some(img_path) = find_file(dir, &format!("{p}-images-idx3-ubyte")) else {
        return Ok(None);
    };
    let (n, h, w, pixels) = super::idx::read_images(&img_path)?;
    let labels = match find_file(dir, &format!("{p}-labels-idx1-ubyte")) {
        Some(lp) => {
            let l = super::idx::read_labels(&lp)?;
            if l.len() != n {
                return Err(Error::format(
                    &lp,
                    format!(
                        "{} labels for {n} images in {}",
                        l.len(),
                        img_path.display()
                    ),
                ));
            }
            Some(l)
        }
        None => {
            tracing::warn!(dir = %dir.display(), "no label file next to the images; loading without labels");
            None
        }
    };
    Ok(Some(Loaded {
        dims: (n, 1, h, w),
        pixels,
        labels,
        source: img_path.display().to_string(),
    }))
}

/// The bundled 10,000 MNIST test digits.
pub fn load_bundled() -> Result<Loaded> {
    let src = Path::new("<bundled>/t10k-images-idx3-ubyte.gz");
    let (n, h, w, pixels) = super::idx::images_from_bytes(BUNDLED_IMAGES, src)?;
    let labels = super::idx::labels_from_bytes(
        BUNDLED_LABELS,
        Path::new("<bundled>/t10k-labels-idx1-ubyte.gz"),
    )?;
    Ok(Loaded {
        dims: (n, 1, h, w),
        pixels,
        labels: Some(labels),
        source: "bundled MNIST test digits (t10k)".into(),
    })
}

/// Resolve a member of the MNIST family: local IDX, hub cache/download, bundled digits.
/// `bundled`: whether the bundled digits may stand in (not when the user named a data
/// directory: a wrong `--data-dir` must not silently train on other data).
pub fn load(set: &IdxSet, data_dir: &Path, split: Split, bundled: bool) -> Result<Loaded> {
    let dirs = local_dirs(set, data_dir);
    for dir in &dirs {
        if let Some(l) = load_idx_dir(dir, split)? {
            return Ok(l);
        }
    }
    let hub_split = match split {
        Split::Train => "train",
        Split::Test => "test",
    };
    let file = format!("{}/{hub_split}/0000.parquet", set.hub_config);
    let reason = match hub::find(set.hub_repo, &file)? {
        HubFile::Found(path) => {
            let (pixels, labels) = hub::read_parquet(&path, 1, 28)?;
            return Ok(Loaded {
                dims: (labels.len(), 1, 28, 28),
                pixels,
                labels: Some(labels),
                source: format!("hub {}: {}", set.hub_repo, path.display()),
            });
        }
        HubFile::Missing(reason) => reason,
    };
    let p = prefix(split);
    let searched = dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let how = format!(
        "put {p}-images-idx3-ubyte.gz and {p}-labels-idx1-ubyte.gz in {}, or run once online to cache {} from the hub{}",
        data_dir.join(set.name).display(),
        set.hub_repo,
        set.install_hint
    );
    if set.bundled && bundled {
        let l = load_bundled()?;
        tracing::info!(
            images = l.dims.0,
            "{}: using the bundled 10,000 MNIST test digits (no {p} IDX files in {searched}; {reason}); for the full set, {how}",
            set.name
        );
        return Ok(l);
    }
    Err(Error::Runtime(format!(
        "{} not found: no {p} IDX files in {searched}, and {reason}; {how}",
        set.name
    )))
}
