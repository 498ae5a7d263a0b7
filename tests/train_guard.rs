//! `diffuse train` and its output directory: no silent replacement of an earlier run, a
//! `--resume` that checks the settings it continues, failures before the first step and
//! without leftovers, and progress lines and a summary when stderr is not a terminal.
mod common;
use assert_cmd::Command;
use std::path::Path;

/// A tiny run (tiny28 model, 64 bundled digits, batch 8) into `out`, from a working directory
/// without data/, offline.
fn train(out: &Path, steps: usize, extra: &[&str]) -> Command {
    let mut c = Command::cargo_bin("diffuse").unwrap();
    c.env_remove("RUST_LOG")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", out.with_extension("hf"))
        .current_dir(out.parent().unwrap())
        .arg("train")
        .arg("--model-config")
        .arg(common::data_path("tiny28/config.json"))
        .arg("-o")
        .arg(out)
        .args([
            "--train-steps",
            &steps.to_string(),
            "--batch-size",
            "8",
            "--limit",
            "64",
            "--num",
            "4",
            "--sample-every",
            "0",
            "--checkpoint-every",
            "2",
            "--log-every",
            "1",
            "--device",
            "cpu",
        ])
        .args(extra);
    c
}

fn fails(mut c: Command, code: i32, needles: &[&str]) -> String {
    let (got, err) = common::one_line_failure(c.output().unwrap(), "train");
    assert_eq!(got, code, "{err}");
    for n in needles {
        assert!(err.contains(n), "expected '{n}' in {err}");
    }
    err
}

#[test]
fn an_earlier_run_needs_resume_or_force() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    train(&out, 2, &[]).assert().success();
    let stale = out.join("samples/step_999999.png");
    std::fs::write(&stale, "old grid").unwrap();
    let mine = out.join("notes.txt");
    std::fs::write(&mine, "kept").unwrap();
    let before = common::snapshot(&out);
    fails(
        train(&out, 2, &[]),
        2,
        &["earlier run", "--resume", "--force"],
    );
    assert_eq!(before, common::snapshot(&out));
    // --force: the old run's files go (the stale grid too), other files stay.
    train(&out, 2, &["--force"]).assert().success();
    assert!(!stale.exists());
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "kept");
    assert!(out.join("samples/step_000002.png").is_file());
    assert!(out
        .join("unet/diffusion_pytorch_model.safetensors")
        .is_file());
}

#[test]
fn resume_refuses_changed_settings_and_allows_lr_and_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    train(&out, 2, &[]).assert().success();
    let before = common::snapshot(&out);
    let err = fails(
        train(
            &out,
            4,
            &["--resume", "--seed", "1", "--schedule", "cosine"],
        ),
        2,
        &["--resume", "seed 0 (now 1)", "schedule"],
    );
    assert!(!err.contains("lr"), "{err}");
    fails(
        train(&out, 4, &["--resume", "--ema-decay", "0.9"]),
        2,
        &["ema_decay 0.999 (now 0.9)"],
    );
    fails(
        train(&out, 4, &["--resume", "--timesteps", "500"]),
        2,
        &["timesteps"],
    );
    assert_eq!(before, common::snapshot(&out));
    let ok = train(&out, 4, &["--resume", "--lr", "5e-4"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let csv = std::fs::read_to_string(out.join("loss.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    // --resume into an empty directory starts fresh; into one without a checkpoint fails.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(other.join("samples")).unwrap();
    fails(train(&other, 2, &["--resume"]), 2, &["no training_state"]);
}

#[test]
fn failures_come_before_the_first_step_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    // A bad dataset: the output directory is never created.
    let out = tmp.path().join("never");
    fails(
        train(&out, 2, &["--dataset", "/no/such/folder"]),
        1,
        &["/no/such/folder", "no such folder"],
    );
    assert!(!out.exists());
    // A training state that is a directory: said before any step.
    let out = tmp.path().join("statedir");
    std::fs::create_dir_all(out.join("training_state.safetensors")).unwrap();
    std::fs::create_dir_all(out.join("samples")).unwrap();
    let before = common::snapshot(&out);
    fails(
        train(&out, 2, &["--resume"]),
        1,
        &["training_state.safetensors"],
    );
    assert_eq!(before, common::snapshot(&out));
    // T = 1: the sample grids use DDIM with at most T steps, so the run completes.
    let out = tmp.path().join("t1");
    train(&out, 2, &["--timesteps", "1"]).assert().success();
    let grid = image::open(out.join("samples/step_000002.png")).unwrap();
    assert!(grid.width() >= 256);
}

#[test]
fn progress_lines_and_summary_without_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = train(&out, 4, &[])
        .env("DIFFUSE_LOG_SECS", "0")
        .output()
        .unwrap();
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let steps: Vec<&str> = err.lines().filter(|l| l.contains("train: step ")).collect();
    assert!(steps.len() >= 2, "{err}");
    assert!(
        steps[0].contains("/4") && steps[0].contains("ETA") && steps[0].contains("loss"),
        "{}",
        steps[0]
    );
    assert!(err.contains("sampling 4 images"), "{err}");
    assert!(err.contains("step_000004.png in"), "{err}");
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(
        summary.starts_with("trained to step 4 in ")
            && summary.contains("final loss")
            && summary.contains(out.to_str().unwrap()),
        "{summary}"
    );
}
