//! UNet2DModel (mnist preset, batch 64, CPU): forward without grad and a full training step
//! (forward + backward + AdamW), images/s from the median of repeats, peak RSS (VmHWM), and a
//! rough time share per op type. With PEER_PYTHON pointing at a venv with torch + diffusers,
//! PyTorch's figures for the same architecture (../shared/bench/peer_bench.py sections c, d).
//!
//! `cargo bench --bench unet [-- --quick]`
// The same allocator as the `diffuse` binary, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::{DType, Device, Tensor};
use diffuse::core::forward::ForwardProcess;
use diffuse::core::rng::NoiseRng;
use diffuse::core::schedule::{BetaSchedule, Schedule};
use diffuse::train;
use diffuse::train::optim::{AdamW, AdamWParams};
use diffuse::unet::{self, ops, UNetConfig};
use std::time::{Duration, Instant};

const BATCH: usize = 64;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn vm_hwm_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// PyTorch+diffusers on a UNet2DModel of the same config.json (benches/peer_unet.py), one
/// process per mode: (median seconds, peak RSS MiB) for "train" and "forward".
/// With `tuned`, glibc keeps freed memory (MALLOC_MMAP_THRESHOLD_ = 32 MiB, no trimming), as
/// mimalloc does for us: PyTorch's best case on this machine (train step ~15% faster).
fn torch_peer(mode: &str, n: usize, tuned: bool) -> Option<(f64, f64)> {
    let py = std::env::var("PEER_PYTHON").ok()?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = std::process::Command::new(&py);
    if tuned {
        cmd.env("MALLOC_MMAP_THRESHOLD_", "33554432")
            .env("MALLOC_TRIM_THRESHOLD_", "4294967295");
    }
    let out = cmd
        .arg(root.join("benches/peer_unet.py"))
        .arg(root.join("models/mnist/config.json"))
        .args([mode, &n.to_string()])
        .output()
        .ok()
        .filter(|o| o.status.success());
    let Some(out) = out else {
        eprintln!("PEER_PYTHON={py}: peer_unet.py {mode} failed; PyTorch columns left empty");
        return None;
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some((v["median_s"].as_f64()?, v["peak_rss_mib"].as_f64()?))
}

/// Run a profiled pass three times and keep the op profile of the one whose result (its total
/// time first) is the median: a single pass had let one preempted op read 10x its time.
fn median_profile<T: PartialOrd>(
    mut run: impl FnMut() -> T,
) -> (T, Vec<(&'static str, Duration, usize)>) {
    let mut runs: Vec<_> = (0..3).map(|_| (run(), ops::take_profile())).collect();
    runs.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    runs.swap_remove(1)
}

fn print_shares(
    title: &str,
    prof: Vec<(&'static str, Duration, usize)>,
    total: f64,
    extra: &[(&str, f64)],
) {
    println!("\n{title} (median step {:.1} ms)\n", total * 1e3);
    println!("| part | ms | share | calls |");
    println!("|---|---|---|---|");
    let mut accounted = 0.0;
    for (name, d, n) in &prof {
        let s = d.as_secs_f64();
        accounted += s;
        println!(
            "| {name} | {:.1} | {:.0}% | {n} |",
            s * 1e3,
            100.0 * s / total
        );
    }
    for (name, s) in extra {
        accounted += s;
        println!("| {name} | {:.1} | {:.0}% | |", s * 1e3, 100.0 * s / total);
    }
    let rest = (total - accounted).max(0.0);
    println!(
        "| other (adds, cat, reshapes, loss) | {:.1} | {:.0}% | |",
        rest * 1e3,
        100.0 * rest / total
    );
}

fn main() {
    diffuse::runtime::init();
    let quick = std::env::args().any(|a| a == "--quick");
    let (fwd_reps, train_reps) = if quick { (3, 3) } else { (7, 5) };
    let dev = Device::Cpu;
    let cfg = UNetConfig::preset("mnist").unwrap();
    println!(
        "diffuse unet bench: mnist preset ({} params), batch {BATCH}, CPU, {} threads, medians of {fwd_reps} forward / {train_reps} train repeats",
        unet::param_count(&cfg).unwrap(),
        rayon::current_num_threads()
    );
    let (vm, model) = unet::init(&cfg, 0, &dev).unwrap();
    let frozen = unet::frozen(&cfg, &vm, &dev).unwrap();
    let fp =
        ForwardProcess::new(Schedule::named(BetaSchedule::Linear, 1000).unwrap(), &dev).unwrap();
    let mut rng = NoiseRng::new(1);
    let x0 = rng.randn((BATCH, 1, 28, 28), &dev).unwrap();
    let rss0 = vm_hwm_mib();

    // Forward, no autograd graph (detached weights), t = 500 as the peer does.
    let t500 = Tensor::full(500u32, BATCH, &dev).unwrap();
    for _ in 0..2 {
        frozen.forward(&x0, &t500, false).unwrap();
    }
    let fwd: Vec<f64> = (0..fwd_reps)
        .map(|_| {
            let t0 = Instant::now();
            frozen.forward(&x0, &t500, false).unwrap();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    let fwd_s = median(fwd);
    let rss_fwd = vm_hwm_mib();
    let (fwd_prof_total, fwd_prof) = median_profile(|| {
        ops::set_profiling(true);
        let t0 = Instant::now();
        frozen.forward(&x0, &t500, false).unwrap();
        let total = t0.elapsed().as_secs_f64();
        ops::set_profiling(false);
        total
    });

    // Training step: q_sample, forward (train), MSE to eps, backward, AdamW.
    // Our AdamW, as `diffuse train` runs it (fused on CPU), at the peer's lr and without
    // clipping (the peer does not clip either).
    let mut opt = AdamW::new(train::sorted_vars(&vm), AdamWParams::default()).unwrap();
    let mut step = |profile: bool| -> (f64, f64, f64, f64) {
        let t: Vec<u32> = rng
            .uniform_below(BATCH, 1000)
            .iter()
            .map(|&t| t as u32)
            .collect();
        let t = Tensor::from_vec(t, BATCH, &dev).unwrap();
        let eps = rng.randn((BATCH, 1, 28, 28), &dev).unwrap();
        let xt = fp.q_sample(&x0, &t, &eps).unwrap();
        ops::set_profiling(profile);
        let t0 = Instant::now();
        let pred = model.forward(&xt, &t, true).unwrap();
        let loss = (pred - &eps).unwrap().sqr().unwrap().mean_all().unwrap();
        let _ = loss
            .to_dtype(DType::F32)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let t_f = t0.elapsed().as_secs_f64();
        ops::set_profiling(false);
        let t1 = Instant::now();
        let grads = loss.backward().unwrap();
        let t_b = t1.elapsed().as_secs_f64();
        let t2 = Instant::now();
        opt.step(&grads, 1e-4, None).unwrap();
        let t_o = t2.elapsed().as_secs_f64();
        (t_f + t_b + t_o, t_f, t_b, t_o)
    };
    for _ in 0..2 {
        step(false);
    }
    let runs: Vec<(f64, f64, f64, f64)> = (0..train_reps).map(|_| step(false)).collect();
    let train_s = median(runs.iter().map(|r| r.0).collect());
    let opt_s = median(runs.iter().map(|r| r.3).collect());
    let bwd_s = median(runs.iter().map(|r| r.2).collect());
    let rss_train = vm_hwm_mib();
    let (parts, train_prof) = median_profile(|| step(true));
    let (p_total, _, p_bwd, p_opt) = parts;

    let (nt, nf) = if quick { (3, 3) } else { (8, 7) };
    let peer_train = torch_peer("train", nt, false);
    let peer_fwd = torch_peer("forward", nf, false);
    let tuned_train = torch_peer("train", nt, true);
    let tuned_fwd = torch_peer("forward", nf, true);
    let cell = |p: Option<(f64, f64)>| {
        p.map(|(s, _)| format!("{:.0} ({:.1} ms)", BATCH as f64 / s, s * 1e3))
            .unwrap_or("-".into())
    };
    let ratio = |ours: f64, p: Option<(f64, f64)>| {
        p.map(|(s, _)| format!("{:.2}x", s / ours))
            .unwrap_or("-".into())
    };

    println!("\n## UNet2DModel mnist preset, batch {BATCH}, CPU\n");
    println!("| measurement | ours images/s (median ms) | PyTorch+diffusers, glibc default | ours vs it | PyTorch+diffusers, glibc tuned | ours vs it |");
    println!("|---|---|---|---|---|---|");
    for (what, ours, peer, tuned) in [
        ("forward, no grad", fwd_s, peer_fwd, tuned_fwd),
        (
            "train step (fwd+bwd+AdamW)",
            train_s,
            peer_train,
            tuned_train,
        ),
    ] {
        println!(
            "| {what} | {:.0} ({:.1} ms) | {} | {} | {} | {} |",
            BATCH as f64 / ours,
            ours * 1e3,
            cell(peer),
            ratio(ours, peer),
            cell(tuned),
            ratio(ours, tuned)
        );
    }
    println!(
        "\npeak RSS (VmHWM): {rss0:.0} MiB after init, {rss_fwd:.0} MiB after forward, {rss_train:.0} MiB after training steps"
    );
    if let (Some((_, f)), Some((_, t))) = (peer_fwd, peer_train) {
        println!("PyTorch peak RSS (ru_maxrss, one process per mode): {f:.0} MiB forward, {t:.0} MiB training steps");
    }
    println!(
        "train step medians: backward {:.1} ms, AdamW {:.1} ms",
        bwd_s * 1e3,
        opt_s * 1e3
    );
    print_shares(
        "### Forward (no grad) time by op",
        fwd_prof,
        fwd_prof_total,
        &[],
    );
    print_shares(
        "### Train step time by op (forward ops timed in place; backward and optimizer as wholes)",
        train_prof,
        p_total,
        &[("backward (all ops)", p_bwd), ("AdamW step", p_opt)],
    );
    if peer_train.is_none() {
        println!(
            "\n(set PEER_PYTHON=/path/to/python with torch+diffusers for the PyTorch columns)"
        );
    }
    let _ = opt_s;
}
