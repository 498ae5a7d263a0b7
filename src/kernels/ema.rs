//! The EMA's update (src/train/ema.rs) over every parameter tensor at once, in place, on CUDA:
//! shadow = d * shadow + (1 - d) * param in a few multi-tensor launches
//! (src/kernels/cuda/ema.cu, src/kernels/pieces.rs) where Candle's composite takes three per
//! tensor. The same f32 operations in the same order, so the result has the composite's bits
//! (but for the sign of a zero). Elsewhere the caller runs the composite (on the CPU launches
//! cost nothing).
use crate::error::Result;
use candle_core::Tensor;

/// shadow = d * shadow + (1 - d) * param for each pair, in place: true where it ran (CUDA, all
/// f32 on one device, our kernels on, matching shapes, contiguous shadows), false where the
/// caller should run Candle's ops instead.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
pub fn update_in_place(shadows: &[&Tensor], params: &[&Tensor], d: f64) -> Result<bool> {
    #[cfg(feature = "cuda")]
    {
        let all: Vec<&Tensor> = shadows.iter().chain(params).copied().collect();
        let pairs = shadows.len() == params.len()
            && shadows
                .iter()
                .zip(params)
                .all(|(s, p)| s.is_contiguous() && s.shape() == p.shape());
        if pairs && super::pieces::takes(&all, true) {
            device::update(shadows, params, d)?;
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(feature = "cuda")]
mod device {
    use super::super::cuda::launched;
    use super::super::pieces::{contiguous, Lists};
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::Tensor;

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/ema.ptx"));

    pub(super) fn update(
        shadows: &[&Tensor],
        params: &[&Tensor],
        d: f64,
    ) -> candle_core::Result<()> {
        // Item i is (shadow i, param i); the shadows are contiguous, so `contiguous` keeps
        // their storage and the kernel writes the shadows themselves.
        let pairs: Vec<&Tensor> = shadows
            .iter()
            .zip(params)
            .flat_map(|(s, p)| [*s, *p])
            .collect();
        let held = contiguous(&pairs)?;
        let guards: Vec<_> = held.iter().map(|t| t.storage_and_layout()).collect();
        let lists = Lists::new(&guards)?;
        let (tables, reads) = lists.tables::<2, 190>()?;
        let func = lists
            .dev
            .get_or_load_custom_func("diffuse_ema_f32", "diffuse_ema", PTX)?;
        // Candle's `t * x` for f64 x is an affine op with the factor cast to f32.
        let (d32, omd) = (d as f32, (1.0 - d) as f32);
        for t in &tables {
            let mut b = func.builder();
            b.arg(t);
            b.arg(&d32);
            b.arg(&omd);
            // SAFETY: argument types and order match diffuse_ema_f32's signature; every piece
            // lies within a tensor `guards` holds. The kernel writes the shadows through the
            // addresses of read guards: each shadow is its own storage (a copy made by the
            // EMA), read by nothing else while the launch is queued, as an in-place op's would
            // be.
            unsafe { b.launch(t.config()) }.w()?;
            launched();
        }
        drop(reads);
        Ok(())
    }
}
