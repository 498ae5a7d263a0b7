//! `diffuse eval` end to end: real digits score near the real floor and spread over the ten
//! classes; noise scores far off; bad files are one line each, before any training.
mod common;
use assert_cmd::Command;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;

fn diffuse() -> Command {
    let mut c = Command::cargo_bin("diffuse").unwrap();
    c.env_remove("RUST_LOG").env("HF_HUB_OFFLINE", "1");
    c
}

fn write_samples(path: &std::path::Path, x: &Tensor) {
    let mut m = HashMap::new();
    m.insert("samples".to_string(), x.clone());
    candle_core::safetensors::save(&m, path).unwrap();
}

#[test]
fn real_digits_beat_noise_and_bad_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let ds = diffuse::data::load(&diffuse::data::DataConfig {
        dataset: "mnist".into(),
        data_dir: dir.path().join("none"),
        ..Default::default()
    })
    .unwrap();
    // 1000 real digits (the first ones; the classifier holds out the last 1000).
    let real = ds.images.narrow(0, 0, 1000).unwrap();
    let u = diffuse::core::rng::NoiseRng::new(5).uniform_f32(500 * 784);
    let noise = Tensor::from_vec(u, (500, 1, 28, 28), &Device::Cpu)
        .unwrap()
        .affine(2.0, -1.0)
        .unwrap();
    let (pr, pn) = (
        dir.path().join("real.safetensors"),
        dir.path().join("noise.safetensors"),
    );
    write_samples(&pr, &real);
    write_samples(&pn, &noise);

    // Bad inputs first: each is one line, exit 1 (2 for usage), and no training happens.
    let wrong = dir.path().join("wrong.safetensors");
    write_samples(
        &wrong,
        &Tensor::zeros((4, 1, 16, 16), DType::F32, &Device::Cpu).unwrap(),
    );
    let nokey = dir.path().join("nokey.safetensors");
    let mut m = HashMap::new();
    m.insert("x".to_string(), real.narrow(0, 0, 4).unwrap());
    candle_core::safetensors::save(&m, &nokey).unwrap();
    for (args, code, needle) in [
        (
            vec![wrong.to_str().unwrap()],
            1,
            "eval takes [N >= 2, 1, 28, 28]",
        ),
        (vec![nokey.to_str().unwrap()], 1, "no tensor 'samples'"),
        (vec!["/no/such.safetensors"], 1, "/no/such.safetensors"),
        (vec![], 2, "SAMPLES"),
    ] {
        let out = diffuse().arg("eval").args(&args).output().unwrap();
        let (c, msg) = common::one_line_failure(out, "eval");
        assert_eq!(c, code, "{args:?}: {msg}");
        assert!(msg.contains(needle), "{args:?}: {msg}");
    }

    let out = diffuse()
        .args([
            "eval",
            pr.to_str().unwrap(),
            pn.to_str().unwrap(),
            "--device",
            "cpu",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    let acc = report["classifier_accuracy"].as_f64().unwrap();
    assert!(acc > 0.95, "classifier accuracy {acc}");
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap();
    let floor = &report["real"];
    let (real, noise) = (&report["rows"][0], &report["rows"][1]);
    assert_eq!(real["name"], pr.to_str().unwrap());
    let shares: Vec<f64> = real["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    // Real digits: about the floor (two real sets of 1000), each class near 10%.
    assert!(
        f(real, "fid") < 3.0 * f(floor, "fid") + 0.05,
        "{} vs floor {}",
        f(real, "fid"),
        f(floor, "fid")
    );
    assert!(
        shares.iter().all(|s| (0.05..0.16).contains(s)),
        "{shares:?}"
    );
    assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    // Every class about equally often: entropy near log2 10 = 3.32 bits; the classifier is
    // sure of real digits; both sets of real digits cover each other.
    assert!(f(real, "class_entropy") > 3.25, "{real}");
    assert!(f(real, "confidence") > 0.9, "{real}");
    assert!(
        f(real, "precision") > 0.6 && f(real, "recall") > 0.6,
        "{real}"
    );
    // Noise: far worse on both scores, and outside the real manifold.
    assert!(
        f(noise, "fid") > 20.0 * f(real, "fid").max(0.01),
        "{noise} vs {real}"
    );
    assert!(
        f(noise, "kid") > 20.0 * f(real, "kid").abs().max(1e-5),
        "{noise} vs {real}"
    );
    assert!(f(noise, "precision") < 0.05, "{noise}");
    // The table for people says what the numbers are not; --model draws its own samples (a
    // class-conditional model: every class equally often, with its accuracy on them).
    let run_dir = dir.path().join("cond");
    let r = diffuse()
        .args(["train", "--model-config"])
        .arg(common::data_path("tiny28/config.json"))
        .arg("--output")
        .arg(&run_dir)
        .args([
            "--train-steps",
            "2",
            "--batch-size",
            "8",
            "--limit",
            "64",
            "--class-cond",
        ])
        .args(["--sample-every", "0", "--num", "2", "--device", "cpu"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let out = diffuse()
        .args([
            "eval",
            pr.to_str().unwrap(),
            "--device",
            "cpu",
            "-n",
            "20",
            "--model",
        ])
        .arg(&run_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    println!("{text}");
    assert!(
        text.contains("precision\trecall") && text.contains("not Inception FID"),
        "{text}"
    );
    let drawn: Vec<&str> = text
        .lines()
        .find(|l| l.contains("(its default sampler)"))
        .unwrap()
        .split('\t')
        .collect();
    assert_eq!(drawn[1], "20");
    let acc: f64 = drawn[8].parse().unwrap();
    assert!((0.0..=1.0).contains(&acc), "{acc}");
}

/// `eval --loss-by-t` on a model trained for a few steps: one row per band covering [0, T),
/// finite losses, the same numbers for the same seed and others for another, a decodable
/// chart; bad settings are one line and no chart.
#[test]
fn loss_by_t_on_a_briefly_trained_model() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let r = diffuse()
        .args(["train", "--model-config"])
        .arg(common::data_path("tiny28/config.json"))
        .arg("--output")
        .arg(&run_dir)
        .args(["--train-steps", "3", "--batch-size", "8", "--limit", "32"])
        .args(["--sample-every", "0", "--num", "2", "--device", "cpu"])
        .env("HF_HOME", dir.path().join("hf"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let lbt = |extra: &[&str], out: &str| {
        diffuse()
            .args(["eval", "--loss-by-t", "--model"])
            .arg(&run_dir)
            .args(["--batch-size", "32", "--device", "cpu"])
            .args(extra)
            .arg("-o")
            .arg(dir.path().join(out))
            .env("HF_HOME", dir.path().join("hf"))
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let rows = |out: std::process::Output| -> Vec<(usize, usize, f64, f64)> {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_digit()))
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (
                    f[0].parse().unwrap(),
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                    f[3].parse().unwrap(),
                )
            })
            .collect()
    };
    let small = ["-n", "48", "--buckets", "4"];
    let a = rows(lbt(&small, "a.png"));
    assert_eq!(
        a.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(),
        vec![(0, 249), (250, 499), (500, 749), (750, 999)]
    );
    assert!(a
        .iter()
        .all(|r| r.2.is_finite() && r.2 > 0.0 && r.3.is_finite()));
    let img = image::open(dir.path().join("a.png")).unwrap();
    assert_eq!((img.width(), img.height()), (900, 660));
    assert_eq!(a, rows(lbt(&small, "b.png")), "same seed, same numbers");
    let seeded: Vec<&str> = small.iter().copied().chain(["--seed", "1"]).collect();
    assert_ne!(a, rows(lbt(&seeded, "c.png")));
    for (extra, needle) in [
        (&["--buckets", "0"][..], "--buckets 0"),
        (&["--buckets", "1001"][..], "--buckets 1001"),
        (&["-n", "0"][..], "--num must be at least 1"),
    ] {
        let (c, msg) = common::one_line_failure(lbt(extra, "bad.png"), needle);
        assert_eq!(c, 2, "{msg}");
        assert!(msg.contains(needle), "{msg}");
        assert!(!dir.path().join("bad.png").exists());
    }
    let (c, msg) = common::one_line_failure(lbt(&small, "bad.txt"), "figure extension");
    assert!(c != 0 && !dir.path().join("bad.txt").exists(), "{msg}");
    // Samples and --loss-by-t are two modes.
    let out = diffuse()
        .args(["eval", "x.safetensors", "--loss-by-t", "--model", "m"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
