//! The noise seam: stochastic samplers (DDPM, DDIM with eta > 0, Euler ancestral,
//! DPM-Solver++ SDE) draw their noise from a `NoiseSource` they are given, so a whole
//! stochastic chain can be replayed from recorded draws (diffusers' golden chains) or driven
//! by any generator. Our seeded `NoiseRng` is the default source.
use crate::core::rng::NoiseRng;
use crate::error::{Error, Result};
use candle_core::{DType, Device, Shape, Tensor};

/// Where a sampler's in-step noise comes from: each call is the next standard-normal draw.
pub trait NoiseSource {
    fn randn(&mut self, shape: &Shape, device: &Device) -> Result<Tensor>;
}

impl NoiseSource for NoiseRng {
    fn randn(&mut self, shape: &Shape, device: &Device) -> Result<Tensor> {
        Ok(NoiseRng::randn(self, shape.clone(), device)?)
    }
}

/// Draws played back in order (k-th call gets the k-th tensor), e.g. noise recorded from a
/// diffusers run. Running out, or a draw of another shape, is an error.
pub struct Recorded {
    draws: Vec<Tensor>,
    next: usize,
}

impl Recorded {
    pub fn new(draws: Vec<Tensor>) -> Self {
        Self { draws, next: 0 }
    }

    /// Split a stacked [K, ...] tensor into K draws.
    pub fn from_stacked(stacked: &Tensor) -> Result<Self> {
        let k = stacked.dim(0)?;
        let draws = (0..k)
            .map(|i| stacked.get(i))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self::new(draws))
    }

    /// How many draws were taken.
    pub fn used(&self) -> usize {
        self.next
    }
}

impl NoiseSource for Recorded {
    fn randn(&mut self, shape: &Shape, device: &Device) -> Result<Tensor> {
        let z = self.draws.get(self.next).ok_or_else(|| {
            Error::invalid(format!(
                "recorded noise ran out after {} draws",
                self.draws.len()
            ))
        })?;
        if z.shape() != shape {
            return Err(Error::invalid(format!(
                "recorded draw {} has shape {:?}, the sampler asked for {:?}",
                self.next,
                z.dims(),
                shape.dims()
            )));
        }
        self.next += 1;
        Ok(z.to_dtype(DType::F32)?.to_device(device)?)
    }
}
