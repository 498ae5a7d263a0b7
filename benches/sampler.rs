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
    let mut rng = NoiseRng::new(0);
    let x: Tensor = rng.randn((64, 1, 28, 28), &Device::Cpu).unwrap();
    let eps: Tensor = rng.randn((64, 1, 28, 28), &Device::Cpu).unwrap();
    let mut times = Vec::new();
    for _ in 0..30 {
        let mut s = build(&cfg).unwrap();
        // Steps 0..3 so DPM-Solver++ reaches its second-order update; time steps 1 and 2.
        s.step(0, &eps, &x, &mut rng).unwrap();
        let t0 = Instant::now();
        for i in 1..3 {
            std::hint::black_box(s.step(i, &eps, &x, &mut rng).unwrap());
        }
        times.push(t0.elapsed().as_secs_f64() / 2.0);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[times.len() / 2]
}

fn main() {
    println!("one scheduler step, [64,1,28,28] f32, CPU, median of 30");
    for (name, kind, eta) in [
        ("ddim eta=0", SamplerKind::Ddim, 0.0),
        ("ddim eta=1", SamplerKind::Ddim, 1.0),
        ("ddpm", SamplerKind::Ddpm, 0.0),
        ("dpm-solver++ 2M", SamplerKind::DpmSolverPP, 0.0),
    ] {
        println!("{name:>16}: {:8.1} us", median_step(kind, eta) * 1e6);
    }
}
