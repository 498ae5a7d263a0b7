//! The sum of squares of many tensors as one device scalar: what global-norm gradient clipping
//! needs every step (src/train/optim.rs).
//!
//! Candle's composite is `sqr`, `sum_all` and an add per tensor: three launches per gradient,
//! ~550 a step at the mnist preset (182 tensors), whose GPU step is launch-bound (docs/gpu.md).
//! On CUDA (unless `DIFFUSE_CUDA_KERNELS=0`) all the tensors go through
//! src/kernels/cuda/sum_squares.cu in a few launches instead (src/kernels/pieces.rs: pieces of
//! at most 2^16 elements, up to 240 per launch), then one block sums the pieces' sums, in fixed
//! orders (the same gradients give the same bits). Elsewhere, the composite, so the
//! CPU's training is bit for bit what it was.
use crate::error::Result;
use candle_core::Tensor;

/// The sum over `ts` of the sum of their squared elements, as a scalar on their device; None
/// for no tensors.
pub fn sum_squares(ts: &[&Tensor]) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    if super::pieces::takes(ts, true) {
        return Ok(Some(device::sum_squares(ts)?));
    }
    let mut total: Option<Tensor> = None;
    for t in ts {
        let sq = t.sqr()?.sum_all()?;
        total = Some(match total {
            Some(s) => (s + sq)?,
            None => sq,
        });
    }
    Ok(total)
}

#[cfg(feature = "cuda")]
mod device {
    use super::super::cuda::launched;
    use super::super::pieces::{contiguous, Lists};
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaDevice, WrapErr};
    use candle_core::{CudaStorage, Storage, Tensor};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/sum_squares.ptx"));
    const MODULE: &str = "diffuse_sum_squares";

    pub(super) fn sum_squares(ts: &[&Tensor]) -> candle_core::Result<Tensor> {
        let held = contiguous(ts)?;
        let guards: Vec<_> = held.iter().map(|t| t.storage_and_layout()).collect();
        let lists = Lists::new(&guards)?;
        let dev = &lists.dev;
        let (tables, reads) = lists.tables::<1, 240>()?;
        let count: u32 = tables.iter().map(|t| t.count()).sum();
        if count == 0 {
            return Ok(scalar(dev.alloc_zeros::<f32>(1)?, dev));
        }
        // SAFETY: the part kernel writes every element (one per piece) before the total reads;
        // the total kernel writes `out`.
        let (part, mut out) = unsafe { (dev.alloc::<f32>(count as usize)?, dev.alloc::<f32>(1)?) };
        let func = dev.get_or_load_custom_func("diffuse_sum_squares_part_f32", MODULE, PTX)?;
        for t in &tables {
            let mut b = func.builder();
            b.arg(t);
            b.arg(&part);
            // SAFETY: argument types and order match the kernel's signature; every piece lies
            // within a gradient `guards` holds.
            unsafe { b.launch(t.config()) }.w()?;
            launched();
        }
        let func = dev.get_or_load_custom_func("diffuse_sum_squares_total_f32", MODULE, PTX)?;
        let mut b = func.builder();
        b.arg(&part);
        b.arg(&count);
        b.arg(&mut out);
        let one = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: argument types and order match the kernel's signature.
        unsafe { b.launch(one) }.w()?;
        launched();
        drop(reads);
        Ok(scalar(out, dev))
    }

    fn scalar(v: CudaSlice<f32>, dev: &CudaDevice) -> Tensor {
        Tensor::from_storage(
            Storage::Cuda(CudaStorage::wrap_cuda_slice(v, dev.clone())),
            (),
            candle_core::op::BackpropOp::none(),
            false,
        )
    }
}
