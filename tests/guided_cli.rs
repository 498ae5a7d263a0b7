//! Steering through the CLI: class-conditional training writes classes.json and a UNet with
//! a null class; `sample --class/--guidance` draws what it is asked for (labels reach the
//! model), `--init/--strength` starts from an image; every bad input is one line and no file.
mod common;
use assert_cmd::Command;
use std::path::Path;

fn diffuse() -> Command {
    let mut c = Command::cargo_bin("diffuse").unwrap();
    c.env_remove("RUST_LOG").env("HF_HUB_OFFLINE", "1");
    c
}

fn samples(p: &Path) -> candle_core::Tensor {
    candle_core::safetensors::load(p, &candle_core::Device::Cpu).unwrap()["samples"].clone()
}

/// A class-conditional pipeline from the golden unet_class (11 embeddings).
fn class_pipeline(dir: &Path, classes_json: Option<&str>) -> std::path::PathBuf {
    let p = dir.join("cls");
    std::fs::create_dir_all(p.join("unet")).unwrap();
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(
            common::data_path("unet_class").join(f),
            p.join("unet").join(f),
        )
        .unwrap();
    }
    if let Some(c) = classes_json {
        std::fs::write(p.join("classes.json"), c).unwrap();
    }
    p
}

fn run(args: &[&str]) -> std::process::Output {
    diffuse().args(args).output().unwrap()
}

#[test]
fn class_and_guidance_flags() {
    let dir = tempfile::tempdir().unwrap();
    let plain = class_pipeline(dir.path(), None);
    let m = plain.to_str().unwrap();
    let o = dir.path().join("o.png");
    let t = |n: &str| dir.path().join(n);
    let base = |extra: &[&str], out: &Path| -> std::process::Output {
        let mut a = vec![
            "sample", "--model", m, "--steps", "3", "-n", "4", "--device", "cpu",
        ];
        a.extend_from_slice(&[
            "-o",
            o.to_str().unwrap(),
            "--save-tensors",
            out.to_str().unwrap(),
        ]);
        a.extend_from_slice(extra);
        run(&a)
    };
    // Labels reach the model: class 3 and class 4 differ; the same class twice agrees.
    for (name, class) in [("a3.st", "3"), ("b3.st", "3"), ("c4.st", "4")] {
        let out = base(&["--class", class], &t(name));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (a, b, c) = (
        samples(&t("a3.st")),
        samples(&t("b3.st")),
        samples(&t("c4.st")),
    );
    assert_eq!(common::max_abs_diff(&a, &b), 0.0);
    assert!(common::max_abs_diff(&a, &c) > 1e-3);
    // Without classes.json there is no null class: guidance other than 1 is refused.
    let out = base(&["--class", "3", "--guidance", "2"], &t("x.st"));
    let (code, msg) = common::one_line_failure(out, "guidance without null class");
    assert!(code == 2 && msg.contains("null class"), "{msg}");
    assert!(!t("x.st").exists());

    // With classes.json: names work, a sweep grid has one column per scale.
    let names = r#"{"names": ["zero","one","two","three","four","five","six","seven","eight","nine"], "null_class": 10}"#;
    let named = class_pipeline(&dir.path().join("n"), Some(names));
    let nm = named.to_str().unwrap();
    let g = dir.path().join("sweep.png");
    let out = run(&[
        "sample",
        "--model",
        nm,
        "--steps",
        "3",
        "-n",
        "2",
        "--device",
        "cpu",
        "--class",
        "SEVEN",
        "--guidance",
        "1,2,4",
        "-o",
        g.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let img = image::open(&g).unwrap();
    assert!(
        img.width() > img.height(),
        "3 columns x 2 rows: {}x{}",
        img.width(),
        img.height()
    );
    let s7 = dir.path().join("s7.st");
    let out = run(&[
        "sample",
        "--model",
        nm,
        "--steps",
        "3",
        "-n",
        "4",
        "--device",
        "cpu",
        "--class",
        "7",
        "--guidance",
        "3",
        "-o",
        o.to_str().unwrap(),
        "--save-tensors",
        s7.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Bad inputs: one line, exit 2 (usage) or 1 (files), nothing written.
    let unet_tiny = common::data_path("unet_tiny");
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["--model", nm, "--class", "eleven"],
            2,
            "no class 'eleven'",
        ),
        (vec!["--model", nm, "--class", "10"], 2, "no class '10'"),
        (
            vec!["--model", unet_tiny.to_str().unwrap(), "--class", "3"],
            2,
            "class-conditional",
        ),
        (vec!["--model", nm, "--guidance", "1,nan"], 2, "guidance"),
        (
            vec!["--model", nm, "--guidance", "1,2", "--save-tensors", "z.st"],
            2,
            "sweep",
        ),
    ];
    for (args, code, needle) in cases {
        let z = dir.path().join("never.png");
        let mut a = vec![
            "sample",
            "--steps",
            "2",
            "-n",
            "2",
            "--device",
            "cpu",
            "-o",
            z.to_str().unwrap(),
        ];
        a.extend(args.iter().copied());
        let (c, msg) = common::one_line_failure(run(&a), needle);
        assert_eq!(c, code, "{a:?}: {msg}");
        assert!(msg.contains(needle), "{a:?}: {msg}");
        assert!(!z.exists(), "{a:?} wrote a file");
    }
}

#[test]
fn init_and_strength() {
    let dir = tempfile::tempdir().unwrap();
    let m = common::data_path("unet_tiny");
    let m = m.to_str().unwrap();
    // An RGB image of another size: resized, cropped and made gray for the 1-channel model.
    let init = dir.path().join("init.png");
    let img = image::RgbImage::from_fn(40, 30, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 8) as u8, 128])
    });
    img.save(&init).unwrap();
    let go = |strength: &str, out: &str| -> std::process::Output {
        let o = dir.path().join(format!("{out}.png"));
        let st = dir.path().join(format!("{out}.st"));
        run(&[
            "sample",
            "--model",
            m,
            "--steps",
            "10",
            "-n",
            "2",
            "--device",
            "cpu",
            "--init",
            init.to_str().unwrap(),
            "--strength",
            strength,
            "-o",
            o.to_str().unwrap(),
            "--save-tensors",
            st.to_str().unwrap(),
        ])
    };
    for (s, name) in [("0.3", "low"), ("1.0", "full")] {
        let out = go(s, name);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            samples(&dir.path().join(format!("{name}.st"))).dims(),
            &[2, 1, 16, 16]
        );
    }
    // A low strength keeps more of the image than full strength does.
    let gray = diffuse::io::imageio::load_image(&init, Some(16), &candle_core::Device::Cpu)
        .unwrap()
        .mean_keepdim(0)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
        .broadcast_as((2, 1, 16, 16))
        .unwrap()
        .contiguous()
        .unwrap();
    let dl = common::max_abs_diff(&samples(&dir.path().join("low.st")), &gray);
    let df = common::max_abs_diff(&samples(&dir.path().join("full.st")), &gray);
    println!("distance to the init image: strength 0.3 {dl:.3}, 1.0 {df:.3}");
    assert!(dl < df, "{dl} vs {df}");
    for (s, needle) in [
        ("0", "outside (0, 1]"),
        ("1.5", "outside (0, 1]"),
        ("0.05", "keeps no step"),
    ] {
        let (c, msg) = common::one_line_failure(go(s, "bad"), s);
        assert_eq!(c, 2, "{msg}");
        assert!(msg.contains(needle), "{msg}");
        assert!(!dir.path().join("bad.png").exists());
    }
    let not_image = dir.path().join("x.png");
    std::fs::write(&not_image, b"not a png").unwrap();
    for (p, needle) in [
        (not_image.to_str().unwrap(), "not a readable image"),
        ("/no/such.png", "/no/such.png"),
    ] {
        let o = dir.path().join("bad2.png");
        let out = run(&[
            "sample",
            "--model",
            m,
            "--steps",
            "3",
            "-n",
            "2",
            "--device",
            "cpu",
            "--init",
            p,
            "-o",
            o.to_str().unwrap(),
        ]);
        let (c, msg) = common::one_line_failure(out, p);
        assert_eq!(c, 1, "{msg}");
        assert!(msg.contains(needle), "{msg}");
        assert!(!o.exists());
    }
    // --strength needs --init.
    let out = run(&["sample", "--model", m, "--strength", "0.5"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn class_conditional_training_writes_classes_and_a_null_class() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let r = Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .args(["train", "--model-config"])
        .arg(common::data_path("tiny28/config.json"))
        .arg("--output")
        .arg(&out)
        .args([
            "--train-steps",
            "3",
            "--batch-size",
            "8",
            "--limit",
            "64",
            "--sample-every",
            "0",
        ])
        .args([
            "--num",
            "10",
            "--warmup",
            "1",
            "--device",
            "cpu",
            "--class-cond",
            "--cond-drop",
            "0.2",
        ])
        .current_dir(dir.path())
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", dir.path().join("hf"))
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let classes: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("classes.json")).unwrap()).unwrap();
    assert_eq!(classes["names"][7], "seven");
    assert_eq!(classes["null_class"], 10);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("unet/config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["num_class_embeds"], 11);
    assert!(out.join("samples/step_000003.png").is_file());
    let o = dir.path().join("s.png");
    let r = run(&[
        "sample",
        "--model",
        out.to_str().unwrap(),
        "--class",
        "all",
        "--guidance",
        "2",
        "-n",
        "10",
        "--steps",
        "2",
        "--device",
        "cpu",
        "-o",
        o.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let img = image::open(&o).unwrap();
    assert!(
        img.height() > img.width(),
        "ten rows of one: {}x{}",
        img.width(),
        img.height()
    );
    // --class-cond on a folder of unlabelled images is refused up front.
    let folder = dir.path().join("imgs");
    std::fs::create_dir_all(&folder).unwrap();
    let (c, msg) = common::one_line_failure(
        Command::new(env!("CARGO_BIN_EXE_diffuse"))
            .args([
                "train",
                "--dataset",
                folder.to_str().unwrap(),
                "--class-cond",
                "--device",
                "cpu",
            ])
            .arg("--output")
            .arg(dir.path().join("r2"))
            .output()
            .unwrap(),
        "folder class-cond",
    );
    assert!(c != 0 && !dir.path().join("r2").exists(), "{msg}");
}

#[test]
fn class_folders_train_a_class_conditional_model() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pets");
    for (class, shade) in [("dog", 200u8), ("cat", 40)] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for i in 0..8u8 {
            image::GrayImage::from_fn(30, 28, |x, _| {
                image::Luma([shade.wrapping_add(x as u8 + i)])
            })
            .save(data.join(class).join(format!("{i}.png")))
            .unwrap();
        }
    }
    let train = |out: &Path| {
        Command::new(env!("CARGO_BIN_EXE_diffuse"))
            .args(["train", "--model-config"])
            .arg(common::data_path("tiny28/config.json"))
            .arg("--dataset")
            .arg(&data)
            .args(["--train-steps", "2"])
            .args(["--batch-size", "8", "--sample-every", "0", "--num", "4"])
            .args(["--device", "cpu", "--class-cond"])
            .arg("--output")
            .arg(out)
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap()
    };
    let out = dir.path().join("run");
    let r = train(&out);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let classes: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("classes.json")).unwrap()).unwrap();
    assert_eq!(classes["names"], serde_json::json!(["cat", "dog"]));
    assert_eq!(classes["null_class"], 2);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("unet/config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["num_class_embeds"], 3);
    let o = dir.path().join("dog.png");
    let r = run(&[
        "sample",
        "--model",
        out.to_str().unwrap(),
        "--class",
        "dog",
        "-n",
        "2",
        "--steps",
        "2",
        "--device",
        "cpu",
        "-o",
        o.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // An image directly in the folder leaves it unlabelled: --class-cond is refused.
    std::fs::copy(data.join("cat/0.png"), data.join("loose.png")).unwrap();
    let bad = dir.path().join("bad");
    let (c, msg) = common::one_line_failure(train(&bad), "loose image");
    assert!(c != 0 && msg.contains("class subfolders"), "{msg}");
    assert!(!bad.exists());
}
