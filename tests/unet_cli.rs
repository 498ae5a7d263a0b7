//! `diffuse inspect` end to end: per-block counts that sum to diffusers' totals, and one-line
//! errors for bad models.
mod common;
use assert_cmd::Command;
use common::data_path;

fn diffuse() -> Command {
    let mut c = Command::cargo_bin("diffuse").unwrap();
    c.env_remove("RUST_LOG");
    c
}

fn fails(args: &[&str]) -> (i32, String) {
    let out = diffuse().args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    (out.status.code().unwrap(), err)
}

fn count(line: &str) -> u64 {
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .replace(',', "")
        .parse()
        .unwrap()
}

#[test]
fn inspect_tiny_model_dir() {
    let dir = data_path("unet_tiny");
    let out = diffuse()
        .args(["inspect", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(s.contains("\"_class_name\": \"UNet2DModel\""), "{s}");
    let rows: Vec<&str> = s
        .lines()
        .map(str::trim_start)
        .filter(|l| {
            [
                "conv_in ",
                "time_embedding ",
                "down_blocks.",
                "mid_block ",
                "up_blocks.",
                "conv_norm_out ",
                "conv_out ",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .collect();
    assert_eq!(rows.len(), 9, "{s}");
    let sum: u64 = rows.iter().map(|l| count(l)).sum();
    let total = s
        .lines()
        .map(str::trim_start)
        .find(|l| l.starts_with("total"))
        .unwrap();
    // 701,345 = sum of the golden safetensors' tensor sizes (diffusers' parameter count).
    assert_eq!(count(total), 701_345);
    assert_eq!(sum, 701_345);
    assert!(s.contains("2,819,900 bytes"), "{s}");
}

#[test]
fn inspect_presets() {
    let s = String::from_utf8(
        diffuse()
            .args(["inspect", "cifar10"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(s.contains("35,746,307"), "{s}");
    let s = String::from_utf8(
        diffuse()
            .args(["inspect", "mnist"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(s.contains("1,112,801"), "{s}");
}

#[test]
fn inspect_bad_models_fail_in_one_line() {
    let (code, err) = fails(&["inspect", "no-such-model"]);
    assert_eq!(code, 2, "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cfg = std::fs::read_to_string(data_path("unet_tiny/config.json")).unwrap();
    std::fs::write(
        d.join("config.json"),
        cfg.replace("\"UpBlock2D\"", "\"KUpBlock2D\""),
    )
    .unwrap();
    let (code, err) = fails(&["inspect", d.to_str().unwrap()]);
    assert!(
        code == 1 && err.contains("unsupported up block type 'KUpBlock2D'"),
        "{err}"
    );
    std::fs::write(d.join("config.json"), &cfg).unwrap();
    let w = std::fs::read(data_path("unet_tiny/diffusion_pytorch_model.safetensors")).unwrap();
    std::fs::write(d.join("diffusion_pytorch_model.safetensors"), &w[..1000]).unwrap();
    let (_, err) = fails(&["inspect", d.to_str().unwrap()]);
    assert!(err.contains("not a valid safetensors file"), "{err}");
    let mnist = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/mnist/config.json"),
    )
    .unwrap();
    std::fs::write(d.join("config.json"), mnist).unwrap();
    std::fs::write(d.join("diffusion_pytorch_model.safetensors"), &w).unwrap();
    let (_, err) = fails(&["inspect", d.to_str().unwrap()]);
    assert!(err.contains("tensor '"), "{err}");
}
