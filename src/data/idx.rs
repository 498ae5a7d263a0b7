//! The IDX format of MNIST and Fashion-MNIST, parsed straight from bytes.
//!
//! Layout: two zero bytes, a type byte (0x08 = u8), a dimension count, one big-endian u32
//! per dimension, then the data. Pixels go through a 256-entry table into f32 in [-1,1] in
//! one pass over the buffer, with no per-image tensor work, so 60k digits load in tens of ms.
use crate::error::{Error, Result};
use flate2::read::GzDecoder;
use rayon::prelude::*;
use std::io::Read;
use std::path::Path;

/// Type byte for unsigned bytes, the only element type MNIST-style files use.
const TYPE_U8: u8 = 0x08;

/// A parsed IDX header and a view of its data bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idx<'a> {
    pub dims: Vec<usize>,
    pub data: &'a [u8],
}

/// Parse an IDX buffer (already decompressed). Errors name the problem; never panics.
pub fn parse(bytes: &[u8]) -> std::result::Result<Idx<'_>, String> {
    if bytes.len() < 4 {
        return Err(format!(
            "too short for an IDX header ({} bytes)",
            bytes.len()
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(format!(
            "wrong magic number 0x{:02x}{:02x}{:02x}{:02x} (not an IDX file)",
            bytes[0], bytes[1], bytes[2], bytes[3]
        ));
    }
    if bytes[2] != TYPE_U8 {
        return Err(format!(
            "IDX element type 0x{:02x} is not supported (only 0x08, unsigned bytes)",
            bytes[2]
        ));
    }
    let ndims = bytes[3] as usize;
    if ndims == 0 {
        return Err("IDX file with zero dimensions".into());
    }
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(format!(
            "header truncated: {ndims} dimensions need {header} bytes, file has {}",
            bytes.len()
        ));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(*d))
        .ok_or_else(|| format!("dimensions {dims:?} overflow"))?;
    let have = bytes.len() - header;
    if have < expected {
        return Err(format!(
            "short data: dimensions {dims:?} need {expected} bytes, file has {have}"
        ));
    }
    if have > expected {
        return Err(format!(
            "{} unexpected bytes after the data of dimensions {dims:?}",
            have - expected
        ));
    }
    Ok(Idx {
        dims,
        data: &bytes[header..],
    })
}

/// Images from an IDX buffer: (count, height, width, pixels in [-1,1] laid out [N,1,H,W]).
pub fn decode_images(bytes: &[u8]) -> std::result::Result<(usize, usize, usize, Vec<f32>), String> {
    let idx = parse(bytes)?;
    if idx.dims.len() != 3 {
        return Err(format!(
            "expected 3 dimensions (count, rows, cols) for images, found {}",
            idx.dims.len()
        ));
    }
    let (n, h, w) = (idx.dims[0], idx.dims[1], idx.dims[2]);
    if n > 0 && (h == 0 || w == 0) {
        return Err(format!("images of size {h}x{w}"));
    }
    Ok((n, h, w, bytes_to_unit(idx.data)))
}

/// Labels from an IDX buffer (one dimension).
pub fn decode_labels(bytes: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let idx = parse(bytes)?;
    if idx.dims.len() != 1 {
        return Err(format!(
            "expected 1 dimension for labels, found {}",
            idx.dims.len()
        ));
    }
    Ok(idx.data.to_vec())
}

/// u8 pixels to f32 in [-1,1] (x/127.5 - 1) through a lookup table, in parallel chunks.
pub fn bytes_to_unit(data: &[u8]) -> Vec<f32> {
    let lut: [f32; 256] = std::array::from_fn(|i| i as f32 / 127.5 - 1.0);
    let mut out = vec![0f32; data.len()];
    out.par_chunks_mut(1 << 16)
        .zip(data.par_chunks(1 << 16))
        .for_each(|(o, d)| {
            for (x, b) in o.iter_mut().zip(d) {
                *x = lut[*b as usize];
            }
        });
    out
}

/// Decompress if `bytes` is gzip (by its magic bytes, not the file name), else borrow.
pub fn maybe_gunzip<'a>(bytes: &'a [u8], path: &Path) -> Result<std::borrow::Cow<'a, [u8]>> {
    if bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b {
        let mut out = Vec::with_capacity(bytes.len() * 4);
        GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| Error::format(path, format!("bad gzip data: {e}")))?;
        Ok(std::borrow::Cow::Owned(out))
    } else {
        Ok(std::borrow::Cow::Borrowed(bytes))
    }
}

/// Read an IDX image file (gzip or plain).
pub fn read_images(path: &Path) -> Result<(usize, usize, usize, Vec<f32>)> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    images_from_bytes(&raw, path)
}

/// Read an IDX label file (gzip or plain).
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    labels_from_bytes(&raw, path)
}

/// Decode (possibly gzipped) image bytes; `path` only names the source in errors.
pub fn images_from_bytes(raw: &[u8], path: &Path) -> Result<(usize, usize, usize, Vec<f32>)> {
    let bytes = maybe_gunzip(raw, path)?;
    decode_images(&bytes).map_err(|m| Error::format(path, m))
}

/// Decode (possibly gzipped) label bytes; `path` only names the source in errors.
pub fn labels_from_bytes(raw: &[u8], path: &Path) -> Result<Vec<u8>> {
    let bytes = maybe_gunzip(raw, path)?;
    decode_labels(&bytes).map_err(|m| Error::format(path, m))
}

/// Encode an IDX buffer (u8 elements); used by tests and the benchmark to synthesise files.
pub fn encode(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, TYPE_U8, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&(*d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let data: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8 * 10).collect();
        let buf = encode(&[2, 3, 4], &data);
        let (n, h, w, px) = decode_images(&buf).unwrap();
        assert_eq!((n, h, w, px.len()), (2, 3, 4, 24));
        assert_eq!(px[0], -1.0);
        assert!((px[1] - (10.0 / 127.5 - 1.0)).abs() < 1e-7);
        assert!(parse(&buf[..buf.len() - 1])
            .unwrap_err()
            .contains("short data"));
        let mut bad = buf.clone();
        bad[1] = 1;
        assert!(parse(&bad).unwrap_err().contains("magic"));
        assert!(decode_labels(&buf).unwrap_err().contains("1 dimension"));
        assert_eq!(bytes_to_unit(&[255])[0], 1.0);
    }
}
