//! The Candle UNet2DModel against diffusers' own outputs (tests/data/unet_tiny, from
//! ../shared/golden): same weights, same input, every intermediate within 1e-4 absolute.
mod common;
use candle_core::{DType, Device, Tensor};
use common::{data_path, load_golden, max_abs_diff};
use diffuse::unet::{self, UNetConfig};

const TOL: f64 = 1e-4;

#[test]
fn tiny_model_matches_diffusers_output_and_intermediates() {
    let dev = Device::Cpu;
    let (cfg, _vm, model) = unet::load(&data_path("unet_tiny"), &dev).unwrap();
    assert_eq!(cfg.block_out_channels, vec![32, 64]);
    let io = load_golden("unet_tiny/io.safetensors");
    let (out, inter) = model
        .forward_with_intermediates(&io["x"], &io["timesteps"])
        .unwrap();
    let mut worst = 0f64;
    for (name, ours) in &inter {
        let gold = io
            .get(name)
            .unwrap_or_else(|| panic!("golden lacks {name}"));
        let d = max_abs_diff(ours, gold);
        println!("{name:32} max abs err {d:.3e}");
        worst = worst.max(d);
    }
    assert!(worst < TOL, "worst intermediate {worst}");
    // Every golden intermediate is produced by us too.
    for k in io
        .keys()
        .filter(|k| k.starts_with("debug.") || k.starts_with("time_"))
    {
        assert!(inter.contains_key(k), "we do not produce {k}");
    }
    assert_eq!(out.dims(), &[2, 1, 16, 16]);
    let d = max_abs_diff(&out, &io["output"]);
    let d64 = max_abs_diff(&out, &io["output_f64"]);
    println!("output max abs err {d:.3e} (vs float64 diffusers {d64:.3e}); worst intermediate {worst:.3e}");
    assert!(d < TOL, "output: {d}");
    assert!(d64 < TOL, "output_f64: {d64}");
}

#[test]
fn forward_accepts_u32_f32_and_scalar_timesteps() {
    let dev = Device::Cpu;
    let (_, _, model) = unet::load(&data_path("unet_tiny"), &dev).unwrap();
    let io = load_golden("unet_tiny/io.safetensors");
    let want = &io["output"];
    for dt in [DType::U32, DType::F32, DType::I64] {
        let t = io["timesteps"].to_dtype(dt).unwrap();
        let y = model.forward(&io["x"], &t, false).unwrap();
        assert!(max_abs_diff(&y, want) < TOL, "{dt:?}");
    }
    // One timestep for the whole batch equals a repeated one.
    let x = &io["x"];
    let one = model
        .forward(x, &Tensor::new(900u32, &dev).unwrap(), false)
        .unwrap();
    let rep = model
        .forward(x, &Tensor::new(&[900u32, 900], &dev).unwrap(), false)
        .unwrap();
    assert_eq!(max_abs_diff(&one, &rep), 0.0);
    // train=true (dropout 0, composed softmax) gives the same prediction.
    let y = model.forward(x, &io["timesteps"], true).unwrap();
    assert!(max_abs_diff(&y, want) < TOL);
}

#[test]
fn parameter_counts_equal_diffusers() {
    // Tiny golden: diffusers' own total is the sum of its safetensors tensor sizes.
    let golden: usize = load_golden("unet_tiny/diffusion_pytorch_model.safetensors")
        .values()
        .map(|t| t.elem_count())
        .sum();
    let cfg = UNetConfig::from_file(&data_path("unet_tiny/config.json")).unwrap();
    assert_eq!(unet::param_count(&cfg).unwrap(), golden);
    // google/ddpm-cifar10-32: 35,746,307 parameters, as diffusers reports
    // (sum(p.numel() for p in UNet2DModel.from_pretrained(...).parameters())).
    let c = UNetConfig::preset("cifar10").unwrap();
    assert_eq!(unet::param_count(&c).unwrap(), 35_746_307);
    // mnist preset: see MNIST_PARAMS.
    let m = UNetConfig::preset("mnist").unwrap();
    assert_eq!(unet::param_count(&m).unwrap(), MNIST_PARAMS);
}

/// diffusers 0.42.1 `UNet2DModel(sample_size=28, in_channels=1, out_channels=1,
/// block_out_channels=(32,64,64), layers_per_block=1, down=(Down, AttnDown, Down),
/// up=(Up, AttnUp, Up), norm_num_groups=8)`: `sum(p.numel() for p in m.parameters())`
/// printed 1112801 (run with the peer venv on this machine).
const MNIST_PARAMS: usize = 1_112_801;

/// The same weights as diffusers writes them in its two other forms: the PyTorch zip pickle
/// (`safe_serialization=False`) and the `fp16` variant.
#[test]
fn bin_and_fp16_checkpoints_load() {
    let dev = Device::Cpu;
    let io = load_golden("unet_tiny/io.safetensors");
    let (_, vm, model) = unet::load(&data_path("unet_tiny"), &dev).unwrap();
    let reference: std::collections::HashMap<String, Tensor> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let base = model.forward(&io["x"], &io["timesteps"], false).unwrap();

    // .bin: the identical f32 weights, so the identical output.
    let dir = data_path("unet_tiny_bin");
    assert!(unet::io::weights_file(&dir)
        .unwrap()
        .ends_with("diffusion_pytorch_model.bin"));
    let (_, vm_bin, m_bin) = unet::load(&dir, &dev).unwrap();
    for (k, v) in vm_bin.data().lock().unwrap().iter() {
        assert_eq!(max_abs_diff(v.as_tensor(), &reference[k]), 0.0, "{k}");
    }
    let out = m_bin.forward(&io["x"], &io["timesteps"], false).unwrap();
    let d = max_abs_diff(&out, &io["output"]);
    println!(".bin: output max abs err {d:.3e}");
    assert!(d < TOL, ".bin output: {d}");
    assert_eq!(max_abs_diff(&out, &base), 0.0);

    // fp16 variant: every weight is the f32 weight rounded to the nearest f16, and the output
    // is the f32 model's with those weights (computed in f32), so it moves from diffusers' f32
    // output by what f16 weights allow: measured 8.5e-4 here, bound 1e-2.
    let dir = data_path("unet_tiny_fp16");
    assert!(unet::io::weights_file(&dir)
        .unwrap()
        .ends_with("diffusion_pytorch_model.fp16.safetensors"));
    let (cfg, vm16, m16) = unet::load(&dir, &dev).unwrap();
    let mut rounded = std::collections::HashMap::new();
    for (k, v) in vm16.data().lock().unwrap().iter() {
        let want = reference[k]
            .to_dtype(DType::F16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        assert_eq!(max_abs_diff(v.as_tensor(), &want), 0.0, "{k}");
        rounded.insert(k.clone(), want);
    }
    let out16 = m16.forward(&io["x"], &io["timesteps"], false).unwrap();
    let ours_rounded = unet::io::build(&cfg, &unet::io::varmap_from(rounded).unwrap(), &dev)
        .unwrap()
        .forward(&io["x"], &io["timesteps"], false)
        .unwrap();
    assert_eq!(max_abs_diff(&out16, &ours_rounded), 0.0);
    let d16 = max_abs_diff(&out16, &io["output"]);
    println!("fp16: output max abs err {d16:.3e} against diffusers' f32 output");
    assert!(d16 < 1e-2, "fp16 output: {d16}");
}

/// Half-precision inference (`sample --dtype f16`): the tiny golden model with its weights cast
/// to f16 on load runs in f16 inside, takes and returns f32, and stays within f16's precision of
/// diffusers' f32 output (bf16 has no CPU matmul in Candle: checked on the GPU).
#[test]
fn f16_weights_stay_within_half_precision_of_diffusers() {
    let dev = Device::Cpu;
    let (cfg, vm, _) = unet::load(&data_path("unet_tiny"), &dev).unwrap();
    let model = unet::frozen_as(&cfg, &vm, unet::Precision::F16, &dev).unwrap();
    assert_eq!(model.dtype(), DType::F16);
    let io = load_golden("unet_tiny/io.safetensors");
    let out = model.forward(&io["x"], &io["timesteps"], false).unwrap();
    assert_eq!(out.dtype(), DType::F32);
    let d = max_abs_diff(&out, &io["output"]);
    let scale = max_abs_diff(&io["output"], &io["output"].zeros_like().unwrap());
    println!("f16 output max abs err {d:.3e} (output max |y| {scale:.2})");
    assert!(d > TOL && d < 1e-2, "{d}");
}
