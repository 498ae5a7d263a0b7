//! Converting a model output to (x0, eps) and small tensor helpers shared by the steps.
//! Coefficients are formed in f64 from the alpha_bar values a step is given, then applied
//! to f32 tensors (as diffusers does with its f32 scalars).
use super::types::PredictionType;
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};

/// `sum_i c_i * x_i` for same-shape f32 tensors.
pub fn lincomb(terms: &[(f64, &Tensor)]) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for (c, x) in terms {
        let term = x.affine(*c, 0.0)?;
        acc = Some(match acc {
            None => term,
            Some(a) => (a + term)?,
        });
    }
    acc.ok_or_else(|| Error::invalid("lincomb of no terms"))
}

/// Check that model output and sample agree in shape and are f32.
pub fn check_pair(model_output: &Tensor, sample: &Tensor) -> Result<()> {
    if model_output.dims() != sample.dims() {
        return Err(Error::Model(format!(
            "model output has shape {:?} but the sample has shape {:?}",
            model_output.dims(),
            sample.dims()
        )));
    }
    for (what, x) in [("model output", model_output), ("sample", sample)] {
        if x.dtype() != DType::F32 {
            return Err(Error::invalid(format!(
                "{what} has dtype {:?}; samplers run in f32",
                x.dtype()
            )));
        }
    }
    Ok(())
}

/// (x0, eps) implied by `model_output` at a timestep with cumulative alpha `ab`.
/// Formulas and operation order follow diffusers' DDIM/DDPM `step`.
pub fn x0_and_eps(
    model_output: &Tensor,
    sample: &Tensor,
    ab: f64,
    prediction: PredictionType,
) -> Result<(Tensor, Tensor)> {
    let (a, b) = (ab.sqrt(), (1.0 - ab).sqrt());
    Ok(match prediction {
        PredictionType::Epsilon => {
            let x0 = (sample - model_output.affine(b, 0.0)?)?.affine(1.0 / a, 0.0)?;
            (x0, model_output.clone())
        }
        PredictionType::Sample => {
            let eps = (sample - model_output.affine(a, 0.0)?)?.affine(1.0 / b, 0.0)?;
            (model_output.clone(), eps)
        }
        PredictionType::VPrediction => (
            lincomb(&[(a, sample), (-b, model_output)])?,
            lincomb(&[(a, model_output), (b, sample)])?,
        ),
    })
}

/// clip_sample: clamp x0 to [-range, range].
pub fn clip(x0: Tensor, range: Option<f64>) -> Result<Tensor> {
    Ok(match range {
        Some(r) => x0.clamp(-r, r)?,
        None => x0,
    })
}

/// `x / c` as torch divides by a float32 scalar (a true division, not a multiplication by
/// the reciprocal): sigma-space steps at sigma ~ 2e4 cancel terms of that size, where the
/// last bit shows.
pub fn div(x: &Tensor, c: f32) -> Result<Tensor> {
    Ok(x.broadcast_div(&Tensor::new(c, x.device())?)?)
}

/// `x * c` with a float32 scalar.
pub fn mul(x: &Tensor, c: f32) -> Result<Tensor> {
    Ok(x.affine(c as f64, 0.0)?)
}
