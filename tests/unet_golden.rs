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
