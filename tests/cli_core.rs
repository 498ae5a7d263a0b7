//! `diffuse schedule` and `diffuse noise` end to end: outputs decoded and checked, and every
//! bad input gives one line, the right exit code and no output file.
mod common;
use assert_cmd::Command;
use candle_core::Device;
use std::path::{Path, PathBuf};

fn diffuse() -> Command {
    let mut c = Command::cargo_bin("diffuse").unwrap();
    c.env_remove("RUST_LOG");
    c
}

fn sample_png() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/sample.png")
}

fn stdout(args: &[&str]) -> String {
    let out = diffuse().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Run expecting failure: returns (exit code, stderr), asserting stderr is one line.
fn fails(args: &[&str]) -> (i32, String) {
    common::one_line_failure(diffuse().args(args).output().unwrap(), &format!("{args:?}"))
}

#[test]
fn schedule_at_500_shows_diffusers_values() {
    let s = stdout(&["schedule", "--at", "500"]);
    assert!(s.contains("0.077797"), "{s}");
    assert!(s.contains("0.278920") || s.contains("0.27892"), "{s}");
    assert!(s.contains("0.960314") || s.contains("0.96031"), "{s}");
}

#[test]
fn schedule_summary_csv_and_json() {
    let s = stdout(&["schedule"]);
    // 2 header lines + 10 rows (every 10%) + T-1.
    assert_eq!(s.lines().count(), 13, "{s}");
    assert!(s.lines().last().unwrap().trim_start().starts_with("999"));

    let csv = stdout(&["schedule", "--schedule", "cosine", "--format", "csv"]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1001);
    assert_eq!(lines[0].split(',').count(), 11);
    let row500: Vec<f64> = lines[501]
        .split(',')
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(row500[0], 500.0);

    let json = stdout(&["schedule", "--format", "json", "--timesteps", "10"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["rows"].as_array().unwrap().len(), 10);
    assert_eq!(v[0]["rows"][9]["t"], 9);

    let cmp = stdout(&["schedule", "--compare", "linear,cosine,sigmoid"]);
    assert!(
        cmp.contains("abar[cosine]") && cmp.contains("logsnr[sigmoid]"),
        "{cmp}"
    );
}

#[test]
fn schedule_plots_terminal_png_svg() {
    let s = stdout(&["schedule", "--plot"]);
    assert!(s.contains("* alpha_bar") && s.contains("log-SNR"), "{s}");
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("s.png");
    let svg = dir.path().join("s.svg");
    stdout(&[
        "schedule",
        "--compare",
        "linear,cosine",
        "--plot",
        png.to_str().unwrap(),
    ]);
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (900, 660));
    stdout(&["schedule", "--plot", svg.to_str().unwrap()]);
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("<svg") && text.contains("alpha_bar"));
}

#[test]
fn noise_single_strip_gif_and_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("img.png");
    std::fs::copy(sample_png(), &input).unwrap();
    let inp = input.to_str().unwrap();

    stdout(&["noise", inp, "--t", "500", "--device", "cpu"]);
    let single = image::open(dir.path().join("img_t500.png")).unwrap();
    assert_eq!((single.width(), single.height()), (64, 64));

    let strip = dir.path().join("strip.png");
    let gif = dir.path().join("fwd.gif");
    let st = dir.path().join("x.safetensors");
    stdout(&[
        "noise",
        inp,
        "--t",
        "0,250,500,750,999",
        "-o",
        strip.to_str().unwrap(),
        "--gif",
        gif.to_str().unwrap(),
        "--gif-frames",
        "6",
        "--save-tensors",
        st.to_str().unwrap(),
        "--size",
        "32",
        "--seed",
        "7",
    ]);
    let s = image::open(&strip).unwrap();
    // 6 panels (x0 + 5 timesteps) of 32*3=96 px with 6 px padding; one label row.
    assert_eq!(s.width(), 6 * (96 + 6) + 6);
    let frames = {
        use image::AnimationDecoder;
        let f = std::fs::File::open(&gif).unwrap();
        image::codecs::gif::GifDecoder::new(std::io::BufReader::new(f))
            .unwrap()
            .into_frames()
            .collect_frames()
            .unwrap()
    };
    assert_eq!(frames.len(), 6);

    let t = candle_core::safetensors::load(&st, &Device::Cpu).unwrap();
    assert_eq!(t["x_t"].dims(), &[5, 3, 32, 32]);
    assert_eq!(
        t["t"].to_vec1::<i64>().unwrap(),
        vec![0, 250, 500, 750, 999]
    );
    // x_t = sqrt(abar) x0 + sqrt(1-abar) eps for t = 500.
    let sched = diffuse::core::schedule::Schedule::named(
        diffuse::core::schedule::BetaSchedule::Linear,
        1000,
    )
    .unwrap();
    let r = sched.row(500);
    let expect = ((t["x0"].get(0).unwrap() * r.sqrt_alpha_bar).unwrap()
        + (t["eps"].get(0).unwrap() * r.sqrt_one_minus_alpha_bar).unwrap())
    .unwrap();
    assert!(common::max_abs_diff(&expect, &t["x_t"].get(2).unwrap()) < 1e-6);

    // Same seed, same bytes.
    let st2 = dir.path().join("y.safetensors");
    stdout(&[
        "noise",
        inp,
        "--t",
        "0,250,500,750,999",
        "-o",
        strip.to_str().unwrap(),
        "--save-tensors",
        st2.to_str().unwrap(),
        "--size",
        "32",
        "--seed",
        "7",
    ]);
    let t2 = candle_core::safetensors::load(&st2, &Device::Cpu).unwrap();
    assert_eq!(common::max_abs_diff(&t["x_t"], &t2["x_t"]), 0.0);
}

fn no_files_in(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.len() <= 1, "left behind: {left:?}");
}

#[test]
fn bad_inputs_one_line_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.png");
    std::fs::copy(sample_png(), &input).unwrap();
    let inp = input.to_str().unwrap();
    let out = dir.path().join("out.png");
    let o = out.to_str().unwrap();

    let (c, e) = fails(&["noise", "/nonexistent/x.png", "--t", "5"]);
    assert_eq!(c, 1);
    assert!(e.contains("/nonexistent/x.png"), "{e}");
    let txt = dir.path().join("notimage.png");
    std::fs::write(&txt, "hello").unwrap();
    let (c, e) = fails(&["noise", txt.to_str().unwrap(), "-o", o]);
    assert_eq!(c, 1);
    assert!(e.contains("not a readable image"), "{e}");
    std::fs::remove_file(&txt).unwrap();

    let (c, e) = fails(&["noise", inp, "--t", "1000", "-o", o]);
    assert_eq!(c, 2);
    assert!(e.contains("out of range") && e.contains("[0, 999]"), "{e}");
    let (c, _) = fails(&["schedule", "--at", "1000"]);
    assert_eq!(c, 2);
    let (c, e) = fails(&["schedule", "--timesteps", "0"]);
    assert_eq!(c, 2);
    assert!(e.contains("at least 1"), "{e}");
    let (c, e) = fails(&["schedule", "--beta-start", "0.02", "--beta-end", "0.01"]);
    assert_eq!(c, 2);
    assert!(e.contains("beta_end"), "{e}");
    let (c, _) = fails(&["schedule", "--beta-end", "1.5"]);
    assert_eq!(c, 2);
    let (c, e) = fails(&["schedule", "--schedule", "bogus"]);
    assert_eq!(c, 2);
    assert!(e.contains("bogus"), "{e}");

    let betas = dir.path().join("betas.txt");
    std::fs::write(&betas, "0.001\n0.002\nabc\n").unwrap();
    let (c, e) = fails(&["schedule", "--betas", betas.to_str().unwrap()]);
    assert_eq!(c, 1);
    assert!(e.contains("line 3"), "{e}");
    std::fs::write(&betas, "0.001\n1.5\n").unwrap();
    let (_, e) = fails(&["schedule", "--betas", betas.to_str().unwrap()]);
    assert!(e.contains("outside (0, 1)"), "{e}");
    std::fs::remove_file(&betas).unwrap();

    let (c, e) = fails(&["noise", inp, "-o", "/nonexistent-dir/out.png"]);
    assert_eq!(c, 1);
    assert!(e.contains("/nonexistent-dir/out.png"), "{e}");
    let (c, _) = fails(&["noise", inp, "--device", "cuda"]);
    assert_eq!(c, 2);
    no_files_in(dir.path());
}

#[test]
fn custom_betas_file_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let betas = dir.path().join("b.csv");
    std::fs::write(&betas, "t,beta\n0,0.1\n1,0.2\n2,0.3\n").unwrap();
    let csv = stdout(&[
        "schedule",
        "--betas",
        betas.to_str().unwrap(),
        "--format",
        "csv",
    ]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4);
    let last: Vec<&str> = lines[3].split(',').collect();
    // alpha_bar[2] = 0.9 * 0.8 * 0.7
    assert!(
        (last[4].parse::<f64>().unwrap() - 0.504).abs() < 1e-12,
        "{csv}"
    );
}

#[test]
fn version_names_the_backends_compiled_in() {
    let v = stdout(&["--version"]);
    let compiled = [
        ("cuda", cfg!(feature = "cuda")),
        ("cudnn", cfg!(feature = "cudnn")),
        ("metal", cfg!(feature = "metal")),
        ("mpi", cfg!(feature = "mpi")),
        ("nccl", cfg!(feature = "nccl")),
    ];
    let backends: String = compiled
        .iter()
        .filter(|(_, on)| *on)
        .map(|(f, _)| format!(", {f}"))
        .collect();
    let backends = format!("cpu{backends}");
    assert_eq!(
        v.trim(),
        format!("diffuse {} ({backends})", env!("CARGO_PKG_VERSION"))
    );
}
