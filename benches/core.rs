//! `make bench`: medians over repeats, with ratios against bounds measured in the same run
//! (a plain copy of the same bytes) and, when PEER_PYTHON points at a venv with torch and
//! diffusers, against PyTorch on this machine (../shared/bench/peer_bench.py).
use candle_core::{Device, Tensor};
use diffuse::core::forward::ForwardProcess;
use diffuse::core::rng::NoiseRng;
use diffuse::core::schedule::{BetaSchedule, Schedule};
use std::collections::HashMap;
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Median seconds per call: each of `repeats` samples loops enough calls to last ~`min_s`.
fn time<F: FnMut()>(mut f: F, repeats: usize, min_s: f64) -> f64 {
    f();
    f();
    let t0 = Instant::now();
    f();
    let one = t0.elapsed().as_secs_f64().max(1e-9);
    let n = ((min_s / one) as usize).max(1);
    let mut v: Vec<f64> = (0..repeats)
        .map(|_| {
            let t0 = Instant::now();
            for _ in 0..n {
                f();
            }
            t0.elapsed().as_secs_f64() / n as f64
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// PyTorch figures from peer_bench.py section a, keyed by its record names.
fn torch_peer() -> HashMap<String, f64> {
    let Ok(py) = std::env::var("PEER_PYTHON") else {
        return HashMap::new();
    };
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bench/peer_bench.py");
    let out = std::env::temp_dir().join("diffuse-peer-a.json");
    let _ = std::fs::remove_file(&out);
    let ok = std::process::Command::new(&py)
        .arg(&script)
        .args(["--only", "a", "--out"])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("PEER_PYTHON={py}: peer_bench.py failed; PyTorch columns left empty");
        return HashMap::new();
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap_or_default())
            .unwrap_or_default();
    let mut m = HashMap::new();
    if let Some(a) = v["sections"]["a"].as_object() {
        for (k, r) in a {
            if let Some(s) = r["median_s"].as_f64() {
                m.insert(k.clone(), s);
            }
        }
    }
    m
}

fn main() {
    diffuse::runtime::init();
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let (repeats, min_s) = if quick { (3, 0.05) } else { (9, 0.25) };
    println!(
        "diffuse bench: {} threads (rayon), medians of {repeats} repeats",
        rayon::current_num_threads()
    );
    let peer = torch_peer();
    let dev = Device::Cpu;
    let fp =
        ForwardProcess::new(Schedule::named(BetaSchedule::Linear, 1000).unwrap(), &dev).unwrap();

    println!("\n## Forward noising q_sample (f32, CPU)\n");
    println!("| shape | op | median ms | Melem/s | out GB/s | x copy | PyTorch ms | speedup vs PyTorch |");
    println!("|---|---|---|---|---|---|---|---|");
    for shape in [(256usize, 1usize, 28usize, 28usize), (64, 3, 64, 64)] {
        let (b, c, h, w) = shape;
        let n = b * c * h * w;
        let tag = format!("{b}x{c}x{h}x{w}");
        let mut rng = NoiseRng::new(0);
        let x0 = rng.randn(shape, &dev).unwrap();
        let eps = rng.randn(shape, &dev).unwrap();
        let t: Vec<u32> = rng
            .uniform_below(b, 1000)
            .iter()
            .map(|t| *t as u32)
            .collect();
        let t = Tensor::from_vec(t, b, &dev).unwrap();
        let src = vec![1f32; n];
        let mut dst = vec![0f32; n];
        let copy = time(
            || {
                dst.copy_from_slice(std::hint::black_box(&src));
                std::hint::black_box(&dst);
            },
            repeats,
            min_s,
        );
        let given = time(|| drop(fp.q_sample(&x0, &t, &eps).unwrap()), repeats, min_s);
        let mut r2 = NoiseRng::new(1);
        let inside = time(
            || drop(fp.q_sample_noise(&x0, &t, &mut r2).unwrap()),
            repeats,
            min_s,
        );
        let mut r3 = NoiseRng::new(2);
        let randn = time(|| drop(r3.normal_vec(n)), repeats, min_s);
        let composite = time(
            || {
                let a = fp.sqrt_alpha_bar(&t, &x0).unwrap();
                let s = fp.sqrt_one_minus_alpha_bar(&t, &x0).unwrap();
                drop((x0.broadcast_mul(&a).unwrap() + eps.broadcast_mul(&s).unwrap()).unwrap());
            },
            repeats,
            min_s,
        );
        let rows = [
            ("plain copy (bound)", copy, None),
            (
                "q_sample, noise given (fused)",
                given,
                Some("closed_form(noise given)"),
            ),
            (
                "q_sample, noise drawn inside (fused)",
                inside,
                Some("closed_form+randn"),
            ),
            ("Gaussian noise only (ours)", randn, Some("randn_like only")),
            (
                "q_sample, Candle composite ops",
                composite,
                Some("closed_form(noise given)"),
            ),
        ];
        for (name, s, peer_key) in rows {
            let pt = peer_key.and_then(|k| peer.get(&format!("{tag} {k}")).copied());
            println!(
                "| {tag} | {name} | {:.3} | {:.0} | {:.1} | {:.2} | {} | {} |",
                s * 1e3,
                n as f64 / s / 1e6,
                n as f64 * 4.0 / s / 1e9,
                s / copy,
                pt.map(|p| format!("{:.3}", p * 1e3))
                    .unwrap_or_else(|| "-".into()),
                pt.map(|p| format!("{:.2}x", p / s))
                    .unwrap_or_else(|| "-".into()),
            );
        }
    }

    println!("\n## Closed form vs step-by-step chain to t = 999 ([64,1,28,28])\n");
    let x0 = NoiseRng::new(9).randn((64, 1, 28, 28), &dev).unwrap();
    let t = Tensor::from_vec(vec![999u32; 64], 64, &dev).unwrap();
    let mut r = NoiseRng::new(4);
    let closed = time(
        || drop(fp.q_sample_noise(&x0, &t, &mut r).unwrap()),
        repeats,
        min_s,
    );
    let chain = time(
        || drop(fp.markov_chain(&x0, 999, &mut r).unwrap()),
        3.min(repeats),
        0.0,
    );
    println!("| closed form ms | 1000-step chain ms | speedup |\n|---|---|---|");
    println!(
        "| {:.3} | {:.1} | {:.0}x |",
        closed * 1e3,
        chain * 1e3,
        chain / closed
    );
}
