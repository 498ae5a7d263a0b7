//! Cost of one scheduler step on a [64,1,28,28] batch (CPU, median of repeats), to compare
//! with a UNet step: `cargo bench --bench sampler`.
use candle_core::{Device, Tensor};
use diffuse::core::rng::NoiseRng;
use diffuse::sampler::{build, SamplerConfig, SamplerKind};
use std::time::Instant;

fn median_step(kind: SamplerKind, eta: f64) -> f64 {
    let cfg = SamplerConfig {
        kind,
        steps: 50,
        eta,
        ..SamplerConfig::default()
    };
    let scale = build(&cfg).unwrap().init_noise_sigma();
    let mut rng = NoiseRng::new(0);
    let x: Tensor = rng.randn((64, 1, 28, 28), &Device::Cpu).unwrap();
    let eps: Tensor = rng.randn((64, 1, 28, 28), &Device::Cpu).unwrap();
    let mut times = Vec::new();
    for _ in 0..30 {
        let mut s = build(&cfg).unwrap();
        // Steps 0..4 so the multistep samplers reach their higher-order updates (and
        // Heun does one predictor and one corrector); time steps 2 and 3, each with the
        // model-input scaling a pipeline does.
        let xs = (&x * scale).unwrap();
        for i in 0..2 {
            s.step(i, &eps, &xs, &mut rng).unwrap();
        }
        let t0 = Instant::now();
        for i in 2..4 {
            std::hint::black_box(s.scale_model_input(i, &xs).unwrap());
            std::hint::black_box(s.step(i, &eps, &xs, &mut rng).unwrap());
        }
        times.push(t0.elapsed().as_secs_f64() / 2.0);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[times.len() / 2]
}

fn main() {
    println!("one scheduler step, [64,1,28,28] f32, CPU, median of 30");
    println!(
        "{:>16}: {:8.1} us",
        "ddim eta=1",
        median_step(SamplerKind::Ddim, 1.0) * 1e6
    );
    for kind in SamplerKind::ALL {
        println!(
            "{:>16}: {:8.1} us",
            kind.name(),
            median_step(kind, 0.0) * 1e6
        );
    }
}
