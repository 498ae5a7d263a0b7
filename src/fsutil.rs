//! Atomic file output: write to a temporary file in the target directory, then rename,
//! so a failure never leaves a half-written file behind.
use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;

/// Write `path` atomically with the bytes produced by `fill`.
pub fn write_atomic<F>(path: &Path, fill: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> std::io::Result<()>,
{
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".diffuse-").suffix(".tmp");
    // tempfile creates files 0600; outputs are ordinary files people share.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    let mut tmp = builder.tempfile_in(dir).map_err(|e| Error::io(path, e))?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        fill(&mut w).map_err(|e| Error::io(path, e))?;
        w.flush().map_err(|e| Error::io(path, e))?;
    }
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Atomically write a byte slice.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| w.write_all(bytes))
}

/// Write named tensors (with optional metadata) as one safetensors file, atomically. Every
/// safetensors output (samples, weights, training state) goes through here.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, candle_core::Tensor)],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    let bytes = safetensors::serialize(tensors.iter().map(|(k, t)| (k.as_str(), t)), metadata)
        .map_err(|e| Error::format(path, format!("could not serialise tensors: {e}")))?;
    write_bytes_atomic(path, &bytes)
}
