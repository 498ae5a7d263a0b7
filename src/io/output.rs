//! Output files that never destroy: every command's outputs are staged (regular files as
//! temporary files beside their targets) and committed together at the end, so a failure
//! leaves nothing half-written and no output of a failed command behind.
//!
//! What is at a target decides how it is written: a missing path or a regular file is
//! replaced by renaming a finished temporary file over it (keeping the old file's
//! permissions); a symlink is resolved and its target written that way; a character device or
//! a FIFO (`/dev/null`, `/dev/stdout`, a pipe) is opened and written in place, never replaced;
//! a directory, a block device or a socket is refused.
//!
//! [`check_outputs`] refuses, before any work, outputs that would overwrite an input, land
//! inside a model directory, repeat each other, or sit in a directory that does not exist.
use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// How a target is written.
enum Kind {
    /// Rename a temporary file over `resolved` (missing or a regular file).
    Replace { resolved: PathBuf },
    /// Open and write in place (character device, FIFO).
    InPlace { resolved: PathBuf },
}

/// Follow symlinks (also dangling ones) to the path that will really be written.
fn resolve(path: &Path) -> Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let link = std::fs::read_link(&p).map_err(|e| Error::io(path, e))?;
                p = match p.parent() {
                    Some(dir) if link.is_relative() => dir.join(link),
                    _ => link,
                };
            }
            _ => return Ok(p),
        }
    }
    Err(Error::format(path, "too many levels of symbolic links"))
}

fn classify(path: &Path) -> Result<Kind> {
    let resolved = resolve(path)?;
    let meta = match std::fs::metadata(&resolved) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Kind::Replace { resolved });
        }
        Err(e) => return Err(Error::io(path, e)),
    };
    let ft = meta.file_type();
    if ft.is_file() {
        return Ok(Kind::Replace { resolved });
    }
    if ft.is_dir() {
        return Err(Error::format(
            path,
            "is a directory; give a file name for this output",
        ));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_char_device() || ft.is_fifo() {
            return Ok(Kind::InPlace { resolved });
        }
    }
    Err(Error::format(
        path,
        "is neither a regular file, a character device nor a pipe; refusing to write it",
    ))
}

fn parent_dir(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// The OS error without the temporary file's path that `tempfile` adds to it, so messages
/// name the file the user asked for, once.
fn plain(e: std::io::Error) -> std::io::Error {
    if e.raw_os_error().is_some() {
        return e;
    }
    // tempfile wraps the OS error as "<os error text> at path <temp path>".
    let text = e.to_string();
    match text.split_once(" at path ") {
        Some((msg, _)) => std::io::Error::new(e.kind(), msg.to_string()),
        None => e,
    }
}

enum Pending {
    Temp {
        resolved: PathBuf,
        tmp: tempfile::NamedTempFile,
    },
    InPlace {
        resolved: PathBuf,
        bytes: Vec<u8>,
    },
}

/// One output being written: a temporary file beside its target, or (for a device or pipe)
/// bytes held until commit. Write to it, then hand it to [`Outputs::push`].
pub struct Staged {
    target: PathBuf,
    pending: Pending,
}

impl Staged {
    /// Start writing `path` (see the module docs for what each kind of target gets).
    pub fn begin(path: &Path) -> Result<Self> {
        let pending = match classify(path)? {
            Kind::Replace { resolved } => {
                let mut builder = tempfile::Builder::new();
                builder.prefix(".diffuse-").suffix(".tmp");
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    // tempfile creates files 0600; outputs are ordinary files people share,
                    // and a replaced file keeps its mode.
                    let mode = std::fs::metadata(&resolved)
                        .map(|m| m.permissions().mode() & 0o7777)
                        .unwrap_or(0o644);
                    builder.permissions(std::fs::Permissions::from_mode(mode));
                }
                let tmp = builder
                    .tempfile_in(parent_dir(&resolved))
                    .map_err(|e| Error::io(path, plain(e)))?;
                Pending::Temp { resolved, tmp }
            }
            Kind::InPlace { resolved } => Pending::InPlace {
                resolved,
                bytes: Vec::new(),
            },
        };
        Ok(Self {
            target: path.to_path_buf(),
            pending,
        })
    }

    /// An I/O error while writing, as our error naming the target.
    pub fn error(&self, e: std::io::Error) -> Error {
        Error::io(&self.target, plain(e))
    }
}

impl Write for Staged {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.pending {
            Pending::Temp { tmp, .. } => tmp.as_file_mut().write(buf),
            Pending::InPlace { bytes, .. } => bytes.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.pending {
            Pending::Temp { tmp, .. } => tmp.as_file_mut().flush(),
            Pending::InPlace { .. } => Ok(()),
        }
    }
}

/// A set of outputs written all together or not at all.
#[derive(Default)]
pub struct Outputs {
    items: Vec<Staged>,
}

impl Outputs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a finished output.
    pub fn push(&mut self, staged: Staged) {
        self.items.push(staged);
    }

    /// Stage `path` with the bytes `fill` produces.
    pub fn add_with<F>(&mut self, path: &Path, fill: F) -> Result<()>
    where
        F: FnOnce(&mut dyn Write) -> std::io::Result<()>,
    {
        let mut staged = Staged::begin(path)?;
        {
            let mut w = std::io::BufWriter::new(&mut staged);
            fill(&mut w)
                .and_then(|_| w.flush())
                .map_err(|e| Error::io(path, plain(e)))?;
        }
        self.push(staged);
        Ok(())
    }

    /// Stage `path` with `bytes`.
    pub fn add(&mut self, path: &Path, bytes: &[u8]) -> Result<()> {
        self.add_with(path, |w| w.write_all(bytes))
    }

    /// Write everything staged; returns the paths as given.
    pub fn commit(self) -> Result<Vec<PathBuf>> {
        let mut written = Vec::with_capacity(self.items.len());
        for Staged { target, pending } in self.items {
            match pending {
                Pending::Temp { resolved, tmp } => {
                    tmp.persist(&resolved)
                        .map_err(|e| Error::io(&target, plain(e.error)))?;
                }
                Pending::InPlace { resolved, bytes } => {
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&resolved)
                        .map_err(|e| Error::io(&target, e))?;
                    match f.write_all(&bytes).and_then(|_| f.flush()) {
                        Ok(()) => {}
                        // A reader that went away (a closed pipe) is not a failure of ours.
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                        Err(e) => return Err(Error::io(&target, e)),
                    }
                }
            }
            written.push(target);
        }
        Ok(written)
    }
}

/// Write `path` atomically with the bytes produced by `fill`.
pub fn write_atomic<F>(path: &Path, fill: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> std::io::Result<()>,
{
    let mut o = Outputs::new();
    o.add_with(path, fill)?;
    o.commit().map(|_| ())
}

/// Atomically write a byte slice.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| w.write_all(bytes))
}

/// Serialise named tensors (with optional metadata) as safetensors bytes.
pub fn safetensors_bytes(
    path: &Path,
    tensors: &[(String, candle_core::Tensor)],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>> {
    safetensors::serialize(tensors.iter().map(|(k, t)| (k.as_str(), t)), metadata)
        .map_err(|e| Error::format(path, format!("could not serialise tensors: {e}")))
}

/// Write named tensors (with optional metadata) as one safetensors file, atomically. Every
/// safetensors output (samples, weights, training state) goes through here.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, candle_core::Tensor)],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    write_bytes_atomic(path, &safetensors_bytes(path, tensors, metadata)?)
}

/// The identity of an existing file (device and inode), to tell when two paths are one file.
#[cfg(unix)]
fn file_id(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(p: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(p).ok()
}

/// An absolute, symlink-free form of a path that may not exist yet: its parent canonicalised.
fn absolute(p: &Path) -> Option<PathBuf> {
    let resolved = resolve(p).ok()?;
    let dir = std::fs::canonicalize(parent_dir(&resolved)).ok()?;
    Some(match resolved.file_name() {
        Some(n) => dir.join(n),
        None => dir,
    })
}

/// Check a command's outputs before it does any work: each must be writable where it is
/// (its directory exists; it is not a directory), none may be one of `inputs`, two outputs
/// may not be the same file, and none may lie inside one of `protected` (model directories).
/// Special files (`/dev/null`) are fine as outputs.
pub fn check_outputs(outputs: &[&Path], inputs: &[&Path], protected: &[&Path]) -> Result<()> {
    let protected: Vec<PathBuf> = protected
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    let mut seen: Vec<PathBuf> = Vec::new();
    for out in outputs {
        let kind = classify(out)?;
        let resolved = match &kind {
            Kind::Replace { resolved } | Kind::InPlace { resolved } => resolved.clone(),
        };
        let dir = parent_dir(&resolved);
        if !dir.is_dir() {
            return Err(Error::io(
                out,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("directory {} does not exist", dir.display()),
                ),
            ));
        }
        if matches!(kind, Kind::InPlace { .. }) {
            continue;
        }
        let abs = absolute(out).unwrap_or_else(|| out.to_path_buf());
        if seen.contains(&abs) {
            return Err(Error::invalid(format!(
                "{} is named for two outputs; give each output its own file",
                out.display()
            )));
        }
        seen.push(abs.clone());
        for input in inputs {
            let same = match (file_id(out), file_id(input)) {
                (Some(a), Some(b)) => a == b,
                _ => false,
            };
            if same {
                return Err(Error::invalid(format!(
                    "{} is an input of this command; refusing to overwrite it (choose another output path)",
                    out.display()
                )));
            }
        }
        if let Some(root) = protected.iter().find(|r| abs.starts_with(r)) {
            return Err(Error::invalid(format!(
                "{} lies inside the model directory {}; refusing to write there (choose another output path)",
                out.display(),
                root.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_through_symlinks_and_keeps_them() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("real.txt");
        std::fs::write(&target, "old").unwrap();
        let link = d.path().join("link.txt");
        std::os::unix::fs::symlink("real.txt", &link).unwrap();
        write_bytes_atomic(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
    }

    #[test]
    fn dev_null_is_a_sink_and_stays_a_device() {
        use std::os::unix::fs::FileTypeExt;
        write_bytes_atomic(Path::new("/dev/null"), b"data").unwrap();
        assert!(std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device());
    }

    #[test]
    fn a_directory_is_refused_and_nothing_is_left() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        assert!(write_bytes_atomic(&sub, b"x").is_err());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn staged_outputs_are_all_or_nothing() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Outputs::new();
        o.add(&d.path().join("a.png"), b"a").unwrap();
        let err = o.add_with(&d.path().join("b.png"), |_| {
            Err(std::io::Error::other("boom"))
        });
        assert!(err.is_err());
        drop(o);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn outputs_equal_to_inputs_or_inside_models_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let input = d.path().join("in.png");
        std::fs::write(&input, "x").unwrap();
        let model = d.path().join("model");
        std::fs::create_dir(&model).unwrap();
        assert!(check_outputs(&[&input], &[&input], &[]).is_err());
        let inside = model.join("config.json");
        assert!(check_outputs(&[&inside], &[], &[&model]).is_err());
        let a = d.path().join("a.png");
        assert!(check_outputs(&[&a, &a], &[], &[]).is_err());
        assert!(check_outputs(&[&d.path().join("nodir/x.png")], &[], &[]).is_err());
        assert!(check_outputs(&[&a, Path::new("/dev/null")], &[&input], &[&model]).is_ok());
    }
}
