//! Reading input files with a bound: a config, a beta table or an image named by the user may
//! be a device (`/dev/zero`), a FIFO or a huge file by mistake; reading stops at the bound
//! with one line instead of exhausting memory.
use crate::error::{Error, Result};
use std::io::Read;
use std::path::Path;

/// The bytes of `path`, at most `max` of them (else an error naming the bound).
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::format(path, "is a directory, not a file"));
    }
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buf = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(path, e))?;
    if buf.len() as u64 > max {
        return Err(Error::format(
            path,
            format!("larger than the {} MiB this input may have", max >> 20),
        ));
    }
    Ok(buf)
}

/// Whether a name given where a name or a path is accepted (`--dataset`, `--model-config`)
/// was meant as a path: then a missing one is a missing file (exit 1), not a bad value.
pub fn looks_like_path(s: &str) -> bool {
    s.contains('/')
        || s.contains(std::path::MAIN_SEPARATOR)
        || s.starts_with('.')
        || s.ends_with(".json")
}

/// A UTF-8 text file of at most `max` bytes.
pub fn read_text(path: &Path, max: u64) -> Result<String> {
    String::from_utf8(read_bounded(path, max)?).map_err(|_| Error::format(path, "not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn devices_and_directories_are_bounded() {
        assert!(read_bounded(Path::new("/dev/zero"), 1 << 20)
            .unwrap_err()
            .to_string()
            .contains("larger than"));
        assert!(read_bounded(Path::new("/"), 10).is_err());
    }
}
