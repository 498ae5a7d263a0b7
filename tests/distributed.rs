//! Data-parallel training over MPI (built with `--features mpi`; `make test` runs it when
//! `mpirun` is installed): `mpirun -np 2` with one thread per rank computes the single-process
//! optimisation (losses and final weights within 1e-5 relative), resumes across 2 -> 1 and
//! 1 -> 2 ranks, stops every rank at one step on Ctrl-C with a checkpoint, leaves a readable
//! checkpoint when a rank is killed, and refuses a batch that does not divide in one line.
#![cfg(feature = "mpi")]
mod common;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_diffuse");

/// A tiny run; the learning rate is constant so runs of different lengths compare step by step.
fn train_args(out: &Path, steps: usize, extra: &[&str]) -> Vec<String> {
    let config = common::data_path("tiny28/config.json");
    let mut a: Vec<String> = ["train", "--model-config", config.to_str().unwrap(), "-o"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.push(out.display().to_string());
    if !extra.contains(&"--batch-size") {
        a.extend(["--batch-size".into(), "8".into()]);
    }
    let fixed =
        "--lr-schedule constant --limit 64 --log-every 1 --sample-every 0 --num 2 --device cpu";
    a.extend(fixed.split(' ').map(String::from));
    a.extend(["--train-steps".into(), steps.to_string()]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// One process, one thread.
fn single(out: &Path, steps: usize, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(train_args(out, steps, extra))
        .env("RAYON_NUM_THREADS", "1")
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("RUST_LOG");
    c
}

/// `np` ranks of one thread each under mpirun, given 10 s between SIGTERM and SIGKILL when
/// the job is stopped (Open MPI's default, 1 s, is shorter than a large model's checkpoint).
fn mpirun(np: usize, out: &Path, steps: usize, extra: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        &np.to_string(),
    ])
    .args(["--mca", "odls_base_sigkill_timeout", "10"])
    .args(["-x", "RAYON_NUM_THREADS=1", "-x", "HF_HUB_OFFLINE=1", BIN])
    .args(train_args(out, steps, extra))
    .env_remove("RUST_LOG");
    c
}

fn ok(mut c: Command) -> Output {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        c,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every EMA weight of the exported model, in name order.
fn weights(out: &Path) -> Vec<f32> {
    let w = candle_core::safetensors::load(
        out.join("unet/diffusion_pytorch_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut names: Vec<&String> = w.keys().collect();
    names.sort();
    names
        .iter()
        .flat_map(|n| w[*n].flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

/// The same optimisation: losses within 1e-5 relative each, weights within 1e-5 of the
/// largest weight.
fn assert_same_run(a: &Path, b: &Path) {
    let (la, lb) = (common::losses(a), common::losses(b));
    assert_eq!(la.len(), lb.len());
    let worst = la
        .iter()
        .zip(&lb)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs() / x.abs()));
    println!("worst relative loss difference {worst:.2e}");
    for (s, (x, y)) in la.iter().zip(&lb).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 * x.abs(),
            "step {}: {x} vs {y}",
            s + 1
        );
    }
    let (wa, wb) = (weights(a), weights(b));
    assert_eq!(wa.len(), wb.len());
    let scale = wa.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = wa
        .iter()
        .zip(&wb)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    println!("max weight difference {diff:.2e} (largest weight {scale:.3})");
    assert!(diff <= 1e-5 * scale, "{diff} vs {scale}");
}

#[test]
fn two_ranks_compute_the_single_process_run_and_resume_across_world_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    ok(single(&one, 30, &[]));
    let out = ok(mpirun(2, &two, 30, &[]));
    assert_same_run(&one, &two);
    // Rank 0 speaks for the job: one summary line, with the communication per step.
    let stdout = String::from_utf8(out.stdout).unwrap();
    let summaries: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("trained to"))
        .collect();
    assert_eq!(summaries.len(), 1, "{stdout}");
    assert!(
        summaries[0].contains("(2 processes; communication "),
        "{stdout}"
    );

    // 2 ranks for 15 steps, then 1 to 30; and the other way round.
    let (a, b) = (dir.path().join("2to1"), dir.path().join("1to2"));
    ok(mpirun(2, &a, 15, &[]));
    ok(single(&a, 30, &["--resume"]));
    assert_same_run(&one, &a);
    ok(single(&b, 15, &[]));
    ok(mpirun(2, &b, 30, &["--resume"]));
    assert_same_run(&one, &b);
}

#[test]
fn a_batch_that_does_not_divide_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-np", "2", BIN])
        .args(train_args(&dir.path().join("x"), 4, &["--batch-size", "7"]))
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("RUST_LOG");
    let out = c.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(
        lines,
        ["error: --batch-size 7 does not divide among 2 processes (it is the global batch)"],
        "{err}"
    );
    assert!(!dir.path().join("x").exists());
}

/// Start a long run of 2 ranks in its own process group; wait until it has logged `rows`.
fn long_run(out: &Path, rows: usize) -> std::process::Child {
    let mut c = mpirun(2, out, 100_000, &["--checkpoint-every", "5"]);
    c.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = c.spawn().unwrap();
    let t0 = Instant::now();
    while std::fs::read_to_string(out.join("loss.csv"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
        <= rows
        || !out.join("training_state.safetensors").exists()
    {
        assert!(t0.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn wait(mut child: std::process::Child) -> (Option<i32>, String) {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return (s.code(), err);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the job did not end"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The step of the run's checkpoint, after resuming it for one step more in one process.
fn resumes_from(out: &Path) -> usize {
    let bytes = std::fs::read(out.join("training_state.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let step: usize = meta.metadata().as_ref().unwrap()["step"].parse().unwrap();
    ok(single(out, step + 1, &["--resume"]));
    let l = common::losses(out);
    assert_eq!(l.len(), step + 1);
    assert!(l.iter().all(|x| x.is_finite()));
    step
}

#[test]
fn ctrl_c_stops_every_rank_at_one_step_and_a_killed_rank_leaves_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    // Ctrl-C at a terminal reaches mpirun's process group; mpirun passes SIGTERM to every
    // rank, which stop at the same step; rank 0 writes the checkpoint there.
    let out = dir.path().join("int");
    let child = long_run(&out, 20);
    let pg = child.id().to_string();
    Command::new("kill")
        .args(["-s", "INT", "--", &format!("-{pg}")])
        .status()
        .unwrap();
    let (code, err) = wait(child);
    assert_ne!(code, Some(0), "{err}");
    assert_eq!(
        err.lines()
            .filter(|l| l.starts_with("interrupted at step"))
            .count(),
        1,
        "{err}"
    );
    let step = resumes_from(&out);
    assert!(
        err.contains(&format!("interrupted at step {step} ")),
        "{err}"
    );

    // A rank killed outright: the job ends, and the last checkpoint (every 5 steps) loads.
    let out = dir.path().join("kill");
    let child = long_run(&out, 20);
    let ranks = Command::new("pgrep")
        .args(["-P", &child.id().to_string()])
        .output()
        .unwrap();
    let ranks = String::from_utf8(ranks.stdout).unwrap();
    let victim = ranks
        .lines()
        .last()
        .expect("a rank process")
        .trim()
        .to_string();
    Command::new("kill")
        .args(["-KILL", &victim])
        .status()
        .unwrap();
    let (code, err) = wait(child);
    assert_ne!(code, Some(0), "{err}");
    let step = resumes_from(&out);
    assert!(step >= 5 && step.is_multiple_of(5), "{step}");
}
