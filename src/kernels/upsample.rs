//! Nearest-neighbour 2x upsampling with a strided-sum backward.
//!
//! Candle's backward for `upsample_nearest2d` is a grouped conv2d (one group per channel) with
//! a ones kernel, which Candle runs as one convolution per channel; here it is one pass summing
//! each 2x2 output block into its source pixel: on the CPU below, on CUDA
//! src/kernels/cuda/upsample.cu (there the grouped conv was 768 im2col + GEMV launches per
//! cifar10-preset train step).
use super::par::for_each_chunk_mut;
use super::{cpu_f32, cuda_f32, f32_data};
use crate::error::Result;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

/// (n, c, h, w) -> (n, c, 2h, 2w), or its adjoint when `down`.
struct Up2 {
    down: bool,
}

/// Planes (h*w images) per parallel task.
const PLANES: usize = 16;

impl CustomOp1 for Up2 {
    fn name(&self) -> &'static str {
        "diffuse-upsample-nearest2x"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(self.name(), s, l)?;
        let (n, c, h, w) = l.shape().dims4()?;
        if self.down {
            if !h.is_multiple_of(2) || !w.is_multiple_of(2) {
                candle_core::bail!("upsample backward: odd gradient size {h}x{w}")
            }
            let (oh, ow) = (h / 2, w / 2);
            let mut y = vec![0f32; n * c * oh * ow];
            for_each_chunk_mut(&mut y, PLANES * oh * ow, |i, yc| {
                let xc = &x[i * PLANES * h * w..];
                for (p, yp) in yc.chunks_exact_mut(oh * ow).enumerate() {
                    let xp = &xc[p * h * w..(p + 1) * h * w];
                    for (r, yr) in yp.chunks_exact_mut(ow).enumerate() {
                        let (a, b) = (&xp[2 * r * w..], &xp[(2 * r + 1) * w..]);
                        for (j, o) in yr.iter_mut().enumerate() {
                            *o = a[2 * j] + a[2 * j + 1] + b[2 * j] + b[2 * j + 1];
                        }
                    }
                }
            });
            Ok((CpuStorage::F32(y), Shape::from((n, c, oh, ow))))
        } else {
            let (oh, ow) = (2 * h, 2 * w);
            let mut y = vec![0f32; n * c * oh * ow];
            for_each_chunk_mut(&mut y, PLANES * oh * ow, |i, yc| {
                let xc = &x[i * PLANES * h * w..];
                for (p, yp) in yc.chunks_exact_mut(oh * ow).enumerate() {
                    let xp = &xc[p * h * w..(p + 1) * h * w];
                    for (r, yr) in yp.chunks_exact_mut(ow).enumerate() {
                        let xr = &xp[(r / 2) * w..(r / 2 + 1) * w];
                        for (o, &v) in yr.chunks_exact_mut(2).zip(xr) {
                            o[0] = v;
                            o[1] = v;
                        }
                    }
                }
            });
            Ok((CpuStorage::F32(y), Shape::from((n, c, oh, ow))))
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
        use candle_core::cuda_backend::WrapErr;
        const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/upsample.ptx"));
        let (n, c, h, w) = l.shape().dims4()?;
        let x = super::cuda::view(self.name(), s, l)?;
        // The kernels index source pixels: (h, w) of the forward's input, the gradient's half.
        let ((sh, sw), shape) = if self.down {
            if !h.is_multiple_of(2) || !w.is_multiple_of(2) {
                candle_core::bail!("upsample backward: odd gradient size {h}x{w}")
            }
            ((h / 2, w / 2), Shape::from((n, c, h / 2, w / 2)))
        } else {
            ((h, w), Shape::from((n, c, 2 * h, 2 * w)))
        };
        let total = n * c * sh * sw;
        if 4 * total >= 1 << 31 {
            candle_core::bail!(
                "upsample: {:?} is past the CUDA kernel's 2^31 elements",
                l.dims()
            )
        }
        let dev = &s.device;
        let name = if self.down {
            "diffuse_up2_bwd_f32"
        } else {
            "diffuse_up2_fwd_f32"
        };
        let func = dev.get_or_load_custom_func(name, "diffuse_upsample", PTX)?;
        // SAFETY: every output element is written by the kernel.
        let mut y = unsafe { dev.alloc::<f32>(shape.elem_count())? };
        let mut b = func.builder();
        b.arg(&x);
        b.arg(&mut y);
        candle_core::builder_arg!(b, (n * c) as i32, sh as i32, sw as i32);
        // SAFETY: argument types and order match the kernel's signature; x is contiguous.
        unsafe { b.launch(super::cuda::grid_stride(total)) }.w()?;
        super::cuda::launched();
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(y, dev.clone()),
            shape,
        ))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if self.down {
            candle_core::bail!("upsample: no double backward")
        }
        Ok(Some(
            dy.contiguous()?.apply_op1_no_bwd(&Up2 { down: true })?,
        ))
    }
}

/// `x.upsample_nearest2d(2h, 2w)` for x (n, c, h, w).
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    // The CUDA kernels' flat indices are 32-bit: past 2^31 output elements, Candle's op.
    let cuda = cuda_f32(&[x], true) && 4 * x.elem_count() < 1 << 31;
    if cpu_f32(&[x]) || cuda {
        return Ok(x.contiguous()?.apply_op1(Up2 { down: false })?);
    }
    Ok(x.upsample_nearest2d(2 * h, 2 * w)?)
}
