//! Classifier-free guidance (Ho & Salimans 2022) around a class-conditional model:
//! out = out_null + w (out_class - out_null), both halves in one batched forward pass, as
//! diffusers' pipelines do it. Any sampler runs on the guided model unchanged.
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};

/// A class-conditional denoiser: (model input [B,..], t [B] f32, labels [B] u32) -> output.
pub type CondModel<'m> = dyn FnMut(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + 'm;

/// `out_null + w (out_cond - out_null)`, in float32 in that order.
pub fn combine(out_null: &Tensor, out_cond: &Tensor, w: f64) -> Result<Tensor> {
    Ok((out_null + (out_cond - out_null)?.affine(w, 0.0)?)?)
}

/// The unconditional-looking model that guides `model` towards `labels` [B] with scale `w`;
/// `null` is the null-class label the model was trained with (label dropout). At w = 1 it is
/// the conditional model alone (one forward pass).
pub fn guided<'a>(
    model: &'a mut CondModel<'a>,
    labels: &Tensor,
    null: u32,
    w: f64,
) -> Result<impl FnMut(&Tensor, &Tensor) -> Result<Tensor> + 'a> {
    if !w.is_finite() {
        return Err(Error::invalid(format!("guidance scale {w} is not finite")));
    }
    let labels = labels.flatten_all()?.to_dtype(DType::U32)?;
    let b = labels.elem_count();
    let nulls = Tensor::full(null, b, labels.device())?;
    let both = Tensor::cat(&[&nulls, &labels], 0)?;
    Ok(move |x: &Tensor, t: &Tensor| -> Result<Tensor> {
        if x.dim(0)? != b {
            return Err(Error::invalid(format!(
                "{} class labels for a batch of {}",
                b,
                x.dim(0)?
            )));
        }
        if w == 1.0 {
            return model(x, t, &labels);
        }
        let x2 = Tensor::cat(&[x, x], 0)?;
        let t2 = Tensor::cat(&[t, t], 0)?;
        let out = model(&x2, &t2, &both)?;
        combine(&out.narrow(0, 0, b)?, &out.narrow(0, b, b)?, w)
    })
}
