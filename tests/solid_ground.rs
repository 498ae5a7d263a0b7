//! The "solid ground" defects, one test each: outputs that never destroy, bounded sizes,
//! quiet closed pipes, NaN caught on output, no silent overwrites, a --resume that checks its
//! settings, early and all-or-nothing failures, exit codes and messages, no ignored flags,
//! and progress when stderr is not a terminal. Every bad input: exit code, one line naming
//! the problem, no `panicked`, and no file created, changed or removed.
mod common;
use assert_cmd::Command;
use candle_core::{DType, Device, Tensor};
use std::io::Read;
use std::path::Path;
use std::process::Stdio;

fn bin() -> Command {
    let mut c = Command::cargo_bin("diffuse").unwrap();
    c.env_remove("RUST_LOG")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", std::env::temp_dir().join("diffuse-sg-empty-hf"));
    c
}

fn ok(args: &[&str]) -> std::process::Output {
    let out = bin().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run expecting failure with exit `code`, one stderr line containing `needle`.
fn fails(args: &[&str], code: i32, needle: &str) -> String {
    let (c, err) =
        common::one_line_failure(bin().args(args).output().unwrap(), &format!("{args:?}"));
    assert_eq!(c, code, "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected '{needle}' in {err}"
    );
    err
}

fn tiny_model() -> String {
    common::data_path("unet_tiny").display().to_string()
}

fn is_char_device(p: &str) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p).unwrap().file_type().is_char_device()
}

fn sample_png() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/sample.png")
        .display()
        .to_string()
}

#[test]
fn outputs_to_devices_symlinks_and_directories() {
    let m = tiny_model();
    // /dev/null is a sink and stays a character device.
    ok(&[
        "sample",
        "--model",
        &m,
        "-n",
        "2",
        "--steps",
        "2",
        "-o",
        "/dev/null",
    ]);
    ok(&[
        "noise",
        &sample_png(),
        "--t",
        "10",
        "-o",
        "/dev/null",
        "--save-tensors",
        "/dev/null",
    ]);
    assert!(is_char_device("/dev/null"));
    // /dev/full: written in place, so the write fails (ENOSPC) and the device stays.
    fails(
        &["noise", &sample_png(), "--t", "10", "-o", "/dev/full"],
        1,
        "/dev/full",
    );
    assert!(is_char_device("/dev/full"));

    // A symlink is written through: the link stays a link, its target gets the PNG.
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("real.png");
    std::fs::write(&target, "old").unwrap();
    let link = d.path().join("link.png");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    ok(&[
        "noise",
        &sample_png(),
        "--t",
        "10",
        "-o",
        link.to_str().unwrap(),
    ]);
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let img = image::open(&target).unwrap();
    assert_eq!(img.width(), image::open(sample_png()).unwrap().width());

    // A directory as the output: one line, nothing changes.
    let before = common::snapshot(d.path());
    fails(
        &["noise", &sample_png(), "-o", d.path().to_str().unwrap()],
        1,
        "is a directory",
    );
    assert_eq!(before, common::snapshot(d.path()));
}

#[test]
fn unbounded_sizes_are_refused_before_allocating() {
    fails(
        &["schedule", "--timesteps", "99999999999"],
        2,
        "limit of 100000",
    );
    fails(
        &["noise", &sample_png(), "--size", "100000"],
        2,
        "limit of 4096",
    );
    fails(
        &["sample", "--model", &tiny_model(), "--num", "100000000"],
        2,
        "limit of 10000000",
    );
    fails(&["schedule", "--betas", "/dev/zero"], 1, "larger than");
    fails(&["noise", "/dev/zero"], 1, "larger than");
}

#[test]
fn large_num_streams_in_batches_to_one_tensors_file() {
    let d = tempfile::tempdir().unwrap();
    let grid = d.path().join("g.png");
    let st = d.path().join("s.safetensors");
    let st1 = d.path().join("one.safetensors");
    let m = tiny_model();
    let args = |bs: &str, out: &Path| {
        ok(&[
            "sample",
            "--model",
            &m,
            "-n",
            "300",
            "--batch-size",
            bs,
            "--steps",
            "2",
            "--seed",
            "5",
            "-o",
            grid.to_str().unwrap(),
            "--save-tensors",
            out.to_str().unwrap(),
        ])
    };
    args("100", &st);
    let t = candle_core::safetensors::load(&st, &Device::Cpu).unwrap();
    let s = &t["samples"];
    assert_eq!(s.dims()[0], 300);
    let v: Vec<f32> = s.flatten_all().unwrap().to_vec1().unwrap();
    assert!(v.iter().all(|x| x.is_finite()));
    // The streamed file holds what a one-batch run would have held for the same noise:
    // batch 1 of a 100-batch run is the first draw of the seed, as in a 100-image run.
    ok(&[
        "sample",
        "--model",
        &m,
        "-n",
        "100",
        "--steps",
        "2",
        "--seed",
        "5",
        "-o",
        grid.to_str().unwrap(),
        "--save-tensors",
        st1.to_str().unwrap(),
    ]);
    let one = candle_core::safetensors::load(&st1, &Device::Cpu).unwrap();
    assert_eq!(
        common::max_abs_diff(&s.narrow(0, 0, 100).unwrap(), &one["samples"]),
        0.0
    );
    // 300 images: an 18x17 grid of 32+2 px tiles (unet_tiny is 32x32).
    let g = image::open(&grid).unwrap();
    assert!(g.width() > 300, "{}", g.width());
}

#[test]
fn closed_stdout_ends_quietly() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .args(["schedule", "--format", "csv", "--timesteps", "100000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 64];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(matches!(out.status.code(), Some(0) | Some(141)), "{err}");
    assert!(err.is_empty(), "{err}");
}

#[test]
fn non_finite_tables_and_samples_are_errors() {
    let out = bin()
        .args(["schedule", "--zero-snr", "--timesteps", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--zero-snr"));

    // A model with a NaN weight: one line naming the tensor, no grid.
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("nan-model");
    std::fs::create_dir(&model).unwrap();
    let src = common::data_path("unet_tiny");
    std::fs::copy(src.join("config.json"), model.join("config.json")).unwrap();
    let mut w = candle_core::safetensors::load(
        src.join("diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let k = "conv_out.bias".to_string();
    let n = w[&k].dims1().unwrap();
    let mut v = vec![0f32; n];
    v[0] = f32::NAN;
    w.insert(k, Tensor::from_vec(v, n, &Device::Cpu).unwrap());
    candle_core::safetensors::save(&w, model.join("diffusion_pytorch_model.safetensors")).unwrap();
    let grid = d.path().join("g.png");
    fails(
        &[
            "sample",
            "--model",
            model.to_str().unwrap(),
            "--steps",
            "2",
            "-o",
            grid.to_str().unwrap(),
        ],
        1,
        "conv_out.bias",
    );
    assert!(!grid.exists());
    let _ = DType::F32;
}

#[test]
fn inputs_and_model_files_are_never_overwritten() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in.png");
    std::fs::copy(sample_png(), &input).unwrap();
    let model = d.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(common::data_path("unet_tiny").join(f), model.join(f)).unwrap();
    }
    let before = common::snapshot(d.path());
    let i = input.to_str().unwrap();
    fails(&["noise", i, "--t", "3", "-o", i], 2, "input");
    fails(
        &[
            "noise",
            i,
            "--t",
            "3,4",
            "--save-tensors",
            i,
            "-o",
            "/dev/null",
        ],
        2,
        "input",
    );
    let cfg = model.join("config.json");
    fails(
        &[
            "sample",
            "--model",
            model.to_str().unwrap(),
            "-o",
            cfg.to_str().unwrap(),
        ],
        2,
        "model directory",
    );
    let a = d.path().join("a.png");
    fails(
        &[
            "noise",
            i,
            "--t",
            "1,2",
            "-o",
            a.to_str().unwrap(),
            "--gif",
            a.to_str().unwrap(),
        ],
        2,
        "two outputs",
    );
    assert_eq!(before, common::snapshot(d.path()));
}

#[test]
fn failed_secondary_outputs_leave_no_main_output() {
    let d = tempfile::tempdir().unwrap();
    let strip = d.path().join("strip.png");
    let before = common::snapshot(d.path());
    fails(
        &[
            "noise",
            &sample_png(),
            "--panels",
            "3",
            "-o",
            strip.to_str().unwrap(),
            "--gif",
            "/nonexistent-dir/x.gif",
        ],
        1,
        "/nonexistent-dir",
    );
    fails(
        &[
            "sample",
            "--model",
            &tiny_model(),
            "--steps",
            "2",
            "-o",
            strip.to_str().unwrap(),
            "--save-tensors",
            "/nonexistent-dir/x.safetensors",
        ],
        1,
        "/nonexistent-dir",
    );
    assert_eq!(before, common::snapshot(d.path()));
}

#[test]
fn os_errors_are_said_once_without_temp_paths() {
    let err = fails(
        &[
            "noise",
            &sample_png(),
            "--t",
            "5",
            "-o",
            "/proc/diffuse-test.png",
        ],
        1,
        "/proc/diffuse-test.png",
    );
    assert!(!err.contains(".diffuse-"), "{err}");
    let first = err.find("(os error").unwrap();
    assert!(!err[first + 1..].contains("(os error"), "{err}");
}

#[test]
fn missing_paths_and_bad_file_contents_exit_1() {
    fails(
        &["sample", "--model", "/no/such/model-dir"],
        1,
        "/no/such/model-dir",
    );
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("m");
    std::fs::create_dir_all(model.join("unet")).unwrap();
    std::fs::create_dir_all(model.join("scheduler")).unwrap();
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(
            common::data_path("unet_tiny").join(f),
            model.join("unet").join(f),
        )
        .unwrap();
    }
    let sc = model.join("scheduler/scheduler_config.json");
    std::fs::write(&sc, r#"{"beta_schedule": "exponential"}"#).unwrap();
    let o = d.path().join("o.png");
    fails(
        &[
            "sample",
            "--model",
            model.to_str().unwrap(),
            "-o",
            o.to_str().unwrap(),
        ],
        1,
        "scheduler_config.json",
    );
    std::fs::write(&sc, r#"{"beta_start": 0.5, "beta_end": 0.1}"#).unwrap();
    fails(
        &[
            "sample",
            "--model",
            model.to_str().unwrap(),
            "-o",
            o.to_str().unwrap(),
        ],
        1,
        "scheduler_config.json",
    );
    assert!(!o.exists());
}

#[test]
fn clap_hints_stay_in_the_one_line() {
    fails(
        &["sample", "--model", "m", "--sampler", "eulr"],
        2,
        "possible values: ddpm, ddim, euler, euler-a, heun, dpm-solver++",
    );
    fails(
        &["sample", "--model", "m", "--sampelr", "ddim"],
        2,
        "similar argument exists: '--sampler'",
    );
}

#[test]
fn conflicting_and_meaningless_flags_are_usage_errors() {
    let d = tempfile::tempdir().unwrap();
    let betas = d.path().join("b.csv");
    std::fs::write(&betas, "0.001\n0.002\n0.003\n").unwrap();
    let b = betas.to_str().unwrap();
    for extra in [
        ["--schedule", "cosine"],
        ["--timesteps", "10"],
        ["--beta-end", "0.01"],
        ["--compare", "linear,cosine"],
    ] {
        let mut a = vec!["schedule", "--betas", b];
        a.extend(extra);
        fails(&a, 2, "cannot be used with");
    }
    // --at applies to csv and json too: the header and that row.
    let out = ok(&["schedule", "--at", "5", "--format", "csv"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.lines().nth(1).unwrap().starts_with("linear,5,"));
    let out = ok(&["schedule", "--at", "5", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["rows"].as_array().unwrap().len(), 1);

    let m = tiny_model();
    fails(&["train", "--grad-clip", "-1"], 2, "--grad-clip");
    fails(&["train", "--num-samples", "0"], 2, "--num");
    fails(
        &[
            "noise",
            &sample_png(),
            "--gif",
            "/dev/null",
            "--gif-frames",
            "0",
        ],
        2,
        "--gif-frames",
    );
    fails(&["sample", "--model", &m, "--device", "cpu:5"], 2, "cpu:5");
    fails(
        &["sample", "--model", &m, "--batch-size", "0"],
        2,
        "--batch-size",
    );
    fails(&["sample", "--model", &m, "--gif-frames", "5"], 2, "--gif");
    fails(&["train", "--resume", "--force"], 2, "cannot be used with");
}

#[test]
fn wrong_data_dir_never_falls_back_to_bundled_digits() {
    let d = tempfile::tempdir().unwrap();
    let o = d.path().join("g.png");
    fails(
        &[
            "data",
            "show",
            "--data-dir",
            "/no/such/data",
            "-o",
            o.to_str().unwrap(),
        ],
        1,
        "/no/such/data",
    );
    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    fails(
        &[
            "data",
            "show",
            "--data-dir",
            empty.to_str().unwrap(),
            "-o",
            o.to_str().unwrap(),
        ],
        1,
        "mnist not found",
    );
    assert!(!o.exists());
}

#[test]
fn sampler_names_any_case_and_diffusers_classes() {
    let m = tiny_model();
    let d = tempfile::tempdir().unwrap();
    let mut outs = Vec::new();
    for (i, name) in ["ddim", "DDIM", "DDIMScheduler", "ddimscheduler"]
        .iter()
        .enumerate()
    {
        let o = d.path().join(format!("{i}.png"));
        ok(&[
            "sample",
            "--model",
            &m,
            "-n",
            "2",
            "--steps",
            "2",
            "--sampler",
            name,
            "-o",
            o.to_str().unwrap(),
        ]);
        outs.push(std::fs::read(&o).unwrap());
    }
    assert!(outs.windows(2).all(|w| w[0] == w[1]));
    ok(&[
        "sample",
        "--model",
        &m,
        "-n",
        "2",
        "--steps",
        "2",
        "--sampler",
        "DPMSolverMultistepScheduler",
        "-o",
        "/dev/null",
    ]);
}

#[test]
fn every_flag_has_help() {
    for cmd in [
        vec!["schedule"],
        vec!["noise"],
        vec!["inspect"],
        vec!["data", "show"],
        vec!["train"],
        vec!["sample"],
    ] {
        let mut a = cmd.clone();
        a.push("-h");
        let out = ok(&a);
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            if t.starts_with('-') && !t.starts_with("-h") && !t.starts_with("-V") {
                // Help on the same line, or (clap's next-line layout) on the line below.
                let below = lines.get(i + 1).map_or("", |l| l.trim_start());
                let has = t.contains("  ") || (!below.is_empty() && !below.starts_with('-'));
                assert!(has, "{cmd:?}: flag without help text: {line}");
            }
        }
    }
    let out = ok(&["noise", "-h"]);
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .contains("500 for T = 1000"));
}
