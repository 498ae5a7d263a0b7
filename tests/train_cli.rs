//! `diffuse train` as a process: Ctrl-C (SIGINT) finishes the step, writes a checkpoint and
//! exits 130; `--resume` then continues to the same losses an uninterrupted run gets.
mod common;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn cmd(out: &std::path::Path, steps: usize, resume: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_diffuse"));
    c.args(["train", "--model-config"])
        .arg(common::data_path("tiny28/config.json"))
        .arg("--out")
        .arg(out)
        .args([
            "--steps",
            &steps.to_string(),
            "--batch-size",
            "8",
            "--limit",
            "64",
        ])
        .args([
            "--log-every",
            "1",
            "--checkpoint-every",
            "1000",
            "--sample-every",
            "0",
        ])
        .args(["--num-samples", "4", "--warmup", "5", "--device", "cpu"])
        // No data/ in the working directory: the bundled digits, offline.
        .current_dir(out)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", out.join("hf"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if resume {
        c.arg("--resume");
    }
    c
}

fn losses(out: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(out.join("loss.csv"))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .map(|l| l.split(',').take(2).collect::<Vec<_>>().join(","))
        .collect()
}

#[test]
fn sigint_checkpoints_and_resume_matches() {
    let steps = 60;
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let child = cmd(b.path(), steps, false).spawn().unwrap();
    let t0 = Instant::now();
    while losses(b.path()).len() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe_sigint(child.id());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stopped = losses(b.path()).len();
    assert!(stopped < steps, "interrupted before the end");
    assert!(b.path().join("training_state.safetensors").is_file());
    assert!(b
        .path()
        .join("unet/diffusion_pytorch_model.safetensors")
        .is_file());
    // Resume for the rest, and compare with an uninterrupted run of the same length.
    for (dir, resume) in [(b.path(), true), (a.path(), false)] {
        let out = cmd(dir, steps, resume).output().unwrap();
        assert!(
            out.status.success(),
            "resume={resume}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (la, lb) = (losses(a.path()), losses(b.path()));
    assert_eq!(la.len(), steps);
    assert_eq!(
        la, lb,
        "resumed after SIGINT at step {stopped}: losses differ"
    );
}

fn unsafe_sigint(pid: u32) {
    let ok = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// `--eval-every`: eval.csv gets a row per evaluation, loss.png a FID panel, best/ the model
/// of the lowest FID (a pipeline `sample` loads); resuming keeps the rows. Not digits: refused
/// before any training.
#[test]
fn eval_every_logs_scores_and_keeps_the_best() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let train = |steps: &str, resume: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_diffuse"));
        c.args(["train", "--model-config"])
            .arg(common::data_path("tiny28/config.json"))
            .arg("--output")
            .arg(&out)
            .args([
                "--train-steps",
                steps,
                "--batch-size",
                "8",
                "--limit",
                "2100",
            ])
            .args([
                "--sample-every",
                "0",
                "--num",
                "4",
                "--checkpoint-every",
                "4",
            ])
            .args(["--eval-every", "4", "--eval-num", "16", "--device", "cpu"])
            .current_dir(dir.path())
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_HOME", dir.path().join("hf"));
        if resume {
            c.arg("--resume");
        }
        let r = c.output().unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        String::from_utf8_lossy(&r.stderr).into_owned()
    };
    let log = train("8", false);
    assert!(log.contains("step 4: FID"), "{log}");
    let rows = |p: &std::path::Path| -> Vec<Vec<f64>> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
            .collect()
    };
    let r = rows(&out.join("eval.csv"));
    assert_eq!(
        r.iter().map(|x| x[0] as usize).collect::<Vec<_>>(),
        vec![4, 8]
    );
    assert!(r
        .iter()
        .all(|x| x.len() == 5 && x[1].is_finite() && x[1] >= 0.0));
    let png = image::open(out.join("loss.png")).unwrap();
    assert_eq!(
        (png.width(), png.height()),
        (900, 660),
        "loss and FID panels"
    );
    // best/ is a pipeline of the lowest FID so far.
    assert!(out
        .join("best/unet/diffusion_pytorch_model.safetensors")
        .is_file());
    let s = Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .args(["sample", "--model"])
        .arg(out.join("best"))
        .args(["-n", "2", "--steps", "2", "--device", "cpu", "-o"])
        .arg(dir.path().join("b.png"))
        .output()
        .unwrap();
    assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
    // Resuming to 12 steps keeps the two rows and adds a third.
    train("12", true);
    let r2 = rows(&out.join("eval.csv"));
    assert_eq!(r2.len(), 3);
    assert_eq!(r2[..2], r[..]);
    // A folder of unlabelled pictures: no classes to score with, refused before training.
    let pics = dir.path().join("pics");
    std::fs::create_dir_all(&pics).unwrap();
    for i in 0..4u8 {
        image::RgbImage::from_pixel(28, 28, image::Rgb([i * 40, 9, 9]))
            .save(pics.join(format!("{i}.png")))
            .unwrap();
    }
    let bad = dir.path().join("bad");
    let r = Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .args(["train", "--model-config"])
        .arg(common::data_path("tiny28/config.json"))
        .arg("--dataset")
        .arg(&pics)
        .args(["--batch-size", "2", "--eval-every", "5", "--device", "cpu"])
        .arg("--output")
        .arg(&bad)
        .output()
        .unwrap();
    let (c, msg) = common::one_line_failure(r, "eval-every on pictures");
    assert!(c == 2 && msg.contains("--eval-every"), "{msg}");
    assert!(!bad.exists());
}
