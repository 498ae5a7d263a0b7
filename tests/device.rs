//! The device check: the golden UNet, the forward process, whole sampler chains and 50
//! training steps on the device `DIFFUSE_TEST_DEVICE` names (default `cpu`, so `make test`
//! runs it as a dry run; `scripts/gpu-check.sh` runs it with `cuda`), each against diffusers'
//! golden outputs or against the same computation on the CPU.
mod common;
use candle_core::{Device, Tensor};
use common::{data_path, load_golden, max_abs_diff};
use diffuse::core::forward::ForwardProcess;
use diffuse::core::rng::NoiseRng;
use diffuse::core::schedule::{BetaSchedule, Schedule};
use diffuse::sampler::{build, run, PredictionType, SamplerKind, TimestepSpacing};
use diffuse::train::{train, Start, TrainConfig};
use std::sync::atomic::AtomicBool;

fn device() -> Device {
    let spec = std::env::var("DIFFUSE_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    let d = diffuse::device::parse_device(&spec).unwrap();
    println!("device {spec}: {d:?}");
    d
}

/// Runs `f` counting the hand-written CUDA kernels' launches: some on CUDA by default, none
/// with `DIFFUSE_CUDA_KERNELS=0` (Candle's own ops) or on other devices. Tests run one at a time here (`--test-threads 1` in the GPU check).
fn kernel_launches_checked<T>(dev: &Device, what: &str, f: impl FnOnce() -> T) -> T {
    let before = diffuse::kernels::cuda_kernel_launches();
    let out = f();
    let n = diffuse::kernels::cuda_kernel_launches() - before;
    let switched =
        dev.is_cuda() && std::env::var("DIFFUSE_CUDA_KERNELS").map_or(true, |v| v != "0");
    println!("{what}: {n} CUDA kernel launches (switch {switched})");
    if switched {
        assert!(
            n > 0,
            "{what}: no CUDA kernel ran on CUDA (DIFFUSE_CUDA_KERNELS unset or not 0)"
        );
    } else {
        assert_eq!(
            n, 0,
            "{what}: CUDA kernels ran with DIFFUSE_CUDA_KERNELS=0 or off CUDA"
        );
    }
    out
}

#[test]
fn golden_unets_on_the_device() {
    let dev = device();
    for name in ["unet_tiny", "unet_class"] {
        let (_, _, model) = diffuse::unet::load(&data_path(name), &dev).unwrap();
        let io = load_golden(&format!("{name}/io.safetensors"));
        let on = |k: &str| io[k].to_device(&dev).unwrap();
        let labels = io.get("class_labels").map(|_| on("class_labels"));
        let y = kernel_launches_checked(&dev, name, || {
            model
                .forward_cond(&on("x"), &on("timesteps"), labels.as_ref(), false)
                .unwrap()
        });
        let d = max_abs_diff(&y.to_device(&Device::Cpu).unwrap(), &io["output"]);
        println!("{name} output on {dev:?}: max abs err {d:.3e} (tolerance 1e-4)");
        assert!(d < 1e-4, "{name}: {d}");
    }
}

#[test]
fn q_sample_on_the_device_equals_the_cpu() {
    let dev = device();
    let schedule = Schedule::named(BetaSchedule::Cosine, 1000).unwrap();
    let mut rng = NoiseRng::new(3);
    let x0 = rng.randn((16, 3, 32, 32), &Device::Cpu).unwrap();
    let eps = rng.randn((16, 3, 32, 32), &Device::Cpu).unwrap();
    let ts: Vec<u32> = (0..16).map(|i| i * 66).collect();
    let on = |d: &Device| {
        let fp = ForwardProcess::new(schedule.clone(), d).unwrap();
        let t = fp.timesteps_tensor(&ts).unwrap();
        fp.q_sample(&x0.to_device(d).unwrap(), &t, &eps.to_device(d).unwrap())
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap()
    };
    let d = max_abs_diff(&on(&dev), &on(&Device::Cpu));
    println!("q_sample {dev:?} vs CPU: max abs diff {d:.3e} (tolerance 1e-6)");
    assert!(d < 1e-6, "{d}");
}

#[test]
fn golden_sampler_chains_on_the_device() {
    let dev = device();
    let g = load_golden("sampler_chains.safetensors");
    let x_t = g["x_T"].to_device(&dev).unwrap();
    let m: Vec<f32> = g["m"].flatten_all().unwrap().to_vec1().unwrap();
    let mut worst = 0f64;
    for (kind, kname, spacing, sname, steps, sched, pred, pname) in [
        (
            SamplerKind::Ddim,
            "ddim",
            TimestepSpacing::Leading,
            "leading",
            50,
            "linear",
            PredictionType::Epsilon,
            "epsilon",
        ),
        (
            SamplerKind::Ddim,
            "ddim",
            TimestepSpacing::Trailing,
            "trailing",
            50,
            "squaredcos_cap_v2",
            PredictionType::VPrediction,
            "v_prediction",
        ),
        (
            SamplerKind::DpmSolverPP,
            "dpmpp2m",
            TimestepSpacing::Linspace,
            "linspace",
            20,
            "linear",
            PredictionType::Epsilon,
            "epsilon",
        ),
        (
            SamplerKind::DpmSolverPP,
            "dpmpp2m",
            TimestepSpacing::Trailing,
            "trailing",
            10,
            "squaredcos_cap_v2",
            PredictionType::VPrediction,
            "v_prediction",
        ),
    ] {
        let key = format!("{kname}_{sched}_{pname}_{sname}_{steps}");
        let cfg = common::chain_config(kind, sched, pred, spacing, steps);
        let mut s = build(&cfg).unwrap();
        let mut model = common::analytic_model(m.clone(), common::diffusers_alpha_bar(sched), pred);
        let x0 = run(s.as_mut(), &mut model, &x_t, &mut NoiseRng::new(0), None).unwrap();
        assert!(x0.device().same_device(&dev));
        let e = max_abs_diff(
            &x0.to_device(&Device::Cpu).unwrap(),
            &g[&format!("{key}_x0")],
        );
        println!("{key} on {dev:?}: max abs err {e:.2e} (tolerance 1e-4)");
        worst = worst.max(e);
    }
    assert!(worst < 1e-4, "{worst}");
}

#[test]
fn fifty_training_steps_match_the_cpu() {
    let dev = device();
    std::env::set_var("HF_HUB_OFFLINE", "1");
    std::env::set_var(
        "HF_HOME",
        std::env::temp_dir().join("diffuse-device-empty-hf"),
    );
    let run_on = |d: &Device, out: &std::path::Path| {
        let cfg = TrainConfig {
            data_dir: out.join("no-data"),
            model_config: data_path("tiny28/config.json").display().to_string(),
            out: out.to_path_buf(),
            steps: Some(50),
            batch_size: 16,
            limit: Some(256),
            lr: 1e-3,
            warmup: 5,
            log_every: 1,
            checkpoint_every: 50,
            sample_every: 0,
            num_samples: 4,
            progress: false,
            ..TrainConfig::default()
        };
        train(&cfg, d, Start::Fresh, &AtomicBool::new(false)).unwrap();
        std::fs::read_to_string(out.join("loss.csv"))
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split(',').nth(1).unwrap().parse::<f64>().unwrap())
            .collect::<Vec<_>>()
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let on_dev = kernel_launches_checked(&dev, "50 training steps", || run_on(&dev, a.path()));
    let on_cpu = run_on(&Device::Cpu, b.path());
    assert_eq!(on_dev.len(), 50);
    let worst = on_dev
        .iter()
        .zip(&on_cpu)
        .map(|(x, y)| (x - y).abs() / y.abs())
        .fold(0f64, f64::max);
    println!(
        "50 training steps on {dev:?} vs CPU: worst relative loss difference {worst:.2e} \
         (tolerance 1e-3); last losses {:.5} / {:.5}",
        on_dev[49], on_cpu[49]
    );
    assert!(worst < 1e-3, "{worst}");
    // The device run's checkpoint loads back on the CPU.
    let (ucfg, _, model) = diffuse::unet::load(&a.path().join("unet"), &Device::Cpu).unwrap();
    let (c, h, w) = ucfg.image_shape().unwrap();
    let x = Tensor::zeros((1, c, h, w), candle_core::DType::F32, &Device::Cpu).unwrap();
    let y = model
        .forward(&x, &Tensor::new(&[10u32], &Device::Cpu).unwrap(), false)
        .unwrap();
    assert_eq!(y.dims(), &[1, c, h, w]);
}

/// The fused group norm (with and without silu) against Candle's ops on the device: the CPU
/// kernel on the CPU, the CUDA kernel (src/kernels/cuda/group_norm.cu) on CUDA; forward and
/// the gradients of x, gamma and beta, over four sizes the UNets use.
#[test]
fn fused_group_norm_matches_candle_on_the_device() {
    use candle_core::Var;
    use diffuse::kernels::{group_norm_fused, reference};
    let dev = device();
    let mut rng = NoiseRng::new(11);
    let mut worst = 0f64;
    for (n, c, hw, groups) in [
        (4, 64, 8, 32),
        (2, 32, 28, 32),
        (3, 256, 4, 32),
        (2, 12, 5, 3),
    ] {
        let r = |shape: &[usize], rng: &mut NoiseRng| {
            rng.randn(shape, &Device::Cpu)
                .unwrap()
                .to_device(&dev)
                .unwrap()
        };
        let x = Var::from_tensor(&r(&[n, c, hw, hw], &mut rng).affine(1.5, 0.3).unwrap()).unwrap();
        let gamma = Var::from_tensor(&r(&[c], &mut rng)).unwrap();
        let beta = Var::from_tensor(&r(&[c], &mut rng)).unwrap();
        let w = r(&[n, c, hw, hw], &mut rng);
        for silu in [false, true] {
            let run = |fused: bool| {
                let (xt, g, b) = (x.as_tensor(), gamma.as_tensor(), beta.as_tensor());
                let y = match (fused, silu) {
                    (true, _) => group_norm_fused(xt, groups, g, b, 1e-5, silu).unwrap(),
                    (false, false) => reference::group_norm(xt, groups, g, b, 1e-5).unwrap(),
                    (false, true) => reference::group_norm_silu(xt, groups, g, b, 1e-5).unwrap(),
                };
                let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
                let cpu = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
                [
                    cpu(&y),
                    cpu(grads.get(xt).unwrap()),
                    cpu(grads.get(g).unwrap()),
                    cpu(grads.get(b).unwrap()),
                ]
            };
            let (ours, theirs) = (run(true), run(false));
            for (name, (a, b)) in ["y", "dx", "dgamma", "dbeta"]
                .iter()
                .zip(ours.iter().zip(&theirs))
            {
                let scale = max_abs_diff(b, &b.zeros_like().unwrap());
                let d = max_abs_diff(a, b) / scale.max(1.0);
                worst = worst.max(d);
                assert!(
                    d < 1e-4,
                    "{n}x{c}x{hw}x{hw}/{groups} silu {silu} {name}: {d}"
                );
            }
        }
    }
    println!("fused group norm on {dev:?} vs Candle's ops: max relative diff {worst:.3e} (tolerance 1e-4)");
}

/// The attention's softmax of scale * scores (on CUDA our kernels, with `DIFFUSE_CUDA_KERNELS=0`
/// Candle's ops) against Candle's affine op and softmax on the same device, forward and
/// gradient: rows shorter than a warp, the cifar10 preset's [items, 256, 256] scores, rows
/// longer than a block, and a transposed view (as attention hands a score's transpose);
/// probabilities within 1e-6, gradients within 1e-5 of their scale.
#[test]
fn scaled_softmax_matches_candle_on_the_device() {
    use candle_core::Var;
    use diffuse::kernels::{reference, scaled_softmax_last_dim};
    let dev = device();
    let mut rng = NoiseRng::new(17);
    let mut worst = [0f64; 2];
    for (dims, scale, transposed) in [
        ([6, 5, 16], 0.125, false),
        ([8, 256, 256], 1.0 / 16.0, false),
        ([3, 53, 37], 0.5, true),
        ([2, 3, 1100], 1.0, false),
    ] {
        let r = |rng: &mut NoiseRng| {
            rng.randn(&dims[..], &Device::Cpu)
                .unwrap()
                .to_device(&dev)
                .unwrap()
        };
        let x = Var::from_tensor(&r(&mut rng).affine(8.0, 0.5).unwrap()).unwrap();
        let input = || match transposed {
            true => x.as_tensor().transpose(1, 2).unwrap(),
            false => x.as_tensor().clone(),
        };
        let w = r(&mut rng).reshape(input().shape()).unwrap();
        let run = |ours: bool| {
            let go = || {
                let y = match ours {
                    true => scaled_softmax_last_dim(&input(), scale).unwrap(),
                    false => reference::scaled_softmax_last_dim(&input(), scale).unwrap(),
                };
                let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
                (y, grads.get(x.as_tensor()).unwrap().clone())
            };
            let (y, dx) = match ours {
                true => kernel_launches_checked(&dev, "softmax", go),
                false => go(),
            };
            let cpu = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
            [cpu(&y), cpu(&dx)]
        };
        let (ours, theirs) = (run(true), run(false));
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(a.dims(), b.dims());
            let mag = max_abs_diff(b, &b.zeros_like().unwrap());
            let d = max_abs_diff(a, b) / if i == 0 { 1.0 } else { mag.max(1e-3) };
            worst[i] = worst[i].max(d);
            let tol = [1e-6, 1e-5][i];
            assert!(d < tol, "{dims:?} scale {scale} {}: {d}", ["y", "dx"][i]);
        }
    }
    println!(
        "softmax on {dev:?} vs Candle's ops: y max abs diff {:.3e} (tolerance 1e-6), dx {:.3e} relative (1e-5)",
        worst[0], worst[1]
    );
}

/// A cuDNN build (`FEATURES=cudnn`) on CUDA, our kernels on and `DIFFUSE_CUDNN` not 0, must
/// have run its convolution passes through cuDNN (`calls`: `passes`, so none fell back to our
/// path or Candle's); any other build or switch none.
fn cudnn_checked(dev: &Device, calls: usize, passes: usize) {
    let on = |v: &str| std::env::var(v).map_or(true, |v| v != "0");
    let want = dev.is_cuda()
        && env!("DIFFUSE_BACKENDS").contains("cudnn")
        && on("DIFFUSE_CUDA_KERNELS")
        && on("DIFFUSE_CUDNN");
    if dev.is_cuda() {
        assert_eq!(
            diffuse::kernels::cudnn_in_use(),
            want,
            "kernels::cudnn_in_use"
        );
    }
    let expected = if want { passes } else { 0 };
    println!("conv2d: {calls} cuDNN convolution calls (expected {expected})");
    assert_eq!(calls, expected, "cuDNN convolution calls");
}

/// conv2d (`kernels::conv2d`: on CUDA our im2col/col2im kernels around cuBLAS, or in a cuDNN
/// build cuDNN's forward, backward-data and backward-filter convolutions) and its three
/// gradients on the device against the CPU kernels: strides 1 and 2, 1x1 and 3x3, no bias, a
/// channel bias and a per-image bias (the UNet's time embedding), and on CUDA a batch whose
/// column buffer passes 1 GiB, so our path runs it (and its per-image bias) in two chunks of
/// images (cuDNN takes it whole, after the bias fill in chunks).
#[test]
fn conv2d_and_its_gradients_match_the_cpu_on_the_device() {
    use candle_core::Var;
    let dev = device();
    let mut rng = NoiseRng::new(17);
    let mut cases = vec![
        // (n, ci, h, w, co, k, stride, pad, bias: 0 none, 1 [co], 2 [n, co])
        (4, 8, 9, 7, 6, 3, 1, 1, 1),
        (3, 16, 8, 8, 12, 3, 2, 0, 0),
        (2, 12, 6, 6, 20, 1, 1, 0, 2),
        (5, 32, 16, 16, 32, 3, 1, 1, 2),
        (2, 3, 11, 10, 5, 3, 2, 1, 1),
    ];
    if dev.is_cuda() {
        // 64 x 9 x 64 x 64 columns per image: 113 images per GiB, so 116 run as 113 + 3, the
        // per-image bias split with them.
        cases.push((116, 64, 64, 64, 16, 3, 1, 1, 2));
    }
    let mut worst = 0f64;
    for (n, ci, h, w, co, k, stride, pad, bias) in cases {
        let cpu = Device::Cpu;
        let x = rng.randn((n, ci, h, w), &cpu).unwrap();
        let wt = rng
            .randn((co, ci, k, k), &cpu)
            .unwrap()
            .affine(0.2, 0.0)
            .unwrap();
        let b = match bias {
            0 => None,
            1 => Some(rng.randn(co, &cpu).unwrap()),
            _ => Some(rng.randn((n, co), &cpu).unwrap()),
        };
        let (oh, ow) = (
            (h + 2 * pad - k) / stride + 1,
            (w + 2 * pad - k) / stride + 1,
        );
        let probe = rng.randn((n, co, oh, ow), &cpu).unwrap();
        let run = |d: &Device| {
            let on = |t: &Tensor| Var::from_tensor(&t.to_device(d).unwrap()).unwrap();
            let (xv, wv, bv) = (on(&x), on(&wt), b.as_ref().map(on));
            let y = kernel_launches_checked(d, "conv2d", || {
                diffuse::kernels::conv2d(
                    xv.as_tensor(),
                    wv.as_tensor(),
                    bv.as_ref().map(|v| v.as_tensor()),
                    stride,
                    pad,
                )
                .unwrap()
            });
            let probe = probe.to_device(d).unwrap();
            let grads = (&y * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let mut out = vec![y.to_device(&cpu).unwrap()];
            out.push(grads.get(xv.as_tensor()).unwrap().to_device(&cpu).unwrap());
            out.push(grads.get(wv.as_tensor()).unwrap().to_device(&cpu).unwrap());
            if let Some(bv) = &bv {
                out.push(grads.get(bv.as_tensor()).unwrap().to_device(&cpu).unwrap());
            }
            out
        };
        let before = diffuse::kernels::cudnn_convolutions();
        let (ours, want) = (run(&dev), run(&cpu));
        // The forward and both gradients.
        cudnn_checked(&dev, diffuse::kernels::cudnn_convolutions() - before, 3);
        for (name, (a, e)) in ["y", "dx", "dw", "db"].iter().zip(ours.iter().zip(&want)) {
            assert_eq!(a.dims(), e.dims(), "{name}");
            let scale = max_abs_diff(e, &e.zeros_like().unwrap()).max(1.0);
            let d = max_abs_diff(a, e) / scale;
            worst = worst.max(d);
            assert!(
                d < 1e-4,
                "n{n} c{ci} {h}x{w} -> {co}, {k}x{k} s{stride} p{pad} bias {bias}: {name} {d}"
            );
        }
    }
    println!("conv2d and gradients on {dev:?} vs the CPU: max relative diff {worst:.3e} (tolerance 1e-4)");
}

/// conv2d in half precision (what `sample --dtype` runs; in a cuDNN build on CUDA, cuDNN's
/// tensor cores through `kernels::conv2d`, else Candle's conv2d) against the CPU's f32 conv2d
/// of the same half-rounded inputs and bias: within 4 units of the type's rounding of the
/// largest output (f16 2^-11, bf16 2^-8), so only the sums' order and the output's rounding
/// differ. bf16 only off the CPU (Candle has no CPU bf16 matmul). (A cuDNN build with our paths
/// switched off runs Candle's cuDNN conv2d, whose sums are half precision: not held to this.)
#[test]
fn half_precision_conv2d_matches_f32_on_the_device() {
    use candle_core::DType;
    let dev = device();
    let cpu = Device::Cpu;
    let mut rng = NoiseRng::new(23);
    let dtypes: &[(DType, f64)] = if dev.is_cpu() {
        &[(DType::F16, 4.0 / 2048.0)]
    } else {
        &[(DType::F16, 4.0 / 2048.0), (DType::BF16, 4.0 / 256.0)]
    };
    // (n, ci, h, w, co, k, stride, pad)
    let cases = [
        (4, 32, 16, 16, 64, 3, 1, 1),
        (2, 64, 8, 8, 32, 1, 1, 0),
        (3, 16, 9, 7, 24, 3, 2, 1),
    ];
    for &(dt, tol) in dtypes {
        for (n, ci, h, w, co, k, stride, pad) in cases {
            let half = |t: Tensor| t.to_dtype(dt).unwrap();
            let x = half(rng.randn((n, ci, h, w), &cpu).unwrap());
            let wt = half(
                rng.randn((co, ci, k, k), &cpu)
                    .unwrap()
                    .affine(0.1, 0.0)
                    .unwrap(),
            );
            let b = half(rng.randn(co, &cpu).unwrap());
            let f32_of = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let want =
                diffuse::kernels::conv2d(&f32_of(&x), &f32_of(&wt), Some(&f32_of(&b)), stride, pad)
                    .unwrap();
            let on = |t: &Tensor| t.to_device(&dev).unwrap();
            let before = diffuse::kernels::cudnn_convolutions();
            let got =
                diffuse::kernels::conv2d(&on(&x), &on(&wt), Some(&on(&b)), stride, pad).unwrap();
            cudnn_checked(&dev, diffuse::kernels::cudnn_convolutions() - before, 1);
            assert_eq!(got.dtype(), dt);
            let got = f32_of(&got.to_device(&cpu).unwrap());
            let scale = max_abs_diff(&want, &want.zeros_like().unwrap()).max(1.0);
            let d = max_abs_diff(&got, &want) / scale;
            println!("conv2d {dt:?} {n}x{ci}x{h}x{w} -> {co}, {k}x{k} s{stride} on {dev:?} vs f32: {d:.2e} of the largest output (tolerance {tol:.1e})");
            assert!(
                d < tol,
                "{dt:?} n{n} c{ci} {h}x{w} -> {co} {k}x{k} s{stride}: {d}"
            );
        }
    }
}

/// Nearest 2x upsampling and its gradient (`kernels::upsample_nearest2x`: on CUDA
/// src/kernels/cuda/upsample.cu) on the device against the CPU kernel: the same sums in the same
/// order, so equal.
#[test]
fn upsample_and_its_gradient_match_the_cpu_on_the_device() {
    use candle_core::Var;
    let dev = device();
    let mut rng = NoiseRng::new(23);
    for (n, c, h, w) in [(3, 5, 4, 4), (2, 3, 7, 5), (1, 256, 16, 16)] {
        let cpu = Device::Cpu;
        let x = rng.randn((n, c, h, w), &cpu).unwrap();
        let probe = rng.randn((n, c, 2 * h, 2 * w), &cpu).unwrap();
        let run = |d: &Device| {
            let xv = Var::from_tensor(&x.to_device(d).unwrap()).unwrap();
            let y = kernel_launches_checked(d, "upsample", || {
                diffuse::kernels::upsample_nearest2x(xv.as_tensor()).unwrap()
            });
            let loss = (&y * &probe.to_device(d).unwrap())
                .unwrap()
                .sum_all()
                .unwrap();
            let dx = loss
                .backward()
                .unwrap()
                .get(xv.as_tensor())
                .unwrap()
                .clone();
            [y.to_device(&cpu).unwrap(), dx.to_device(&cpu).unwrap()]
        };
        let (ours, want) = (run(&dev), run(&Device::Cpu));
        for (name, (a, e)) in ["y", "dx"].iter().zip(ours.iter().zip(&want)) {
            assert_eq!(a.dims(), e.dims(), "{name}");
            let d = max_abs_diff(a, e);
            println!("upsample {n}x{c}x{h}x{w} {name} on {dev:?} vs the CPU: max abs diff {d:.3e} (tolerance 1e-6)");
            assert!(d < 1e-6, "{n}x{c}x{h}x{w} {name}: {d}");
        }
    }
}

/// `kernels::sum_squares` (global-norm clipping's sum: on CUDA our kernels, elsewhere Candle's
/// ops) against the float64 sum on the CPU: 300 small tensors (past one launch's 240 pieces),
/// one of 2^17 + 5 elements (three pieces), a 4-d one and a view at an offset (as the
/// multi-process path hands gradients); relative tolerance 1e-5, and bit-equal on a repeat.
#[test]
fn sum_of_squares_matches_float64_on_the_device() {
    let dev = device();
    let mut rng = NoiseRng::new(9);
    let cpu = Device::Cpu;
    let mut ts: Vec<Tensor> = (0..300)
        .map(|i| rng.randn(1 + i % 37, &cpu).unwrap())
        .collect();
    ts.push(rng.randn((1 << 17) + 5, &cpu).unwrap());
    ts.push(rng.randn((64, 3, 3, 3), &cpu).unwrap());
    let mut on: Vec<Tensor> = ts.iter().map(|t| t.to_device(&dev).unwrap()).collect();
    let flat = rng.randn(1000, &cpu).unwrap();
    ts.push(flat.narrow(0, 3, 990).unwrap());
    on.push(flat.to_device(&dev).unwrap().narrow(0, 3, 990).unwrap());
    let want: f64 = ts
        .iter()
        .flat_map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .map(|v| v as f64 * v as f64)
        .sum();
    let refs: Vec<&Tensor> = on.iter().collect();
    let got = kernel_launches_checked(&dev, "sum of squares", || {
        diffuse::kernels::sum_squares(&refs).unwrap().unwrap()
    });
    let got = got.to_device(&cpu).unwrap().to_scalar::<f32>().unwrap();
    let again = diffuse::kernels::sum_squares(&refs).unwrap().unwrap();
    let again = again.to_device(&cpu).unwrap().to_scalar::<f32>().unwrap();
    let rel = (got as f64 - want).abs() / want;
    let same = got.to_bits() == again.to_bits();
    println!("sum of squares on {dev:?}: {got} vs float64 {want}: relative {rel:.1e} (tolerance 1e-5); repeat bit-equal: {same}");
    assert!(rel < 1e-5, "{got} vs {want}");
    assert!(same, "the same gradients, another sum: {got} then {again}");
    assert!(diffuse::kernels::sum_squares(&[]).unwrap().is_none());
}

/// The EMA's in-place update (`kernels::ema::update_in_place`: on CUDA our multi-tensor
/// kernel, elsewhere declined so the caller runs Candle's ops) against the composite on the
/// same device: three updates of 200 tensors of odd sizes and one of 2^17 + 5 elements
/// (pieces across launches), bit-equal.
#[test]
fn ema_update_matches_the_composite_on_the_device() {
    let dev = device();
    let mut rng = NoiseRng::new(11);
    let cpu = Device::Cpu;
    let mut sizes: Vec<usize> = (0..200).map(|i| 1 + i % 23).collect();
    sizes.push((1 << 17) + 5);
    let on = |t: Tensor| t.to_device(&dev).unwrap();
    let shadows: Vec<Tensor> = sizes
        .iter()
        .map(|&n| on(rng.randn(n, &cpu).unwrap()))
        .collect();
    let mut want: Vec<Tensor> = shadows.iter().map(|s| s.copy().unwrap()).collect();
    let switched =
        dev.is_cuda() && std::env::var("DIFFUSE_CUDA_KERNELS").map_or(true, |v| v != "0");
    for step in 0..3 {
        let d = f64::min(0.999, (1.0 + step as f64) / (10.0 + step as f64));
        let params: Vec<Tensor> = sizes
            .iter()
            .map(|&n| on(rng.randn(n, &cpu).unwrap()))
            .collect();
        let (s, p): (Vec<&Tensor>, Vec<&Tensor>) =
            (shadows.iter().collect(), params.iter().collect());
        let ran = kernel_launches_checked(&dev, "EMA update", || {
            diffuse::kernels::ema::update_in_place(&s, &p, d).unwrap()
        });
        assert_eq!(ran, switched, "update_in_place ran");
        for (w, p) in want.iter_mut().zip(&params) {
            *w = ((&*w * d).unwrap() + (p * (1.0 - d)).unwrap()).unwrap();
        }
    }
    if switched {
        let worst = shadows
            .iter()
            .zip(&want)
            .map(|(s, w)| max_abs_diff(&s.to_device(&cpu).unwrap(), &w.to_device(&cpu).unwrap()))
            .fold(0f64, f64::max);
        println!("EMA update on {dev:?} vs composite: max abs diff {worst:.2e} (tolerance 0)");
        assert_eq!(worst, 0.0);
    }
}

/// The fused AdamW (`kernels::adamw::step_many`: the CPU kernel on the CPU, one pass per
/// tensor; on CUDA all tensors in a few multi-tensor launches, the clipping scale read on the
/// device) against the composite update written with Candle's ops on the same device, equal:
/// three steps, with and without a gradient scale, over 120 small tensors (pieces across
/// launches) and one of 2^20 + 3001 elements (many pieces) whose gradient is a view at an
/// offset, as the multi-process path hands it.
#[test]
fn fused_adamw_matches_the_composite_on_the_device() {
    use diffuse::kernels::adamw::{self, AdamWScalars};
    let dev = device();
    let mut rng = NoiseRng::new(5);
    let mut sizes: Vec<usize> = (0..120).map(|i| 1 + (i * 7) % 61).collect();
    sizes.push((1 << 20) + 3001);
    let on = |t: Tensor| t.to_device(&dev).unwrap();
    let cpu = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
    for clip in [None, Some(0.37f32)] {
        let vars: Vec<candle_core::Var> = sizes
            .iter()
            .map(|&n| {
                candle_core::Var::from_tensor(&on(rng.randn(n, &Device::Cpu).unwrap())).unwrap()
            })
            .collect();
        let mut mvs: Vec<Tensor> = sizes
            .iter()
            .map(|&n| on(Tensor::zeros(2 * n, candle_core::DType::F32, &Device::Cpu).unwrap()))
            .collect();
        // The composite's p, m, v per tensor.
        let mut want: Vec<(Tensor, Tensor, Tensor)> = vars
            .iter()
            .map(|v| {
                let p = v.as_tensor().copy().unwrap();
                (p.clone(), p.zeros_like().unwrap(), p.zeros_like().unwrap())
            })
            .collect();
        let (b1, b2, eps, lr, wd) = (0.95, 0.999, 1e-8, 1e-3, 1e-2);
        for t in 1..=3 {
            let gs: Vec<Tensor> = sizes
                .iter()
                .map(|&n| {
                    on(rng.randn(n + 7, &Device::Cpu).unwrap())
                        .narrow(0, 7, n)
                        .unwrap()
                })
                .collect();
            let (bc1, bc2) = (1.0 - f64::powi(b1, t), 1.0 - f64::powi(b2, t));
            let scale_t = clip.map(|s| on(Tensor::new(&[s], &Device::Cpu).unwrap()));
            let h = AdamWScalars {
                beta1: b1,
                beta2: b2,
                bc1,
                bc2,
                eps,
                lr,
                weight_decay: wd,
                scale: clip.filter(|_| dev.is_cpu()),
            };
            let device_scale = scale_t.as_ref().filter(|_| !dev.is_cpu());
            let items: Vec<(&Tensor, &Tensor, &Tensor)> = vars
                .iter()
                .zip(&gs)
                .zip(&mvs)
                .map(|((v, g), mv)| (v.as_tensor(), g, mv))
                .collect();
            mvs = adamw::step_many(&items, h, device_scale).unwrap();
            // The composite (train::optim's update on other devices).
            for ((p, m, v), g) in want.iter_mut().zip(&gs) {
                let g = match &scale_t {
                    Some(s) => g.broadcast_mul(s).unwrap(),
                    None => g.clone(),
                };
                *m = ((&*m * b1).unwrap() + (&g * (1.0 - b1)).unwrap()).unwrap();
                *v = ((&*v * b2).unwrap() + (g.sqr().unwrap() * (1.0 - b2)).unwrap()).unwrap();
                let upd = ((&*m / bc1).unwrap()
                    / ((&*v / bc2).unwrap().sqrt().unwrap() + eps).unwrap())
                .unwrap();
                *p = ((&*p * (1.0 - lr * wd)).unwrap() - (upd * lr).unwrap()).unwrap();
            }
        }
        let (mut dp, mut dm, mut dv) = (0f64, 0f64, 0f64);
        for (((var, mv), (p, m, v)), &n) in vars.iter().zip(&mvs).zip(&want).zip(&sizes) {
            dp = dp.max(max_abs_diff(&cpu(var.as_tensor()), &cpu(p)));
            dm = dm.max(max_abs_diff(&cpu(&mv.narrow(0, 0, n).unwrap()), &cpu(m)));
            dv = dv.max(max_abs_diff(&cpu(&mv.narrow(0, n, n).unwrap()), &cpu(v)));
        }
        // The same float operations in the same order: equal, not merely close.
        println!("fused AdamW on {dev:?} (scale {clip:?}, {} tensors) vs composite: weights {dp:.2e}, m {dm:.2e}, v {dv:.2e} (tolerance 0)", sizes.len());
        assert!(dp == 0.0 && dm == 0.0 && dv == 0.0, "{dp} {dm} {dv}");
    }
}
