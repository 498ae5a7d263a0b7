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

/// The JSON a successful command printed.
fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
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
    // 1000 real digits (the first ones; a fifth of them in the reference).
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
    let report = json_of(&out);
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    // The shipped network, kept away from the reference it is measured against.
    let acc = report["classifier_accuracy"].as_f64().unwrap();
    assert!(acc > 0.965, "classifier accuracy {acc}");
    assert_eq!(
        report["reference_images"],
        "the 4000 mnist test digits whose index ends in 6-9"
    );
    assert_eq!(report["reference"], 4000);
    let features = report["features"].as_str().unwrap();
    assert!(
        features.contains(
            "shipped mnist network (trained on the 4000 mnist test digits whose index ends in 0-3, seed 0)"
        ),
        "{features}"
    );
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap();
    // Both sample sets have their floor at their own n, from the floor's pool.
    assert_eq!(report["real"].as_array().unwrap().len(), 2);
    assert_eq!(report["real"][0]["n"], 500);
    assert_eq!(report["real"][1]["n"], 1000);
    let floor = &report["real"][1];
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
    // The floor at the drawn set's n too.
    assert!(
        text.lines().any(|l| l.starts_with("real (held-out)\t20\t")),
        "{text}"
    );
}

/// `--train-features`: the same seed gives the same network, another seed another; the
/// weights record what made them and score samples through `--features`; a network for
/// another dataset, a dataset with none shipped and a wrong file name are one line each.
#[test]
fn feature_networks_train_deterministically_and_load() {
    let dir = tempfile::tempdir().unwrap();
    let train = |name: &str, seed: &str| {
        let out = diffuse()
            .args(["eval", "--train-features", "--epochs", "1", "--seed", seed])
            .args(["--device", "cpu", "--json", "-o"])
            .arg(dir.path().join(name))
            .current_dir(dir.path())
            .output()
            .unwrap();
        let r = json_of(&out);
        let w = candle_core::safetensors::load(dir.path().join(name), &Device::Cpu).unwrap();
        let mut names: Vec<&String> = w.keys().collect();
        names.sort();
        let flat: Vec<f32> = names
            .iter()
            .flat_map(|n| w[*n].flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect();
        (r, flat)
    };
    let (ra, a) = train("a.safetensors", "0");
    let (_, b) = train("b.safetensors", "0");
    let (_, c) = train("c.safetensors", "1");
    assert_eq!(a.len(), 421_642, "the network's parameter count");
    assert_eq!(a, b, "same seed, same network");
    assert_ne!(a, c);
    let info = &ra["info"];
    assert_eq!(info["dataset"], "mnist");
    assert_eq!(
        info["trained_on"],
        "the 4000 mnist test digits whose index ends in 0-3"
    );
    assert_eq!(info["config"]["epochs"], 1);
    assert!(info["command"]
        .as_str()
        .unwrap()
        .starts_with("diffuse eval --train-features --epochs 1"));
    // One epoch (31 steps) already reads most digits.
    let acc = info["reference_accuracy"].as_f64().unwrap();
    assert!((0.7..1.0).contains(&acc), "{acc}");

    let ds = diffuse::data::load(&diffuse::data::DataConfig {
        dataset: "mnist".into(),
        data_dir: dir.path().join("none"),
        ..Default::default()
    })
    .unwrap();
    let real = dir.path().join("real.safetensors");
    write_samples(&real, &ds.images.narrow(0, 0, 200).unwrap());
    let out = diffuse()
        .args(["eval", real.to_str().unwrap(), "--device", "cpu", "--json"])
        .arg("--features")
        .arg(dir.path().join("a.safetensors"))
        .output()
        .unwrap();
    let r = json_of(&out);
    assert!(r["features"].as_str().unwrap().contains(
        "a.safetensors (trained on the 4000 mnist test digits whose index ends in 0-3, seed 0)"
    ));
    assert!((r["classifier_accuracy"].as_f64().unwrap() - acc).abs() < 1e-12);

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"not weights").unwrap();
    let a_path = dir.path().join("a.safetensors");
    for (args, code, needle) in [
        (
            vec![
                "--dataset",
                "fashion-mnist",
                "--features",
                a_path.to_str().unwrap(),
            ],
            2,
            "trained for mnist, not fashion-mnist",
        ),
        (
            vec!["--dataset", "cifar10"],
            2,
            "no feature network ships for cifar10",
        ),
        (
            vec!["--features", garbage.to_str().unwrap()],
            1,
            "not a safetensors file",
        ),
        (vec!["-o", "x.png"], 2, "-o names"),
    ] {
        let out = diffuse()
            .args(["eval", real.to_str().unwrap()])
            .args(&args)
            .output()
            .unwrap();
        let (c, msg) = common::one_line_failure(out, "eval");
        assert_eq!(c, code, "{args:?}: {msg}");
        assert!(msg.contains(needle), "{args:?}: {msg}");
    }
    let out = diffuse()
        .args(["eval", "--train-features", "--epochs", "1", "-o"])
        .arg(dir.path().join("w.png"))
        .output()
        .unwrap();
    let (c, msg) = common::one_line_failure(out, "train-features");
    assert!(c == 2 && msg.contains(".safetensors"), "{msg}");
    assert!(!dir.path().join("w.png").exists());
    // Refused before any data is read: a dataset that does not exist is not what it says.
    let out = diffuse()
        .args([
            "eval",
            "--train-features",
            "--epochs",
            "0",
            "--dataset",
            "/no/such/data",
            "-o",
        ])
        .arg(dir.path().join("w.safetensors"))
        .output()
        .unwrap();
    let (c, msg) = common::one_line_failure(out, "train-features --epochs 0");
    assert!(
        c == 2 && msg.contains("--epochs 0 must be in [1, 1000]"),
        "{msg}"
    );
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

/// The shipped models (models/mnist, models/mnist-cond: the README's default runs) draw and
/// score offline at once: near the floor, every digit, and the classes asked for.
#[test]
fn shipped_models_score_near_the_floor_offline() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = |model: &str, n: &str| -> serde_json::Value {
        let out = diffuse()
            .args(["eval", "--device", "cpu", "--json", "-n", n, "--model"])
            .arg(root.join(model))
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap();
        json_of(&out)
    };
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap();
    let r = run("models/mnist", "200");
    let (row, floor) = (&r["rows"][0], &r["real"][0]);
    println!("{row}\n{floor}");
    assert_eq!(row["n"], 200);
    assert_eq!(floor["n"], 200);
    assert!(f(row, "fid") < 2.0 * f(floor, "fid"), "{row} vs {floor}");
    assert!(f(row, "class_entropy") > 3.2, "{row}");
    assert!(
        f(row, "precision") > 0.6 && f(row, "confidence") > 0.9,
        "{row}"
    );
    let r = run("models/mnist-cond", "100");
    let row = &r["rows"][0];
    println!("{row}");
    assert!(f(row, "class_accuracy") > 0.9, "{row}");
}
