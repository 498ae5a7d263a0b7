//! The whole UNet with our fast CPU kernels equals the model on Candle's reference ops: the
//! golden tiny UNet's output within 1e-4 (and diffusers' output), and a few training steps give
//! the same losses within 1e-4.
mod common;
use candle_core::Device;
use diffuse::train::optim::LrSchedule;
use diffuse::train::{train, Start, TrainConfig};
use diffuse::unet::ops::set_fast_kernels;
use std::sync::atomic::AtomicBool;

#[test]
fn golden_unet_fast_equals_reference() {
    let io = common::load_golden("unet_tiny/io.safetensors");
    let (_, vm, _) = diffuse::unet::load(&common::data_path("unet_tiny"), &Device::Cpu).unwrap();
    let cfg =
        diffuse::unet::preset_or_file(common::data_path("unet_tiny/config.json").to_str().unwrap())
            .unwrap();
    let model = diffuse::unet::frozen(&cfg, &vm, &Device::Cpu).unwrap();
    let (x, t) = (&io["x"], &io["timesteps"]);
    set_fast_kernels(true);
    let fast = model.forward(x, t, false).unwrap();
    set_fast_kernels(false);
    let reference = model.forward(x, t, false).unwrap();
    set_fast_kernels(true);
    let d = common::max_abs_diff(&fast, &reference);
    let g = common::max_abs_diff(&fast, &io["output"]);
    println!("fast vs reference ops {d:.2e}; fast vs diffusers {g:.2e}");
    assert!(d < 1e-4 && g < 1e-4);
}

#[test]
fn training_losses_fast_equal_reference() {
    std::env::set_var("HF_HUB_OFFLINE", "1");
    std::env::set_var(
        "HF_HOME",
        std::env::temp_dir().join("diffuse-test-empty-hf-home"),
    );
    let run = |fast: bool| {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TrainConfig {
            data_dir: dir.path().join("none"),
            model_config: common::data_path("tiny28/config.json")
                .display()
                .to_string(),
            out: dir.path().to_path_buf(),
            steps: Some(5),
            batch_size: 8,
            lr: 1e-3,
            warmup: 0,
            lr_schedule: LrSchedule::Constant,
            log_every: 1,
            checkpoint_every: 100,
            sample_every: 0,
            sample_steps: 2,
            num_samples: 2,
            limit: Some(32),
            progress: false,
            ..TrainConfig::default()
        };
        set_fast_kernels(fast);
        train(&cfg, &Device::Cpu, Start::Fresh, &AtomicBool::new(false)).unwrap();
        set_fast_kernels(true);
        common::losses(dir.path())
    };
    let t0 = std::time::Instant::now();
    let a = run(true);
    let t1 = std::time::Instant::now();
    let b = run(false);
    println!("fast run {:?}, reference run {:?}", t1 - t0, t1.elapsed());
    assert_eq!(a.len(), 5);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-4, "fast {a:?} vs reference {b:?}");
    }
    println!("losses fast {a:?}\nlosses reference {b:?}");
}
