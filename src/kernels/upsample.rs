//! Nearest-neighbour 2x upsampling with a strided-sum backward.
//!
//! Candle's backward for `upsample_nearest2d` is a grouped conv2d (one group per channel) with
//! a ones kernel; here it is one pass summing each 2x2 output block into its source pixel.
use super::par::for_each_chunk_mut;
use super::{cpu_f32, f32_data};
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
    if cpu_f32(&[x]) {
        return Ok(x.contiguous()?.apply_op1(Up2 { down: false })?);
    }
    Ok(x.upsample_nearest2d(2 * h, 2 * w)?)
}
