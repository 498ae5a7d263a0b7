//! Loading, saving and validating UNet2DModel directories: round trips are bit-exact and every
//! bad checkpoint or config is one error naming the problem.
mod common;
use candle_core::{Device, Tensor};
use common::{data_path, load_golden, max_abs_diff};
use diffuse::unet::{self, UNetConfig};
use std::path::Path;

fn tiny_dir_copy(tmp: &Path) -> std::path::PathBuf {
    let d = tmp.join("m");
    std::fs::create_dir_all(&d).unwrap();
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(data_path("unet_tiny").join(f), d.join(f)).unwrap();
    }
    d
}

fn load_err(dir: &Path) -> String {
    match unet::load(dir, &Device::Cpu) {
        Ok(_) => panic!("{} should not load", dir.display()),
        Err(e) => {
            let s = e.to_string();
            assert_eq!(s.lines().count(), 1, "{s}");
            s
        }
    }
}

#[test]
fn save_reload_is_bit_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;
    let (cfg, vm, model) = unet::load(&data_path("unet_tiny"), &dev).unwrap();
    let io = load_golden("unet_tiny/io.safetensors");
    let y0 = model.forward(&io["x"], &io["timesteps"], false).unwrap();
    let out = tmp.path().join("saved");
    unet::save(&out, &cfg, &vm).unwrap();
    let (cfg2, _, model2) = unet::load(&out, &dev).unwrap();
    assert_eq!(cfg.to_json(), cfg2.to_json());
    let y1 = model2.forward(&io["x"], &io["timesteps"], false).unwrap();
    assert_eq!(max_abs_diff(&y0, &y1), 0.0);
    // The written files are what diffusers expects.
    let text = std::fs::read_to_string(out.join("config.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["_class_name"], "UNet2DModel");
    assert_eq!(v["block_out_channels"], serde_json::json!([32, 64]));
    let bytes = std::fs::read(out.join("diffusion_pytorch_model.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
    let a = load_golden("unet_tiny/diffusion_pytorch_model.safetensors");
    let b = candle_core::safetensors::load(out.join("diffusion_pytorch_model.safetensors"), &dev)
        .unwrap();
    assert_eq!(a.len(), b.len());
    for (k, t) in &a {
        assert_eq!(max_abs_diff(t, &b[k]), 0.0, "{k}");
    }
    // No temporary files left behind.
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2);
}

#[test]
fn pipeline_dir_with_unet_subfolder_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tiny_dir_copy(tmp.path());
    let pipe = tmp.path().join("pipe");
    std::fs::create_dir_all(&pipe).unwrap();
    std::fs::rename(&d, pipe.join("unet")).unwrap();
    let (cfg, _, _) = unet::load(&pipe, &Device::Cpu).unwrap();
    assert_eq!(cfg.sample_size, Some(unet::config::SampleSize::Square(16)));
    assert!(unet::preset_or_file(pipe.to_str().unwrap()).is_ok());
}

#[test]
fn seeded_init_is_reproducible_and_trainable_shape() {
    let dev = Device::Cpu;
    let cfg = UNetConfig::preset("mnist").unwrap();
    let (vm1, m1) = unet::init(&cfg, 7, &dev).unwrap();
    let (_, m2) = unet::init(&cfg, 7, &dev).unwrap();
    assert_eq!(vm1.all_vars().len(), unet::param_spec(&cfg).unwrap().len());
    let x = Tensor::ones((2, 1, 28, 28), candle_core::DType::F32, &dev).unwrap();
    let t = Tensor::new(&[3u32, 999], &dev).unwrap();
    let y1 = m1.forward(&x, &t, false).unwrap();
    assert_eq!(y1.dims(), &[2, 1, 28, 28]);
    assert_eq!(max_abs_diff(&y1, &m2.forward(&x, &t, false).unwrap()), 0.0);
    // Gradients reach every variable through the train path.
    let loss = m1
        .forward(&x, &t, true)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    for v in vm1.all_vars() {
        assert!(grads.get(v.as_tensor()).is_some());
    }
}

#[test]
fn cifar10_preset_runs_at_32x32() {
    let dev = Device::Cpu;
    let cfg = UNetConfig::preset("cifar10").unwrap();
    let (_, m) = unet::init(&cfg, 0, &dev).unwrap();
    let x = Tensor::zeros((1, 3, 32, 32), candle_core::DType::F32, &dev).unwrap();
    let y = m
        .forward(&x, &Tensor::new(10u32, &dev).unwrap(), false)
        .unwrap();
    assert_eq!(y.dims(), &[1, 3, 32, 32]);
}

#[test]
fn config_defaults_and_unknown_keys() {
    let c = UNetConfig::from_json(r#"{"foo": 1, "_diffusers_version": "0.1"}"#, Path::new("x"))
        .unwrap();
    assert_eq!(c.block_out_channels, vec![224, 448, 672, 896]);
    assert_eq!(c.attention_head_dim, Some(8));
    assert_eq!(c.norm_num_groups, 32);
    let c = UNetConfig::from_json(
        r#"{"attention_head_dim": null, "block_out_channels":[32,32,32,32]}"#,
        Path::new("x"),
    )
    .unwrap();
    assert_eq!(c.attention_head_dim, None);
    // Unknown keys are not written back.
    assert!(!UNetConfig::default().to_json().contains("foo"));
    let err = unet::preset_or_file("no-such-model").unwrap_err();
    assert!(err.is_usage() && err.to_string().contains("mnist"), "{err}");
}

#[test]
fn bad_configs_are_named() {
    let base = std::fs::read_to_string(data_path("unet_tiny/config.json")).unwrap();
    let cases = [
        (
            r#""AttnUpBlock2D","#,
            r#""CrossAttnUpBlock2D","#,
            "CrossAttnUpBlock2D",
        ),
        (
            r#""norm_num_groups": 8"#,
            r#""norm_num_groups": 5"#,
            "not divisible by norm_num_groups",
        ),
        (
            r#""act_fn": "silu""#,
            r#""act_fn": "gelu""#,
            "act_fn 'gelu'",
        ),
        (
            r#""time_embedding_type": "positional""#,
            r#""time_embedding_type": "fourier""#,
            "fourier",
        ),
        (
            r#""layers_per_block": 1"#,
            r#""layers_per_block": "x""#,
            "layers_per_block",
        ),
    ];
    for (from, to, want) in cases {
        assert!(base.contains(from), "{from}");
        let text = base.replacen(from, to, 1);
        let e = UNetConfig::from_json(&text, Path::new("cfg.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want) && e.starts_with("cfg.json"), "{to}: {e}");
        assert_eq!(e.lines().count(), 1);
    }
    let e = UNetConfig::from_json(
        &base.replacen(r#""DownBlock2D","#, r#""SkipDownBlock2D","#, 1),
        Path::new("c"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("unsupported down block type 'SkipDownBlock2D'"),
        "{e}"
    );
}

#[test]
fn bad_checkpoints_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tiny_dir_copy(tmp.path());
    let w = d.join("diffusion_pytorch_model.safetensors");
    let good = std::fs::read(&w).unwrap();

    std::fs::write(&w, &good[..good.len() / 2]).unwrap();
    let e = load_err(&d);
    assert!(e.contains("not a valid safetensors file"), "{e}");

    std::fs::write(&w, b"PK\x03\x04 this is a zip, not safetensors").unwrap();
    let e = load_err(&d);
    assert!(e.contains("not a valid safetensors file"), "{e}");

    // Weights from another config: the mnist preset's config over the tiny weights.
    std::fs::write(&w, &good).unwrap();
    std::fs::write(
        d.join("config.json"),
        UNetConfig::preset("mnist").unwrap().to_json(),
    )
    .unwrap();
    let e = load_err(&d);
    assert!(
        e.contains("tensor '") && (e.contains("missing") || e.contains("shape")),
        "{e}"
    );
    std::fs::copy(data_path("unet_tiny/config.json"), d.join("config.json")).unwrap();

    // One tensor renamed -> missing one named, extra one named; one reshaped -> shape named.
    let mut ts = load_golden("unet_tiny/diffusion_pytorch_model.safetensors");
    let t = ts.remove("conv_out.bias").unwrap();
    ts.insert("conv_out.b".into(), t.clone());
    candle_core::safetensors::save(&ts, &w).unwrap();
    let e = load_err(&d);
    assert!(e.contains("missing tensor 'conv_out.bias'"), "{e}");
    ts.insert("conv_out.bias".into(), t);
    candle_core::safetensors::save(&ts, &w).unwrap();
    let e = load_err(&d);
    assert!(e.contains("unexpected tensor 'conv_out.b'"), "{e}");
    ts.remove("conv_out.b");
    ts.insert(
        "conv_in.bias".into(),
        Tensor::zeros(31, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&ts, &w).unwrap();
    let e = load_err(&d);
    assert!(e.contains("tensor 'conv_in.bias' has shape [31]"), "{e}");

    std::fs::remove_file(&w).unwrap();
    let e = load_err(&d);
    assert!(
        e.contains("no weights (diffusion_pytorch_model.safetensors, diffusion_pytorch_model.fp16.safetensors"),
        "{e}"
    );
    let e = load_err(tmp.path());
    assert!(e.contains("no config.json"), "{e}");
}

#[test]
fn bad_inputs_are_usage_errors() {
    let (_, _, m) = unet::load(&data_path("unet_tiny"), &Device::Cpu).unwrap();
    let dev = Device::Cpu;
    let t = Tensor::new(&[1u32, 2], &dev).unwrap();
    let f = |x: Tensor, t: &Tensor| m.forward(&x, t, false).unwrap_err();
    let e = f(
        Tensor::zeros((2, 3, 16, 16), candle_core::DType::F32, &dev).unwrap(),
        &t,
    );
    assert!(
        e.is_usage() && e.to_string().contains("in_channels = 1"),
        "{e}"
    );
    let e = f(
        Tensor::zeros((2, 1, 15, 16), candle_core::DType::F32, &dev).unwrap(),
        &t,
    );
    assert!(
        e.is_usage() && e.to_string().contains("multiple of 2"),
        "{e}"
    );
    let e = f(
        Tensor::zeros((3, 1, 16, 16), candle_core::DType::F32, &dev).unwrap(),
        &t,
    );
    assert!(e.is_usage() && e.to_string().contains("timesteps"), "{e}");
}

/// A class-conditional UNet we save is the one diffusers wrote: the same config keys and
/// values, the same tensor names, shapes and values (class_embedding included), and the same
/// outputs for the labels; so `UNet2DModel.from_pretrained` loads it as it loads its own.
#[test]
fn class_conditional_save_is_what_diffusers_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;
    let (cfg, vm, _) = unet::load(&data_path("unet_class"), &dev).unwrap();
    let out = tmp.path().join("saved");
    unet::save(&out, &cfg, &vm).unwrap();
    let read = |p: &Path| -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let (theirs, ours) = (
        read(&data_path("unet_class/config.json")),
        read(&out.join("config.json")),
    );
    for (k, v) in &theirs {
        if k == "_diffusers_version" {
            continue;
        }
        // JSON numbers compare as numbers (we write 1.0 where diffusers wrote 1).
        match (ours.get(k), v) {
            (Some(serde_json::Value::Number(a)), serde_json::Value::Number(b)) => {
                assert_eq!(a.as_f64(), b.as_f64(), "config key {k}")
            }
            (a, b) => assert_eq!(a, Some(b), "config key {k}"),
        }
    }
    let a = load_golden("unet_class/diffusion_pytorch_model.safetensors");
    let b = candle_core::safetensors::load(out.join("diffusion_pytorch_model.safetensors"), &dev)
        .unwrap();
    assert_eq!(a.len(), b.len());
    assert!(a.contains_key("class_embedding.weight"));
    for (k, t) in &a {
        assert_eq!(t.dims(), b[k].dims(), "{k}");
        assert_eq!(max_abs_diff(t, &b[k]), 0.0, "{k}");
    }
    let (_, _, model) = unet::load(&out, &dev).unwrap();
    let io = load_golden("unet_class/io.safetensors");
    let y = model
        .forward_cond(&io["x"], &io["timesteps"], Some(&io["class_labels"]), false)
        .unwrap();
    assert!(max_abs_diff(&y, &io["output"]) <= 1e-4);
}
