//! Training targets and loss weighting.
use crate::core::forward::ForwardProcess;
use crate::error::Result;
use crate::sampler::PredictionType;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LossWeighting {
    /// Plain MSE.
    None,
    /// Min-SNR-5 (Hang et al. 2023): per-sample weight min(SNR, 5) expressed for the target.
    #[value(name = "min-snr-5")]
    MinSnr5,
}

/// The regression target for `prediction`: eps, v = sqrt(abar) eps - sqrt(1-abar) x0, or x0.
pub fn target(
    fp: &ForwardProcess,
    prediction: PredictionType,
    x0: &Tensor,
    t: &Tensor,
    eps: &Tensor,
) -> Result<Tensor> {
    Ok(match prediction {
        PredictionType::Epsilon => eps.clone(),
        PredictionType::VPrediction => fp.velocity(x0, t, eps)?,
        PredictionType::Sample => x0.clone(),
    })
}

/// Per-sample weights (host), so the weighted loss is MSE on x0 times min(SNR, gamma):
/// eps-prediction min(snr, g)/snr, v-prediction min(snr, g)/(snr + 1), x0-prediction min(snr, g).
pub fn weights(
    fp: &ForwardProcess,
    weighting: LossWeighting,
    prediction: PredictionType,
    t: &[u32],
) -> Option<Vec<f32>> {
    let gamma = match weighting {
        LossWeighting::None => return None,
        LossWeighting::MinSnr5 => 5.0,
    };
    Some(
        t.iter()
            .map(|&ti| {
                let snr = fp.schedule.row(ti as usize).snr;
                let m = snr.min(gamma);
                (match prediction {
                    PredictionType::Epsilon => m / snr,
                    PredictionType::VPrediction => m / (snr + 1.0),
                    PredictionType::Sample => m,
                }) as f32
            })
            .collect(),
    )
}

/// The MSE of each sample [B].
pub fn per_sample_mse(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    Ok((pred - target)?.sqr()?.flatten_from(1)?.mean(1)?)
}

/// The mean of per-sample losses [B], optionally weighted.
pub fn weighted_mean(per: &Tensor, w: Option<&Tensor>) -> Result<Tensor> {
    Ok(match w {
        Some(w) => (per * w)?.mean_all()?,
        None => per.mean_all()?,
    })
}

/// Mean over samples of (optionally weighted) per-sample MSE.
pub fn mse(pred: &Tensor, target: &Tensor, w: Option<&Tensor>) -> Result<Tensor> {
    weighted_mean(&per_sample_mse(pred, target)?, w)
}

/// Band `j` of `bands` equal bands of [0, t_total): its timesteps.
pub fn band_range(j: usize, bands: usize, t_total: usize) -> std::ops::Range<usize> {
    j * t_total / bands..(j + 1) * t_total / bands
}

/// The band holding timestep `t` (< t_total; bands <= t_total).
pub fn band_of(t: usize, bands: usize, t_total: usize) -> usize {
    let mut j = (t * bands / t_total).min(bands - 1);
    while band_range(j, bands, t_total).start > t {
        j -= 1;
    }
    while band_range(j, bands, t_total).end <= t {
        j += 1;
    }
    j
}

/// Bands of t in loss.csv's column group.
pub const LOG_BANDS: usize = 10;

/// Training's per-sample losses summed by band of t on the device between log rows (one
/// tiny matmul a step, read back only when a row is written).
pub struct BandLoss {
    bands: usize,
    t_total: usize,
    sums: Option<Tensor>,
    counts: Vec<usize>,
}

impl BandLoss {
    pub fn new(t_total: usize) -> Self {
        let bands = LOG_BANDS.min(t_total).max(1);
        Self {
            bands,
            t_total,
            sums: None,
            counts: vec![0; bands],
        }
    }

    /// Column names: `loss_tLO-HI` per band.
    pub fn names(&self) -> Vec<String> {
        (0..self.bands)
            .map(|j| {
                let r = band_range(j, self.bands, self.t_total);
                format!("loss_t{}-{}", r.start, r.end - 1)
            })
            .collect()
    }

    /// Add a batch's per-sample losses `per` [B] at timesteps `t`.
    pub fn add(&mut self, per: &Tensor, t: &[u32]) -> Result<()> {
        let mut onehot = vec![0f32; t.len() * self.bands];
        for (i, ti) in t.iter().enumerate() {
            let j = band_of(*ti as usize, self.bands, self.t_total);
            onehot[i * self.bands + j] = 1.0;
            self.counts[j] += 1;
        }
        let onehot = Tensor::from_vec(onehot, (t.len(), self.bands), per.device())?;
        let s = per
            .detach()
            .to_dtype(candle_core::DType::F32)?
            .unsqueeze(0)?
            .matmul(&onehot)?;
        self.sums = Some(match self.sums.take() {
            Some(a) => (a + s)?,
            None => s,
        });
        Ok(())
    }

    /// The mean loss in each band since the last call (None where no sample fell), and reset.
    pub fn take(&mut self) -> Result<Vec<Option<f64>>> {
        self.take_reduced(|_| Ok(()))
    }

    /// `take` with the sums and counts first summed by `reduce` (over the ranks of a world).
    pub fn take_reduced(
        &mut self,
        reduce: impl FnOnce(&mut [f64]) -> Result<()>,
    ) -> Result<Vec<Option<f64>>> {
        let sums: Vec<f32> = match self.sums.take() {
            Some(s) => s.flatten_all()?.to_vec1()?,
            None => vec![0.0; self.bands],
        };
        let mut v: Vec<f64> = sums.iter().map(|s| *s as f64).collect();
        v.extend(self.counts.iter().map(|c| *c as f64));
        reduce(&mut v)?;
        let (s, c) = v.split_at(self.bands);
        let out = s
            .iter()
            .zip(c)
            .map(|(s, c)| (*c > 0.0).then(|| s / c))
            .collect();
        self.counts.fill(0);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_timestep_falls_in_its_band() {
        for (t_total, bands) in [(1000, 10), (1000, 7), (10, 10), (1, 1), (37, 5), (999, 10)] {
            let mut seen = vec![0usize; bands];
            for t in 0..t_total {
                let j = band_of(t, bands, t_total);
                assert!(
                    band_range(j, bands, t_total).contains(&t),
                    "{t} {bands} {t_total}"
                );
                seen[j] += 1;
            }
            for (j, n) in seen.iter().enumerate() {
                assert_eq!(*n, band_range(j, bands, t_total).len());
            }
        }
    }

    #[test]
    fn band_loss_means_per_band() {
        let mut b = BandLoss::new(1000);
        assert_eq!(b.names()[0], "loss_t0-99");
        assert_eq!(b.names()[9], "loss_t900-999");
        let per = Tensor::new(&[1f32, 3.0, 10.0], &candle_core::Device::Cpu).unwrap();
        b.add(&per, &[5, 99, 950]).unwrap();
        let per = Tensor::new(&[5f32], &candle_core::Device::Cpu).unwrap();
        b.add(&per, &[0]).unwrap();
        let m = b.take().unwrap();
        assert_eq!(m[0], Some(3.0));
        assert_eq!(m[9], Some(10.0));
        assert!(m[1..9].iter().all(|v| v.is_none()));
        assert!(b.take().unwrap().iter().all(|v| v.is_none()));
    }
}
