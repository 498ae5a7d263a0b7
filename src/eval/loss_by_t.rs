//! Where in t the loss lives: a model's denoising loss on real images in equal bands of t,
//! with the forward process of the core and the training target of `train::loss`, and the
//! same t and noise for every model given the same seed and images, so runs compare.
use crate::core::forward::ForwardProcess;
use crate::core::rng::NoiseRng;
use crate::error::{Error, Result};
use crate::sampler::PredictionType;
use crate::train::loss;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// The loss in one band of timesteps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Band {
    /// First and last timestep of the band (inclusive).
    pub t_lo: usize,
    pub t_hi: usize,
    /// Mean squared error of the model's output against its training target.
    pub loss: f64,
    /// Mean squared error of the x0 the output implies: the same yardstick whatever the
    /// model predicts (eps error e gives x0 error e sqrt((1 - abar) / abar), v error e gives
    /// e sqrt(1 - abar)).
    pub x0_loss: f64,
}

/// `bands` equal bands of T timesteps need 1 <= bands <= T.
pub fn check_bands(bands: usize, t_total: usize) -> Result<()> {
    if bands == 0 || bands > t_total {
        return Err(Error::invalid(format!(
            "--buckets {bands} must be in [1, {t_total}] (one timestep per band at most)"
        )));
    }
    Ok(())
}

/// A model for the loss: (x_t [B,..], t [B] f32, which images of the set are in the batch).
pub type RowModel<'m> = dyn FnMut(&Tensor, &Tensor, Range<usize>) -> Result<Tensor> + 'm;

/// The loss of `model` on `images` [N, C, H, W] (host, in [-1, 1]) in `bands` equal bands of
/// [0, T): in each band every image gets one t drawn uniformly from the band and one noise
/// draw, both from `seed` and the band alone. `on_batch` ticks once per forward pass.
#[allow(clippy::too_many_arguments)]
pub fn loss_by_t(
    model: &mut RowModel,
    images: &Tensor,
    fp: &ForwardProcess,
    prediction: PredictionType,
    bands: usize,
    seed: u64,
    batch: usize,
    on_batch: &mut dyn FnMut(),
) -> Result<Vec<Band>> {
    let t_total = fp.schedule.len();
    check_bands(bands, t_total)?;
    let n = images.dim(0)?;
    if n == 0 || batch == 0 {
        return Err(Error::invalid("no images to measure the loss on"));
    }
    let device = fp.device().clone();
    let mut out = Vec::with_capacity(bands);
    for j in 0..bands {
        let r = loss::band_range(j, bands, t_total);
        let (lo, hi) = (r.start, r.end);
        // Drawn on the host from (seed, band): the same for every model and device.
        let mut rng = NoiseRng::new(seed ^ ((j as u64 + 1) << 32));
        let ts: Vec<u32> = rng
            .uniform_below(n, (hi - lo) as u64)
            .into_iter()
            .map(|t| (t as usize + lo) as u32)
            .collect();
        let eps = rng.randn(images.shape().clone(), &Device::Cpu)?;
        let (mut sum, mut sum_x0) = (0.0, 0.0);
        let mut start = 0;
        while start < n {
            let b = batch.min(n - start);
            let x0 = images.narrow(0, start, b)?.to_device(&device)?;
            let e = eps.narrow(0, start, b)?.to_device(&device)?;
            let t = Tensor::from_slice(&ts[start..start + b], b, &device)?;
            let x_t = fp.q_sample(&x0, &t, &e)?;
            let target = loss::target(fp, prediction, &x0, &t, &e)?;
            let tf = t.to_dtype(candle_core::DType::F32)?;
            let pred = model(&x_t, &tf, start..start + b)?;
            let mse = loss::mse(&pred, &target, None)?.to_scalar::<f32>()? as f64;
            let x0_hat = match prediction {
                PredictionType::Epsilon => fp.x0_from_eps(&x_t, &t, &pred)?,
                PredictionType::VPrediction => fp.x0_from_v(&x_t, &t, &pred)?,
                PredictionType::Sample => pred,
            };
            let mse_x0 = loss::mse(&x0_hat, &x0, None)?.to_scalar::<f32>()? as f64;
            sum += mse * b as f64;
            sum_x0 += mse_x0 * b as f64;
            start += b;
            on_batch();
        }
        out.push(Band {
            t_lo: lo,
            t_hi: hi - 1,
            loss: sum / n as f64,
            x0_loss: sum_x0 / n as f64,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::schedule::{BetaSchedule, Schedule};

    /// The ideal epsilon model of data that is all zeros predicts eps = x_t / sqrt(1 - abar)
    /// exactly: zero loss in every band; predicting zeros gives the noise's variance, 1.
    #[test]
    fn exact_and_blind_models() {
        let fp = ForwardProcess::new(
            Schedule::named(BetaSchedule::Linear, 100).unwrap(),
            &Device::Cpu,
        )
        .unwrap();
        let images = Tensor::zeros((64, 1, 4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let mut exact = |x: &Tensor, t: &Tensor, _: Range<usize>| -> Result<Tensor> {
            let t: Vec<f32> = t.to_vec1()?;
            let s: Vec<f32> = t
                .iter()
                .map(|t| fp.schedule.row(*t as usize).sqrt_one_minus_alpha_bar as f32)
                .collect();
            let s = Tensor::from_vec(s, (t.len(), 1, 1, 1), x.device())?;
            Ok(x.broadcast_div(&s)?)
        };
        let bands = loss_by_t(
            &mut exact,
            &images,
            &fp,
            PredictionType::Epsilon,
            5,
            0,
            16,
            &mut || {},
        )
        .unwrap();
        assert_eq!(bands.len(), 5);
        assert_eq!((bands[0].t_lo, bands[0].t_hi, bands[4].t_hi), (0, 19, 99));
        for b in &bands {
            assert!(b.loss < 1e-10 && b.x0_loss < 1e-6, "{b:?}");
        }
        let mut blind =
            |x: &Tensor, _: &Tensor, _: Range<usize>| -> Result<Tensor> { Ok(x.zeros_like()?) };
        let bands = loss_by_t(
            &mut blind,
            &images,
            &fp,
            PredictionType::Epsilon,
            2,
            0,
            64,
            &mut || {},
        )
        .unwrap();
        for b in &bands {
            // 1024 unit normals: mean square 1 within a few percent.
            assert!((b.loss - 1.0).abs() < 0.15, "{b:?}");
        }
        // Predicting eps = 0 means x0_hat = x_t / sqrt(abar): x0 error (1 - abar) / abar per
        // pixel, far larger in the noisier band.
        assert!(bands[1].x0_loss > 5.0 * bands[0].x0_loss, "{bands:?}");
    }
}
