//! `diffuse train` on a tiny 28x28 UNet and the bundled digits: the loss falls, the output
//! directory is complete and reloads, a resumed run equals an uninterrupted one, Ctrl-C leaves a
//! loadable checkpoint, a diverging run stops with a clear message, and the training targets
//! equal the core's formulas.
mod common;
use candle_core::{Device, Tensor};
use diffuse::core::forward::ForwardProcess;
use diffuse::core::rng::NoiseRng;
use diffuse::core::schedule::{BetaSchedule, Schedule};
use diffuse::sampler::PredictionType;
use diffuse::train::loss::{self, LossWeighting};
use diffuse::train::optim::LrSchedule;
use diffuse::train::{train, Outcome, Start, TrainConfig};
use std::path::Path;
use std::sync::atomic::AtomicBool;

fn tiny(out: &Path) -> TrainConfig {
    TrainConfig {
        dataset: "mnist".into(),
        data_dir: out.join("no-local-data"),
        model_config: common::data_path("tiny28/config.json")
            .display()
            .to_string(),
        out: out.to_path_buf(),
        steps: Some(6),
        batch_size: 8,
        lr: 1e-3,
        warmup: 2,
        log_every: 1,
        checkpoint_every: 3,
        sample_every: 0,
        sample_steps: 3,
        num_samples: 4,
        limit: Some(64),
        progress: false,
        ..TrainConfig::default()
    }
}

fn losses(out: &Path) -> Vec<(usize, f64)> {
    std::fs::read_to_string(out.join("loss.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].parse().unwrap(), f[1].parse().unwrap())
        })
        .collect()
}

fn last_loss(out: &Path) -> f64 {
    losses(out).last().unwrap().1
}

fn no_interrupt() -> AtomicBool {
    AtomicBool::new(false)
}

fn offline() {
    std::env::set_var("HF_HUB_OFFLINE", "1");
    std::env::set_var(
        "HF_HOME",
        std::env::temp_dir().join("diffuse-test-empty-hf-home"),
    );
}

#[test]
fn loss_decreases_on_a_fixed_batch() {
    offline();
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        steps: Some(60),
        limit: Some(8),
        lr: 2e-3,
        warmup: 0,
        lr_schedule: LrSchedule::Constant,
        checkpoint_every: 60,
        ..tiny(dir.path())
    };
    assert_eq!(
        train(&cfg, &Device::Cpu, Start::Fresh, &no_interrupt()).unwrap(),
        Outcome::Finished {
            step: 60,
            loss: last_loss(dir.path())
        }
    );
    let l = losses(dir.path());
    assert_eq!(l.len(), 60);
    let first = l[..10].iter().map(|x| x.1).sum::<f64>() / 10.0;
    let last = l[50..].iter().map(|x| x.1).sum::<f64>() / 10.0;
    println!("mean loss steps 1-10 {first:.4}, 51-60 {last:.4}");
    assert!(first > 0.5, "starts near the unit noise variance: {first}");
    assert!(last < 0.6 * first, "loss fell from {first} to {last}");
}

#[test]
fn output_directory_is_complete_and_reloads() {
    offline();
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        sample_every: 3,
        ..tiny(dir.path())
    };
    train(&cfg, &Device::Cpu, Start::Fresh, &no_interrupt()).unwrap();
    let out = dir.path();
    for f in [
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
        "model_index.json",
        "training_state.safetensors",
        "loss.csv",
        "loss.png",
        "samples/step_000003.png",
        "samples/step_000006.png",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let (ucfg, _, model) = diffuse::unet::load(&out.join("unet"), &Device::Cpu).unwrap();
    assert_eq!(ucfg.image_shape().unwrap(), (1, 28, 28));
    let x = NoiseRng::new(0)
        .randn((2, 1, 28, 28), &Device::Cpu)
        .unwrap();
    let y = model
        .forward(&x, &Tensor::new(&[3u32, 900], &Device::Cpu).unwrap(), false)
        .unwrap();
    assert_eq!(y.dims(), &[2, 1, 28, 28]);
    let sc = diffuse::sampler::SchedulerConfig::load(&out.join("scheduler/scheduler_config.json"))
        .unwrap();
    assert_eq!(sc.class_name, "DPMSolverMultistepScheduler");
    assert_eq!(
        sc.variance_type,
        Some(diffuse::sampler::VarianceType::FixedSmall)
    );
    assert_eq!(sc.num_train_timesteps, 1000);
    assert_eq!(sc.beta_schedule, "linear");
    assert_eq!(sc.prediction_type, PredictionType::Epsilon);
    let grid = image::open(out.join("samples/step_000006.png")).unwrap();
    assert!(grid.width() >= 2 * 28);
    assert_eq!(image::open(out.join("loss.png")).unwrap().width(), 900);
    let l = losses(out);
    assert_eq!(
        l.iter().map(|x| x.0).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6]
    );
    assert!(l.iter().all(|x| x.1.is_finite()));
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    offline();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let base = |out: &Path, steps| TrainConfig {
        steps: Some(steps),
        lr_schedule: LrSchedule::Constant,
        ..tiny(out)
    };
    train(
        &base(a.path(), 6),
        &Device::Cpu,
        Start::Fresh,
        &no_interrupt(),
    )
    .unwrap();
    // Stop after 3 steps (a checkpoint is written at the end), then resume to 6.
    train(
        &base(b.path(), 3),
        &Device::Cpu,
        Start::Fresh,
        &no_interrupt(),
    )
    .unwrap();
    train(
        &base(b.path(), 6),
        &Device::Cpu,
        Start::Resume,
        &no_interrupt(),
    )
    .unwrap();
    let (la, lb) = (losses(a.path()), losses(b.path()));
    assert_eq!(la.len(), 6);
    assert_eq!(la, lb, "losses of the resumed run differ");
    // The loss by band of t: ten columns over [0, T), the same after resuming, each row's
    // loss a mean of its bands' (unweighted loss: between the smallest and the largest).
    let bands = |dir: &Path| -> (Vec<String>, Vec<Vec<Option<f64>>>) {
        let csv = std::fs::read_to_string(dir.join("loss.csv")).unwrap();
        let mut lines = csv.lines();
        let head = lines
            .next()
            .unwrap()
            .split(',')
            .skip(4)
            .map(String::from)
            .collect();
        let rows = lines
            .map(|l| l.split(',').skip(4).map(|v| v.parse().ok()).collect())
            .collect();
        (head, rows)
    };
    let (ha, ba) = bands(a.path());
    assert_eq!(ha.len(), 10);
    assert_eq!(
        (ha[0].as_str(), ha[9].as_str()),
        ("loss_t0-99", "loss_t900-999")
    );
    assert_eq!((ha.clone(), ba.clone()), bands(b.path()));
    for (row, (_, loss)) in ba.iter().zip(&la) {
        let v: Vec<f64> = row.iter().flatten().copied().collect();
        assert!(!v.is_empty() && v.iter().all(|x| x.is_finite() && *x > 0.0));
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, 0f64), |(l, h), x| (l.min(*x), h.max(*x)));
        assert!(
            lo * (1.0 - 1e-5) <= *loss && *loss <= hi * (1.0 + 1e-5),
            "{loss} {v:?}"
        );
    }
    let wa = std::fs::read(a.path().join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    let wb = std::fs::read(b.path().join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    assert_eq!(wa, wb, "final EMA weights differ");
}

/// A run diverging at lr 1e30 after `checkpoint_every` steps' worth of checkpoints.
fn diverge(dir: &Path, checkpoint_every: usize) -> String {
    offline();
    let cfg = TrainConfig {
        steps: Some(20),
        lr: 1e30,
        warmup: 0,
        grad_clip: None,
        checkpoint_every,
        ..tiny(dir)
    };
    let err = train(&cfg, &Device::Cpu, Start::Fresh, &no_interrupt())
        .unwrap_err()
        .to_string();
    assert!(err.contains("loss became"), "{err}");
    err
}

#[test]
fn diverging_before_any_checkpoint_names_none() {
    let dir = tempfile::tempdir().unwrap();
    let err = diverge(dir.path(), 1000);
    assert!(err.contains("No checkpoint had been written yet"), "{err}");
    assert!(!err.contains("step 0)"), "{err}");
    assert!(!dir.path().join("training_state.safetensors").exists());
}

#[test]
fn diverging_run_stops_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let err = diverge(dir.path(), 1);
    assert!(err.contains("last good checkpoint"), "{err}");
    // The last checkpoint before the bad loss is still there and loads.
    let ucfg = diffuse::unet::preset_or_file(&tiny(dir.path()).model_config).unwrap();
    let st = diffuse::train::checkpoint::load(
        &dir.path().join("training_state.safetensors"),
        &ucfg,
        &Device::Cpu,
    )
    .unwrap();
    assert!(
        st.step >= 1 && err.contains(&format!("step {}", st.step)),
        "{err} / {}",
        st.step
    );
}

#[test]
fn training_targets_equal_the_core_formulas() {
    let fp = ForwardProcess::new(
        Schedule::named(BetaSchedule::Cosine, 1000).unwrap(),
        &Device::Cpu,
    )
    .unwrap();
    let mut rng = NoiseRng::new(5);
    let x0 = rng.randn((3, 1, 4, 4), &Device::Cpu).unwrap();
    let eps = rng.randn((3, 1, 4, 4), &Device::Cpu).unwrap();
    let t = Tensor::new(&[0u32, 400, 999], &Device::Cpu).unwrap();
    let eps_t = loss::target(&fp, PredictionType::Epsilon, &x0, &t, &eps).unwrap();
    assert_eq!(common::max_abs_diff(&eps_t, &eps), 0.0);
    let x0_t = loss::target(&fp, PredictionType::Sample, &x0, &t, &eps).unwrap();
    assert_eq!(common::max_abs_diff(&x0_t, &x0), 0.0);
    let v = loss::target(&fp, PredictionType::VPrediction, &x0, &t, &eps).unwrap();
    // v = sqrt(abar) eps - sqrt(1-abar) x0, by hand in f64.
    let (xv, ev, vv): (Vec<f32>, Vec<f32>, Vec<f32>) = (
        x0.flatten_all().unwrap().to_vec1().unwrap(),
        eps.flatten_all().unwrap().to_vec1().unwrap(),
        v.flatten_all().unwrap().to_vec1().unwrap(),
    );
    for (i, ti) in [0usize, 400, 999].iter().enumerate() {
        let r = fp.schedule.row(*ti);
        for k in 0..16 {
            let j = i * 16 + k;
            let want = r.sqrt_alpha_bar * ev[j] as f64 - r.sqrt_one_minus_alpha_bar * xv[j] as f64;
            assert!((vv[j] as f64 - want).abs() < 1e-6);
        }
    }
    // Min-SNR-5 weights: eps min(snr,5)/snr, v min(snr,5)/(snr+1), x0 min(snr,5).
    let ts = [0u32, 400, 999];
    let we = loss::weights(&fp, LossWeighting::MinSnr5, PredictionType::Epsilon, &ts).unwrap();
    let wv = loss::weights(
        &fp,
        LossWeighting::MinSnr5,
        PredictionType::VPrediction,
        &ts,
    )
    .unwrap();
    for (i, ti) in ts.iter().enumerate() {
        let snr = fp.schedule.row(*ti as usize).snr;
        assert!((we[i] as f64 - snr.min(5.0) / snr).abs() < 1e-6);
        assert!((wv[i] as f64 - snr.min(5.0) / (snr + 1.0)).abs() < 1e-6);
    }
    assert!(loss::weights(&fp, LossWeighting::None, PredictionType::Epsilon, &ts).is_none());
}

#[test]
fn bad_training_parameters_are_usage_errors() {
    offline();
    let dir = tempfile::tempdir().unwrap();
    for cfg in [
        TrainConfig {
            batch_size: 0,
            ..tiny(dir.path())
        },
        TrainConfig {
            lr: -1.0,
            ..tiny(dir.path())
        },
        TrainConfig {
            ema_decay: 1.5,
            ..tiny(dir.path())
        },
        TrainConfig {
            steps: Some(0),
            ..tiny(dir.path())
        },
        TrainConfig {
            batch_size: 1000,
            ..tiny(dir.path())
        },
    ] {
        let e = train(&cfg, &Device::Cpu, Start::Fresh, &no_interrupt()).unwrap_err();
        assert!(e.is_usage(), "{e}");
    }
}
