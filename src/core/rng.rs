//! Seeded, parallel Gaussian noise.
//!
//! Candle's CPU `randn` cannot be seeded and runs on one thread, so noise comes from here.
//! The generator is counter-based over fixed chunks: element `i` of draw `n` depends only on
//! (seed, n, i / CHUNK), so a seed gives the same noise whatever the thread count, and the
//! whole state needed to resume is `(seed, draws)`.
use candle_core::{Device, Shape, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Elements per independent sub-stream: large enough to amortise seeding, small enough to
/// split a 28x28 batch across both cores.
pub const CHUNK: usize = 8192;

/// splitmix64 finaliser: decorrelates (seed, draw, chunk) into a sub-stream seed.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn stream_rng(seed: u64, draw: u64, chunk: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(mix(mix(seed ^ mix(draw)) ^ chunk))
}

/// Fill `out` with N(0,1) samples of draw `draw` under `seed`, in parallel over chunks.
pub fn fill_normal(seed: u64, draw: u64, out: &mut [f32]) {
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, buf)| fill_normal_chunk(seed, draw, c as u64, buf));
}

/// Chunk `chunk` (of `CHUNK` elements) of draw `draw`: lets fused kernels generate noise
/// in the same pass that consumes it.
pub fn fill_normal_chunk(seed: u64, draw: u64, chunk: u64, buf: &mut [f32]) {
    let mut rng = stream_rng(seed, draw, chunk);
    for v in buf.iter_mut() {
        *v = StandardNormal.sample(&mut rng);
    }
}

/// Uniform u64s for the same (seed, draw) addressing; used for timesteps and shuffles.
pub fn fill_u64(seed: u64, draw: u64, out: &mut [u64]) {
    use rand::RngCore;
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, buf)| {
        let mut rng = stream_rng(seed, draw, c as u64);
        for v in buf.iter_mut() {
            *v = rng.next_u64();
        }
    });
}

/// A stateful noise source: each call is a fresh draw. Serialisable for training resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoiseRng {
    pub seed: u64,
    /// Number of draws made so far.
    pub draws: u64,
}

impl NoiseRng {
    pub fn new(seed: u64) -> Self {
        Self { seed, draws: 0 }
    }

    fn next_draw(&mut self) -> u64 {
        let d = self.draws;
        self.draws += 1;
        d
    }

    /// A host vector of `n` standard normals.
    pub fn normal_vec(&mut self, n: usize) -> Vec<f32> {
        let mut v = vec![0f32; n];
        fill_normal(self.seed, self.next_draw(), &mut v);
        v
    }

    /// A standard-normal f32 tensor of `shape` on `device` (generated on the host, then moved).
    pub fn randn(
        &mut self,
        shape: impl Into<Shape>,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let shape = shape.into();
        let v = self.normal_vec(shape.elem_count());
        Tensor::from_vec(v, shape, &Device::Cpu)?.to_device(device)
    }

    /// `n` integers uniform in `[0, upper)`.
    pub fn uniform_below(&mut self, n: usize, upper: u64) -> Vec<u64> {
        let mut v = vec![0u64; n];
        fill_u64(self.seed, self.next_draw(), &mut v);
        // Lemire's multiply-shift: bias below 2^-40 for upper <= 2^24, fine for timesteps.
        v.iter()
            .map(|x| ((*x as u128 * upper as u128) >> 64) as u64)
            .collect()
    }

    /// Uniform floats in [0, 1).
    pub fn uniform_f32(&mut self, n: usize) -> Vec<f32> {
        let mut v = vec![0u64; n];
        fill_u64(self.seed, self.next_draw(), &mut v);
        v.iter()
            .map(|x| (x >> 40) as f32 / (1u64 << 24) as f32)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_noise_any_thread_count() {
        let mut a = vec![0f32; 3 * CHUNK + 17];
        fill_normal(7, 3, &mut a);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let mut b = vec![0f32; a.len()];
        pool.install(|| fill_normal(7, 3, &mut b));
        assert_eq!(a, b);
        let mut c = vec![0f32; a.len()];
        fill_normal(8, 3, &mut c);
        assert_ne!(a, c);
    }

    #[test]
    fn moments_are_standard_normal() {
        let n = 1 << 20;
        let v = NoiseRng::new(0).normal_vec(n);
        let mean = v.iter().map(|x| *x as f64).sum::<f64>() / n as f64;
        let var = v.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        // Standard errors: mean 1/sqrt(n) ~ 1e-3, variance sqrt(2/n) ~ 1.4e-3; 5 sigma bounds.
        assert!(mean.abs() < 5e-3, "mean {mean}");
        assert!((var - 1.0).abs() < 7e-3, "var {var}");
    }

    /// The empirical CDF against the normal CDF at a few points (and the tails), 2^22 draws:
    /// a Kolmogorov-style bound of 3e-3 is ~6 standard errors at n = 4M.
    #[test]
    fn distribution_matches_normal_cdf() {
        let n = 1 << 22;
        let v = NoiseRng::new(42).normal_vec(n);
        // Phi(x) for x = -3, -2, -1, 0, 1, 2, 3, from tables.
        let pts = [
            (-3.0f32, 0.001_349_898),
            (-2.0, 0.022_750_132),
            (-1.0, 0.158_655_254),
            (0.0, 0.5),
            (1.0, 0.841_344_746),
            (2.0, 0.977_249_868),
            (3.0, 0.998_650_102),
        ];
        for (x, phi) in pts {
            let frac = v.iter().filter(|y| **y < x).count() as f64 / n as f64;
            let se = (phi * (1.0 - phi) / n as f64).sqrt();
            assert!(
                (frac - phi).abs() < 6.0 * se + 1e-6,
                "P(X<{x}) = {frac}, expected {phi}"
            );
        }
        // The tail beyond R = 3.44 is reached: P(|X| > 3.5) = 4.65e-4.
        let tail = v.iter().filter(|y| y.abs() > 3.5).count() as f64 / n as f64;
        assert!(
            (tail - 4.652e-4).abs() < 6.0 * (4.652e-4 / n as f64).sqrt(),
            "{tail}"
        );
        assert!(v.iter().all(|y| y.is_finite()));
    }

    #[test]
    fn successive_draws_differ_and_resume() {
        let mut r = NoiseRng::new(1);
        let a = r.normal_vec(100);
        let saved = r;
        let b = r.normal_vec(100);
        assert_ne!(a, b);
        let mut resumed = saved;
        assert_eq!(resumed.normal_vec(100), b);
        let ts = NoiseRng::new(2).uniform_below(10000, 1000);
        assert!(ts.iter().all(|t| *t < 1000));
        assert!(ts.contains(&999) && ts.contains(&0));
    }
}
