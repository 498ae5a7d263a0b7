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

/// Mean over samples of (optionally weighted) per-sample MSE.
pub fn mse(pred: &Tensor, target: &Tensor, w: Option<&Tensor>) -> Result<Tensor> {
    let per = (pred - target)?.sqr()?.flatten_from(1)?.mean(1)?;
    Ok(match w {
        Some(w) => (per * w)?.mean_all()?,
        None => per.mean_all()?,
    })
}
