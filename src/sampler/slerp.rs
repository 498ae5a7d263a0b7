//! Spherical interpolation between latents (Shoemake 1985), as diffusion-model interpolation
//! walks use it: Gaussian latents live near a sphere, and a straight line between two of them
//! passes through lower-norm points the model never saw (a washed-out middle frame).
use crate::error::{Error, Result};
use candle_core::Tensor;

/// The point a fraction `t` of the way from `a` to `b` along the great circle through them
/// (scaled linearly in norm); nearly parallel latents fall back to the straight line.
pub fn slerp(a: &Tensor, b: &Tensor, t: f64) -> Result<Tensor> {
    if a.dims() != b.dims() {
        return Err(Error::invalid(format!(
            "latents {:?} and {:?} differ in shape",
            a.dims(),
            b.dims()
        )));
    }
    let dot = |x: &Tensor, y: &Tensor| -> Result<f64> {
        Ok((x * y)?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?)
    };
    let (na, nb) = (dot(a, a)?.sqrt(), dot(b, b)?.sqrt());
    if na == 0.0 || nb == 0.0 {
        return Ok(((a * (1.0 - t))? + (b * t)?)?);
    }
    let cos = (dot(a, b)? / (na * nb)).clamp(-1.0, 1.0);
    let theta = cos.acos();
    // sin(theta) below 1e-4: the arc is a line to ~1e-8.
    if theta.sin().abs() < 1e-4 {
        return Ok(((a * (1.0 - t))? + (b * t)?)?);
    }
    let s = theta.sin();
    let (ca, cb) = (((1.0 - t) * theta).sin() / s, (t * theta).sin() / s);
    Ok(((a * ca)? + (b * cb)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn slerp_follows_the_circle() {
        let d = Device::Cpu;
        let a = Tensor::new(&[1f32, 0.0], &d).unwrap();
        let b = Tensor::new(&[0f32, 1.0], &d).unwrap();
        let v: Vec<f32> = slerp(&a, &b, 0.5).unwrap().to_vec1().unwrap();
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!((v[0] - h).abs() < 1e-6 && (v[1] - h).abs() < 1e-6, "{v:?}");
        // Endpoints are the latents themselves; parallel ones interpolate linearly.
        let e: Vec<f32> = slerp(&a, &b, 1.0).unwrap().to_vec1().unwrap();
        assert!(e[0].abs() < 1e-6 && (e[1] - 1.0).abs() < 1e-6);
        let two = Tensor::new(&[2f32, 0.0], &d).unwrap();
        let m: Vec<f32> = slerp(&a, &two, 0.5).unwrap().to_vec1().unwrap();
        assert!((m[0] - 1.5).abs() < 1e-6 && m[1] == 0.0);
    }
}
