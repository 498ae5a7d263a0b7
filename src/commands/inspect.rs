//! `diffuse inspect`: a model's config, parameters per top-level block and storage size.
use crate::error::Result;
use crate::unet::config::{preset_or_file, UNetConfig};
use crate::unet::io::{self, CONFIG_FILE};
use std::fmt::Write;
use std::path::Path;

/// Thousands separators for readability.
fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Report for a model directory, pipeline directory, config file or preset name.
/// Weights, when present, are checked against the config (names and shapes).
pub fn report(name_or_path: &str) -> Result<String> {
    let p = Path::new(name_or_path);
    let (cfg, weights) = if p.is_dir() {
        let dir = io::model_dir(p)?;
        let cfg = UNetConfig::from_file(&dir.join(CONFIG_FILE))?;
        let info = match io::weights_file(&dir) {
            Ok(w) => Some(io::inspect_weights(&w, &cfg)?),
            Err(_) => None,
        };
        (cfg, info)
    } else {
        (preset_or_file(name_or_path)?, None)
    };
    let mut s = String::new();
    let _ = writeln!(s, "model: {name_or_path}");
    let _ = writeln!(s, "config:");
    for line in cfg.to_json().lines() {
        let _ = writeln!(s, "  {line}");
    }
    let blocks = io::param_counts_by_block(&cfg)?;
    let total: usize = blocks.iter().map(|(_, n)| n).sum();
    let _ = writeln!(s, "parameters:");
    for (name, n) in &blocks {
        let pct = 100.0 * *n as f64 / total as f64;
        let _ = writeln!(s, "  {name:<16} {:>12}  {pct:5.1}%", grouped(*n as u64));
    }
    let _ = writeln!(
        s,
        "  {:<16} {:>12}  ({:.2}M)",
        "total",
        grouped(total as u64),
        total as f64 / 1e6
    );
    match weights {
        Some(w) => {
            let _ = writeln!(
                s,
                "storage: {} {} bytes ({:.2} MiB), dtype {}",
                w.path.display(),
                grouped(w.bytes),
                w.bytes as f64 / (1024.0 * 1024.0),
                w.dtypes.join(",")
            );
        }
        None => {
            let b = total as u64 * 4;
            let _ = writeln!(
                s,
                "storage: no weights file; {} bytes ({:.2} MiB) as f32",
                grouped(b),
                b as f64 / (1024.0 * 1024.0)
            );
        }
    }
    Ok(s)
}
