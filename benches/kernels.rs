//! `cargo bench --bench kernels`: per-op medians of our CPU kernels and the Candle expressions
//! they replace, measured in the same run (ratios, not absolute times: the machine is shared),
//! and PyTorch's when PEER_PYTHON points at a python with torch (../shared/bench/
//! torch_ops_bench.py, 2 threads). Shapes are the small MNIST UNet's, batch 64.
use candle_core::{Device, Tensor, Var};
use diffuse::core::rng::NoiseRng;
use diffuse::kernels::{self, conv, reference};
use std::collections::HashMap;
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const REPEATS: usize = 15;
const MIN_S: f64 = 0.05;

/// Calls per sample so that one sample lasts ~MIN_S.
fn calls_per_sample(f: &mut dyn FnMut()) -> usize {
    f();
    let t0 = Instant::now();
    f();
    ((MIN_S / t0.elapsed().as_secs_f64().max(1e-9)) as usize).max(1)
}

fn sample_ms(f: &mut dyn FnMut(), n: usize) -> f64 {
    let t0 = Instant::now();
    for _ in 0..n {
        f();
    }
    t0.elapsed().as_secs_f64() * 1e3 / n as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Median ms per call of each of `fs`, with their samples interleaved so that a burst of load
/// from other processes hits all of them alike (the machine is shared).
fn time_ms(fs: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    let ns: Vec<usize> = fs.iter_mut().map(|f| calls_per_sample(*f)).collect();
    let mut samples = vec![Vec::new(); fs.len()];
    for _ in 0..REPEATS {
        for ((f, &n), s) in fs.iter_mut().zip(&ns).zip(&mut samples) {
            s.push(sample_ms(*f, n));
        }
    }
    samples.into_iter().map(median).collect()
}

/// torch_ops_bench.py's medians for one section ("conv", "norm", "attn"), keyed by "op shape".
fn torch_peer(section: &str) -> HashMap<String, f64> {
    let Ok(py) = std::env::var("PEER_PYTHON") else {
        return HashMap::new();
    };
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bench/torch_ops_bench.py");
    // Same thread count as ours: RAYON_NUM_THREADS (which Candle also reads), else 2.
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "2".into());
    let mut cmd = std::process::Command::new(&py);
    // glibc keeps freed blocks (up to 32 MiB each) instead of handing back and re-faulting
    // pages, as mimalloc does for us: without it PyTorch's group norm fwd+bwd read 2-10 ms
    // instead of 0.35 when its section ran alone. The reading most favourable to PyTorch.
    for (k, v) in [
        ("MALLOC_MMAP_THRESHOLD_", "33554432"),
        ("MALLOC_TRIM_THRESHOLD_", "4294967295"),
    ] {
        if std::env::var_os(k).is_none() {
            cmd.env(k, v);
        }
    }
    let out = cmd
        .env("TORCH_THREADS", threads)
        .arg(&script)
        .arg(section)
        .stderr(std::process::Stdio::null())
        .output();
    let Some(out) = out.ok().filter(|o| o.status.success()) else {
        eprintln!("PEER_PYTHON={py}: torch_ops_bench.py failed; PyTorch column left empty");
        return HashMap::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let key = format!("{} {}", v["op"].as_str()?, v["shape"].as_str()?);
            Some((key, v["median_ms"].as_f64()?))
        })
        .collect()
}

fn randn(seed: u64, shape: &[usize]) -> Tensor {
    NoiseRng::new(seed)
        .randn(shape.to_vec(), &Device::Cpu)
        .unwrap()
}

/// Forward then backward of sum(f(x..) * g), as torch_ops_bench.py's `*_fwdbwd` does.
fn fwd_bwd(vars: &[Var], g: &Tensor, f: &dyn Fn(&[Tensor]) -> Tensor) {
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts);
    (&y * g).unwrap().sum_all().unwrap().backward().unwrap();
}

/// Our rows of one section, printed once PyTorch has run before and after them.
#[derive(Default)]
struct Table {
    rows: std::cell::RefCell<Vec<Row>>,
}

/// op, shape, our median, Candle's median.
type Row = (String, String, f64, Option<f64>);

/// One section of the benchmark.
type Section = (&'static str, fn(&Table));

impl Table {
    fn row(&self, op: &str, shape: &str, ours: f64, candle: Option<f64>) {
        self.rows
            .borrow_mut()
            .push((op.into(), shape.into(), ours, candle));
    }

    /// Print the rows against PyTorch's medians from the runs just before and just after
    /// ours (the shared machine drifts by 10-30% over minutes); the ratio is taken against
    /// the faster of the two, the reading least favourable to us.
    fn flush(&self, before: &HashMap<String, f64>, after: &HashMap<String, f64>) {
        let cell = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}"));
        for (op, shape, ours, candle) in self.rows.borrow_mut().drain(..) {
            let key = format!("{op} {shape}");
            let (b, a) = (before.get(&key).copied(), after.get(&key).copied());
            let torch = match (b, a) {
                (Some(b), Some(a)) => Some(b.min(a)),
                (b, a) => b.or(a),
            };
            let ratio = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.2}x", v / ours));
            println!(
                "| {op} | {shape} | {ours:.3} | {} | {} / {} | {} | {} |",
                cell(candle),
                cell(b),
                cell(a),
                ratio(candle),
                ratio(torch)
            );
        }
    }
}

fn bench_conv(t: &Table) {
    for &(b, ci, hw, co) in &[
        (64, 32, 28, 32),
        (64, 64, 14, 64),
        (64, 64, 7, 64),
        (64, 1, 28, 32),
    ] {
        let shape = format!("{b}x{ci}x{hw}x{hw}->{co}");
        let x = randn(1, &[b, ci, hw, hw]);
        let w = (randn(2, &[co, ci, 3, 3]) * 0.1).unwrap();
        let g = randn(3, &[b, co, hw, hw]);
        let vars = [Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap()];
        let ours = |t: &[Tensor]| kernels::conv2d(&t[0], &t[1], None, 1, 1).unwrap();
        let cand = |t: &[Tensor]| reference::conv2d(&t[0], &t[1], None, 1, 1).unwrap();
        let m = time_ms(&mut [
            &mut || drop(kernels::conv2d(&x, &w, None, 1, 1).unwrap()),
            &mut || drop(reference::conv2d(&x, &w, None, 1, 1).unwrap()),
            &mut || fwd_bwd(&vars, &g, &ours),
            &mut || fwd_bwd(&vars, &g, &cand),
            &mut || drop(conv::conv2d_grad_input(&g, &w, (hw, hw), 1, 1).unwrap()),
            &mut || drop(conv::conv2d_grad_weight(&x, &g, (3, 3), 1, 1).unwrap()),
        ]);
        t.row("conv_fwd", &shape, m[0], Some(m[1]));
        t.row("conv_fwdbwd", &shape, m[2], Some(m[3]));
        t.row("conv_bwd_input", &shape, m[4], None);
        t.row("conv_bwd_weight", &shape, m[5], None);
    }
}

fn bench_norm(t: &Table) {
    let dims = [64, 64, 14, 14];
    let shape = "64x64x14x14";
    let x = randn(1, &dims);
    let g = randn(2, &dims);
    let gamma = Tensor::ones(64, candle_core::DType::F32, &Device::Cpu).unwrap();
    let beta = Tensor::zeros(64, candle_core::DType::F32, &Device::Cpu).unwrap();
    let vars: Vec<Var> = [&x, &gamma, &beta]
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ours = |t: &[Tensor]| kernels::group_norm(&t[0], 8, &t[1], &t[2], 1e-5).unwrap();
    let cand = |t: &[Tensor]| reference::group_norm(&t[0], 8, &t[1], &t[2], 1e-5).unwrap();
    let m = time_ms(&mut [
        &mut || drop(kernels::group_norm(&x, 8, &gamma, &beta, 1e-5).unwrap()),
        &mut || drop(reference::group_norm(&x, 8, &gamma, &beta, 1e-5).unwrap()),
        &mut || fwd_bwd(&vars, &g, &ours),
        &mut || fwd_bwd(&vars, &g, &cand),
    ]);
    t.row("groupnorm_fwd", shape, m[0], Some(m[1]));
    t.row("groupnorm_fwdbwd", shape, m[2], Some(m[3]));
    let ours = |t: &[Tensor]| kernels::group_norm_silu(&t[0], 8, &t[1], &t[2], 1e-5).unwrap();
    let cand = |t: &[Tensor]| reference::group_norm_silu(&t[0], 8, &t[1], &t[2], 1e-5).unwrap();
    let split = |t: &[Tensor]| {
        kernels::silu(&kernels::group_norm(&t[0], 8, &t[1], &t[2], 1e-5).unwrap()).unwrap()
    };
    let m = time_ms(&mut [
        &mut || fwd_bwd(&vars, &g, &ours),
        &mut || fwd_bwd(&vars, &g, &cand),
        &mut || fwd_bwd(&vars, &g, &split),
    ]);
    t.row("groupnorm_silu_fwdbwd", shape, m[0], Some(m[1]));
    t.row(
        "groupnorm_then_silu_fwdbwd (ours, unfused)",
        shape,
        m[2],
        None,
    );

    let xv = [Var::from_tensor(&x).unwrap()];
    let m = time_ms(&mut [
        &mut || drop(kernels::silu(&x).unwrap()),
        &mut || drop(reference::silu(&x).unwrap()),
        &mut || fwd_bwd(&xv, &g, &|t| kernels::silu(&t[0]).unwrap()),
        &mut || fwd_bwd(&xv, &g, &|t| reference::silu(&t[0]).unwrap()),
        // The loss wrapper sum(y * g) and its backward, included in every *_fwdbwd row.
        &mut || fwd_bwd(&xv, &g, &|t| t[0].clone()),
    ]);
    t.row("silu_fwd", shape, m[0], Some(m[1]));
    t.row("silu_fwdbwd", shape, m[2], Some(m[3]));
    t.row("lossgrad_wrapper_fwdbwd", shape, m[4], None);
}

fn bench_attn(t: &Table) {
    for n in [49, 196] {
        let (b, d) = (64, 64);
        let shape = format!("{b}x{n}x{d}");
        let scale = 1.0 / (d as f64).sqrt();
        let qkv: Vec<Var> = (0..3)
            .map(|i| Var::from_tensor(&randn(10 + i, &[b, n, d])).unwrap())
            .collect();
        let g = randn(20, &[b, n, d]);
        // Ours is the fused op on the UNet's channels-first operands q^T, k^T, v^T [b, d, n]
        // (the same computation; PyTorch and Candle take [b, n, d]).
        let qkv_t: Vec<Var> = (0..3)
            .map(|i| Var::from_tensor(&randn(10 + i, &[b, d, n])).unwrap())
            .collect();
        let g_t = randn(20, &[b, d, n]);
        let ours =
            |t: &[Tensor]| kernels::attention_channels_first(&t[0], &t[1], &t[2], scale).unwrap();
        let cand = |t: &[Tensor]| reference::attention(&t[0], &t[1], &t[2], scale).unwrap();
        let (qt, q) = (
            qkv_t
                .iter()
                .map(|v| v.as_tensor().clone())
                .collect::<Vec<_>>(),
            qkv.iter()
                .map(|v| v.as_tensor().clone())
                .collect::<Vec<_>>(),
        );
        let m = time_ms(&mut [
            &mut || fwd_bwd(&qkv_t, &g_t, &ours),
            &mut || fwd_bwd(&qkv, &g, &cand),
            &mut || drop(ours(&qt)),
            &mut || drop(cand(&q)),
        ]);
        t.row("attn_fwd", &shape, m[2], Some(m[3]));
        t.row("attn_fwdbwd", &shape, m[0], Some(m[1]));
        let s = Var::from_tensor(&randn(30, &[b, n, n])).unwrap();
        let gs = randn(31, &[b, n, n]);
        let m = time_ms(&mut [
            &mut || {
                fwd_bwd(std::slice::from_ref(&s), &gs, &|t| {
                    kernels::softmax_last_dim(&t[0]).unwrap()
                })
            },
            &mut || {
                fwd_bwd(std::slice::from_ref(&s), &gs, &|t| {
                    reference::softmax_last_dim(&t[0]).unwrap()
                })
            },
        ]);
        t.row("softmax_fwdbwd", &format!("{b}x{n}x{n}"), m[0], Some(m[1]));
    }
}

fn bench_upsample(t: &Table) {
    let x = Var::from_tensor(&randn(1, &[64, 64, 7, 7])).unwrap();
    let g = randn(2, &[64, 64, 14, 14]);
    let xs = std::slice::from_ref(&x);
    let m = time_ms(&mut [
        &mut || fwd_bwd(xs, &g, &|t| kernels::upsample_nearest2x(&t[0]).unwrap()),
        &mut || fwd_bwd(xs, &g, &|t| reference::upsample_nearest2x(&t[0]).unwrap()),
    ]);
    t.row("upsample2x_fwdbwd", "64x64x7x7", m[0], Some(m[1]));
}

fn main() {
    diffuse::runtime::init();
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let t = Table::default();
    println!(
        "f32 CPU, {} rayon threads; medians in ms; speedup = other / ours",
        rayon::current_num_threads()
    );
    println!(
        "| op | shape | ours | Candle 0.11.1 | PyTorch before / after ours | vs Candle | vs PyTorch (faster run) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let on = |g: &str| only.is_empty() || only.iter().any(|o| o == g);
    let sections: [Section; 4] = [
        ("conv", bench_conv),
        ("norm", bench_norm),
        ("attn", bench_attn),
        ("upsample", bench_upsample),
    ];
    for (name, run) in sections {
        if !on(name) {
            continue;
        }
        // torch_ops_bench.py has no upsample section.
        let peer = |n: &str| {
            if n == "upsample" {
                HashMap::new()
            } else {
                torch_peer(n)
            }
        };
        let before = peer(name);
        run(&t);
        let after = peer(name);
        t.flush(&before, &after);
    }
}
