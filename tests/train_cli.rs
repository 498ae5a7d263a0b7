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
