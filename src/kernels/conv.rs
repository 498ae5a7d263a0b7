//! conv2d (groups 1, dilation 1) as im2col + gemm, forward and both gradients.
//!
//! Candle 0.11.1's CPU conv2d was measured 4x slower than PyTorch forward and 7-16x slower for
//! the input gradient (a plain loop, no gemm). On AVX-512 CPUs, stride-1 3x3 convolutions
//! with at least 8 channels each side go to Winograd (winograd.rs), other stride-1 3x3 passes
//! and 1x1 forwards / input gradients to the direct kernels (direct.rs); every other pass here
//! is one gemm per image group on a per-thread im2col workspace, parallel over the batch; 1x1
//! stride-1 unpadded convs skip im2col. The bias (per channel or per image) is fused into the
//! forward pass.
use super::gemm::{sgemm, Mat};
use super::par::{for_each_chunk_mut, n_threads, slot_sums, with_workspace};
use super::{cpu_f32, cuda_f32, f32_inputs};
use super::{direct, winograd};
use crate::error::{Error, Result};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

/// Shapes of one convolution: x (n, ci, h, w), w (co, ci, kh, kw), y (n, co, oh, ow).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geom {
    pub(crate) n: usize,
    pub(crate) ci: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) co: usize,
    pub(crate) kh: usize,
    pub(crate) kw: usize,
    pub(crate) stride: usize,
    pub(crate) pad: usize,
    pub(crate) oh: usize,
    pub(crate) ow: usize,
}

impl Geom {
    pub(crate) fn new(
        x: &[usize],
        w: &[usize],
        stride: usize,
        pad: usize,
    ) -> candle_core::Result<Self> {
        let (&[n, ci, h, wd], &[co, wci, kh, kw]) = (x, w) else {
            candle_core::bail!("conv2d: rank-4 x and w expected, got {x:?} {w:?}")
        };
        if wci != ci || stride == 0 || h + 2 * pad < kh || wd + 2 * pad < kw {
            candle_core::bail!("conv2d: bad shapes x {x:?} w {w:?} stride {stride} pad {pad}")
        }
        Ok(Self {
            n,
            ci,
            h,
            w: wd,
            co,
            kh,
            kw,
            stride,
            pad,
            oh: (h + 2 * pad - kh) / stride + 1,
            ow: (wd + 2 * pad - kw) / stride + 1,
        })
    }
    /// Rows of the im2col matrix (= columns of the flattened weight).
    pub(crate) fn k(&self) -> usize {
        self.ci * self.kh * self.kw
    }
    pub(crate) fn in_len(&self) -> usize {
        self.ci * self.h * self.w
    }
    pub(crate) fn out_len(&self) -> usize {
        self.oh * self.ow
    }
    /// 1x1, stride 1, no padding: the image itself is the im2col matrix.
    pub(crate) fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
    /// Input column for output column `o` and kernel column `j`, if inside the image.
    #[inline]
    fn in_col(&self, o: usize, j: usize) -> Option<usize> {
        (o * self.stride + j)
            .checked_sub(self.pad)
            .filter(|&c| c < self.w)
    }
    /// Range of output columns whose input column for kernel column `j` lies inside the image.
    fn valid_cols(&self, j: usize) -> std::ops::Range<usize> {
        let lo = (0..self.ow)
            .find(|&o| self.in_col(o, j).is_some())
            .unwrap_or(self.ow);
        let hi = (lo..self.ow)
            .rev()
            .find(|&o| self.in_col(o, j).is_some())
            .map_or(lo, |o| o + 1);
        lo..hi
    }
}

/// Images per gemm: small images are grouped so that the gemm has >= ~512 columns (one gemm
/// per 7x7 image has 49, and the packing overhead dominated), keeping >= 2 groups per thread.
fn group_size(g: &Geom) -> usize {
    let want = 512usize.div_ceil(g.out_len()).clamp(1, 16);
    want.min((g.n / (2 * n_threads())).max(1))
}

/// col[(c, i, j), off + (oh, ow)] = x[c, oh*s - p + i, ow*s - p + j], zero outside; `ld` is the
/// row length of `col` (several images side by side).
fn im2col(g: &Geom, x: &[f32], col: &mut [f32], ld: usize, off: usize) {
    let s = g.stride;
    for c in 0..g.ci {
        let xc = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = ((c * g.kh + i) * g.kw + j) * ld + off;
                let cols = g.valid_cols(j);
                for oy in 0..g.oh {
                    let dst = &mut col[row + oy * g.ow..row + (oy + 1) * g.ow];
                    let Some(iy) = (oy * s + i).checked_sub(g.pad).filter(|&r| r < g.h) else {
                        dst.fill(0.0);
                        continue;
                    };
                    let src = &xc[iy * g.w..(iy + 1) * g.w];
                    dst[..cols.start].fill(0.0);
                    dst[cols.end..].fill(0.0);
                    let x0 = cols.start * s + j - g.pad;
                    if s == 1 {
                        dst[cols.clone()].copy_from_slice(&src[x0..x0 + cols.len()]);
                    } else {
                        for (k, d) in dst[cols.clone()].iter_mut().enumerate() {
                            *d = src[x0 + k * s];
                        }
                    }
                }
            }
        }
    }
}

/// dx[c, ...] += col[(c, i, j), off + (oh, ow)]: the adjoint of `im2col`. `dx` starts zeroed.
fn col2im(g: &Geom, col: &[f32], dx: &mut [f32], ld: usize, off: usize) {
    let s = g.stride;
    for c in 0..g.ci {
        let xc = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = ((c * g.kh + i) * g.kw + j) * ld + off;
                let cols = g.valid_cols(j);
                if cols.is_empty() {
                    continue;
                }
                for oy in 0..g.oh {
                    let Some(iy) = (oy * s + i).checked_sub(g.pad).filter(|&r| r < g.h) else {
                        continue;
                    };
                    let src = &col[row + oy * g.ow + cols.start..row + oy * g.ow + cols.end];
                    let dst = &mut xc[iy * g.w..(iy + 1) * g.w];
                    let x0 = cols.start * s + j - g.pad;
                    if s == 1 {
                        for (d, v) in dst[x0..x0 + src.len()].iter_mut().zip(src) {
                            *d += v;
                        }
                    } else {
                        for (k, v) in src.iter().enumerate() {
                            dst[x0 + k * s] += v;
                        }
                    }
                }
            }
        }
    }
}

/// Copy `bn` images of (co x ohw) from `src` side by side into `dst` (co x bn*ohw), or back.
fn interleave(dst: &mut [f32], src: &[f32], co: usize, ohw: usize, bn: usize, back: bool) {
    let ld = bn * ohw;
    for b in 0..bn {
        for c in 0..co {
            let (wide, img) = (c * ld + b * ohw, (b * co + c) * ohw);
            if back {
                dst[img..img + ohw].copy_from_slice(&src[wide..wide + ohw]);
            } else {
                dst[wide..wide + ohw].copy_from_slice(&src[img..img + ohw]);
            }
        }
    }
}

/// A bias added to the convolution's output: [co] for every image, or [n, co] per image
/// (the UNet adds its time embedding to the first conv of each resnet that way).
#[derive(Clone, Copy)]
pub(super) struct Bias<'a> {
    pub data: &'a [f32],
    pub per_image: bool,
}

impl<'a> Bias<'a> {
    /// The co biases of image `n`.
    pub fn of_image(&self, n: usize, co: usize) -> &'a [f32] {
        if self.per_image {
            &self.data[n * co..(n + 1) * co]
        } else {
            &self.data[..co]
        }
    }

    /// Add to the output rows of image `n` (co planes of `ohw`), while they are in cache.
    fn add(&self, n: usize, y: &mut [f32], co: usize, ohw: usize) {
        for (plane, &bv) in y.chunks_exact_mut(ohw).zip(self.of_image(n, co)) {
            plane.iter_mut().for_each(|v| *v += bv);
        }
    }
}

/// y[n] = W (co x k) @ col(x[n]) (k x oh*ow) (+ bias), `group_size` images per gemm.
fn fwd(g: &Geom, x: &[f32], w: &[f32], bias: Option<Bias>) -> Vec<f32> {
    if winograd::applies(g.stride, g.pad, (g.kh, g.kw), g.ci, g.co) {
        return winograd::fwd(g.n, g.ci, g.co, (g.h, g.w), x, w, bias);
    }
    if direct::applies(g.stride, g.pad, (g.kh, g.kw)) {
        return direct::fwd(g.n, g.ci, g.co, (g.h, g.w), g.kh, x, w, bias);
    }
    let (k, ohw, bs) = (g.k(), g.out_len(), group_size(g));
    let mut y = vec![0f32; g.n * g.co * ohw];
    for_each_chunk_mut(&mut y, bs * g.co * ohw, |gi, yg| {
        let bn = yg.len() / (g.co * ohw);
        let xg = &x[gi * bs * g.in_len()..(gi * bs + bn) * g.in_len()];
        let ld = bn * ohw;
        let wm = Mat::rows(w, k);
        if bn == 1 && g.is_pointwise() {
            sgemm(yg, g.co, ohw, k, wm, Mat::rows(xg, ohw), false);
        } else {
            with_workspace(k * ld, if bn > 1 { g.co * ld } else { 0 }, |col, tmp| {
                for (b, xn) in xg.chunks_exact(g.in_len()).enumerate() {
                    im2col(g, xn, col, ld, b * ohw);
                }
                if bn == 1 {
                    sgemm(yg, g.co, ohw, k, wm, Mat::rows(col, ohw), false);
                } else {
                    sgemm(tmp, g.co, ld, k, wm, Mat::rows(col, ld), false);
                    interleave(yg, tmp, g.co, ohw, bn, true);
                }
            });
        }
        if let Some(bias) = bias {
            for (b, yn) in yg.chunks_exact_mut(g.co * ohw).enumerate() {
                bias.add(gi * bs + b, yn, g.co, ohw);
            }
        }
    });
    y
}

/// dx[n] = col2im(W^T (k x co) @ dy[n] (co x oh*ow)), `group_size` images per gemm.
fn bwd_input(g: &Geom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    if winograd::applies(g.stride, g.pad, (g.kh, g.kw), g.co, g.ci) {
        return winograd::bwd_input(g.n, g.ci, g.co, (g.h, g.w), dy, w);
    }
    if direct::applies(g.stride, g.pad, (g.kh, g.kw)) {
        return direct::bwd_input(g.n, g.ci, g.co, (g.h, g.w), g.kh, dy, w);
    }
    let (k, ohw, bs) = (g.k(), g.out_len(), group_size(g));
    let mut dx = vec![0f32; g.n * g.in_len()];
    for_each_chunk_mut(&mut dx, bs * g.in_len(), |gi, dxg| {
        let bn = dxg.len() / g.in_len();
        let dyg = &dy[gi * bs * g.co * ohw..(gi * bs + bn) * g.co * ohw];
        let ld = bn * ohw;
        let wt = Mat::t(w, k);
        if bn == 1 && g.is_pointwise() {
            return sgemm(dxg, k, ohw, g.co, wt, Mat::rows(dyg, ohw), false);
        }
        with_workspace(k * ld, if bn > 1 { g.co * ld } else { 0 }, |col, tmp| {
            if bn == 1 {
                sgemm(col, k, ohw, g.co, wt, Mat::rows(dyg, ohw), false);
            } else {
                interleave(tmp, dyg, g.co, ohw, bn, false);
                sgemm(col, k, ld, g.co, wt, Mat::rows(tmp, ld), false);
            }
            for (b, dxn) in dxg.chunks_exact_mut(g.in_len()).enumerate() {
                col2im(g, col, dxn, ld, b * ohw);
            }
        });
    });
    dx
}

/// dW = sum_n dy[n] (co x oh*ow) @ col(x[n])^T (oh*ow x k): one partial sum per slot,
/// accumulated in place by gemm over the image groups assigned to that slot, then reduced in
/// slot order. The assignment is static (slot s takes groups s, s+T, ...), so the sums, and
/// therefore training, are bit-reproducible (a shared work cursor made resumed runs drift).
fn bwd_weight(g: &Geom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    if winograd::applies(g.stride, g.pad, (g.kh, g.kw), g.ci, g.co)
        && g.ci.is_multiple_of(4)
        && g.co.is_multiple_of(4)
    {
        return winograd::bwd_weight(g.n, g.ci, g.co, (g.h, g.w), x, dy);
    }
    // 1x1 weight gradients are one gemm per image group on the images as they are, which
    // measured 1.3-1.5x faster than the direct kernel (64x64x14x14 1x1: 0.38 vs 0.54 ms).
    if direct::applies(g.stride, g.pad, (g.kh, g.kw)) && g.kh == 3 {
        return direct::bwd_weight(g.n, g.ci, g.co, (g.h, g.w), g.kh, x, dy);
    }
    let (k, ohw, wl, bs) = (g.k(), g.out_len(), g.co * g.k(), group_size(g));
    let nt = n_threads();
    slot_sums(wl, |tid, dw| {
        for n0 in (tid * bs..g.n).step_by(nt * bs) {
            let bn = bs.min(g.n - n0);
            let xg = &x[n0 * g.in_len()..(n0 + bn) * g.in_len()];
            let dyg = &dy[n0 * g.co * ohw..(n0 + bn) * g.co * ohw];
            let ld = bn * ohw;
            if bn == 1 && g.is_pointwise() {
                let (a, b) = (Mat::rows(dyg, ohw), Mat::t(xg, ohw));
                sgemm(dw, g.co, k, ohw, a, b, true);
                continue;
            }
            with_workspace(k * ld, if bn > 1 { g.co * ld } else { 0 }, |col, tmp| {
                for (b, xn) in xg.chunks_exact(g.in_len()).enumerate() {
                    im2col(g, xn, col, ld, b * ohw);
                }
                let a = if bn == 1 {
                    Mat::rows(dyg, ohw)
                } else {
                    interleave(tmp, dyg, g.co, ohw, bn, false);
                    Mat::rows(tmp, ld)
                };
                sgemm(dw, g.co, k, ld, a, Mat::t(col, ld), true);
            });
        }
    })
}

/// Which of the three passes a `ConvOp` runs; each is a CustomOp2 on two tensors.
#[derive(Clone, Copy, Debug)]
enum Pass {
    /// (x, w) -> y, with a backward.
    Fwd,
    /// (dy, w) -> dx for an input of shape `in_hw`.
    BwdInput { h: usize, w: usize },
    /// (x, dy) -> dw for a kernel of size `k`.
    BwdWeight { kh: usize, kw: usize },
}

#[derive(Clone, Copy, Debug)]
struct ConvOp {
    pass: Pass,
    stride: usize,
    pad: usize,
}

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        "diffuse-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let [a, b] = f32_inputs(CustomOp2::name(self), [(s1, l1), (s2, l2)])?;
        let (d1, d2) = (l1.dims(), l2.dims());
        let (s, p) = (self.stride, self.pad);
        match self.pass {
            Pass::Fwd => {
                let g = Geom::new(d1, d2, s, p)?;
                let shape = Shape::from((g.n, g.co, g.oh, g.ow));
                Ok((CpuStorage::F32(fwd(&g, a, b, None)), shape))
            }
            Pass::BwdInput { h, w } => {
                let g = Geom::new(&[d1[0], d2[1], h, w], d2, s, p)?;
                check_out(&g, d1)?;
                let shape = Shape::from((g.n, g.ci, h, w));
                Ok((CpuStorage::F32(bwd_input(&g, a, b)), shape))
            }
            Pass::BwdWeight { kh, kw } => {
                let g = Geom::new(d1, &[d2[1], d1[1], kh, kw], s, p)?;
                check_out(&g, d2)?;
                let shape = Shape::from((g.co, g.ci, kh, kw));
                Ok((CpuStorage::F32(bwd_weight(&g, a, b)), shape))
            }
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::view;
        use super::cuda_conv;
        let name = CustomOp2::name(self);
        let (a, b) = (view(name, s1, l1)?, view(name, s2, l2)?);
        let (d1, d2) = (l1.dims(), l2.dims());
        let (s, p, dev) = (self.stride, self.pad, &s1.device);
        let (out, shape) = match self.pass {
            Pass::Fwd => {
                let g = Geom::new(d1, d2, s, p)?;
                let y = cuda_conv::fwd(dev, &g, &a, &b, None)?;
                (y, Shape::from((g.n, g.co, g.oh, g.ow)))
            }
            Pass::BwdInput { h, w } => {
                let g = Geom::new(&[d1[0], d2[1], h, w], d2, s, p)?;
                check_out(&g, d1)?;
                let dx = cuda_conv::bwd_input(dev, &g, &a, &b)?;
                (dx, Shape::from((g.n, g.ci, h, w)))
            }
            Pass::BwdWeight { kh, kw } => {
                let g = Geom::new(d1, &[d2[1], d1[1], kh, kw], s, p)?;
                check_out(&g, d2)?;
                let dw = cuda_conv::bwd_weight(dev, &g, &a, &b)?;
                (dw, Shape::from((g.co, g.ci, kh, kw)))
            }
        };
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(out, dev.clone()),
            shape,
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = self.grads(x, w, &dy.contiguous()?)?;
        Ok((dx, Some(dw)))
    }
}

impl ConvOp {
    /// (dx, dw) for the forward pass `self` given a contiguous dy; dx is skipped when x is
    /// not part of the graph (the UNet's input conv: x_t is data).
    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Tensor)> {
        let (_, _, h, wd) = x.dims4()?;
        let (_, _, kh, kw) = w.dims4()?;
        let op = |pass| ConvOp { pass, ..*self };
        let dx = if x.track_op() {
            Some(dy.apply_op2_no_bwd(w, &op(Pass::BwdInput { h, w: wd }))?)
        } else {
            None
        };
        let dw = x.apply_op2_no_bwd(dy, &op(Pass::BwdWeight { kh, kw }))?;
        Ok((dx, dw))
    }
}

/// The forward pass with a bias fused into the output (x, w, b), b of shape [co] or [n, co].
/// Candle's own bias path is a broadcast add whose gradient is a slow strided sum.
impl CustomOp3 for ConvOp {
    fn name(&self) -> &'static str {
        "diffuse-conv2d-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = CustomOp3::name(self);
        let [x, w, b] = f32_inputs(name, [(s1, l1), (s2, l2), (s3, l3)])?;
        let g = Geom::new(l1.dims(), l2.dims(), self.stride, self.pad)?;
        let per_image = bias_per_image(&g, l3.dims())?;
        let bias = Bias { data: b, per_image };
        let shape = Shape::from((g.n, g.co, g.oh, g.ow));
        Ok((CpuStorage::F32(fwd(&g, x, w, Some(bias))), shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::view;
        let name = CustomOp3::name(self);
        let g = Geom::new(l1.dims(), l2.dims(), self.stride, self.pad)?;
        let per_image = bias_per_image(&g, l3.dims())?;
        let (x, w, b) = (
            view(name, s1, l1)?,
            view(name, s2, l2)?,
            view(name, s3, l3)?,
        );
        let dev = &s1.device;
        let y = super::cuda_conv::fwd(dev, &g, &x, &w, Some((&b, per_image)))?;
        let shape = Shape::from((g.n, g.co, g.oh, g.ow));
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(y, dev.clone()),
            shape,
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let (dx, dw) = self.grads(x, w, &dy)?;
        let db = super::bias::channel_bias_grad(&dy, b.rank() == 2)?;
        Ok((dx, Some(dw), Some(db)))
    }
}

/// Whether a bias of shape `b` is per image ([n, co]) or shared ([co]).
fn bias_per_image(g: &Geom, b: &[usize]) -> candle_core::Result<bool> {
    match b {
        [c] if *c == g.co => Ok(false),
        [n, c] if *n == g.n && *c == g.co => Ok(true),
        _ => candle_core::bail!(
            "conv2d bias of shape {b:?} for {} images of {} output channels",
            g.n,
            g.co
        ),
    }
}

fn check_out(g: &Geom, dy: &[usize]) -> candle_core::Result<()> {
    if dy != [g.n, g.co, g.oh, g.ow] {
        candle_core::bail!("conv2d backward: gradient shape {dy:?} does not match {g:?}")
    }
    Ok(())
}

/// `x.conv2d(w, padding, stride, 1, 1)` plus an optional bias `b`: [co] per channel, or
/// [n, co] per image and channel (broadcast over the output's pixels).
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let (n, co) = (x.dim(0)?, w.dim(0)?);
    if let Some(b) = b {
        if !(b.dims() == [co] || b.dims() == [n, co]) {
            return Err(Error::invalid(format!(
                "conv2d bias of shape {:?} for {n} images of {co} output channels",
                b.dims()
            )));
        }
    }
    // On CUDA our op runs cuDNN's convolutions in a cuDNN build (src/kernels/cudnn_conv.rs).
    let ours = |ts: &[&Tensor]| cpu_f32(ts) || cuda_f32(ts, true);
    if ours(&[x, w]) && b.is_none_or(|b| ours(&[x, b])) && cuda_fits(x, w, stride, padding) {
        let op = ConvOp {
            pass: Pass::Fwd,
            stride,
            pad: padding,
        };
        let (x, w) = (x.contiguous()?, w.contiguous()?);
        return Ok(match b {
            None => x.apply_op2(&w, op)?,
            Some(b) => x.apply_op3(&w, &b.contiguous()?, op)?,
        });
    }
    // Half precision on CUDA in a cuDNN build: cuDNN's tensor cores with cached plans.
    #[cfg(feature = "cudnn")]
    let y = match super::cudnn_conv::half_conv2d(x, w, stride, padding)? {
        Some(y) => y,
        None => x.conv2d(w, padding, stride, 1, 1)?,
    };
    #[cfg(not(feature = "cudnn"))]
    let y = x.conv2d(w, padding, stride, 1, 1)?;
    Ok(match b {
        None => y,
        Some(b) if b.rank() == 2 => y.broadcast_add(&b.reshape((n, co, 1, 1))?)?,
        Some(b) => y.broadcast_add(&b.reshape((1, co, 1, 1))?)?,
    })
}

/// On CUDA, whether our kernels take these shapes (one image's buffers within their 32-bit
/// indices); true on the CPU. A shape error is left for the op to report.
fn cuda_fits(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> bool {
    !x.device().is_cuda()
        || Geom::new(x.dims(), w.dims(), stride, padding)
            .map_or(true, |g| super::cuda_conv::fits(&g))
}

fn cpu_only(ts: &[&Tensor]) -> Result<()> {
    if !cpu_f32(ts) {
        return Err(Error::invalid(
            "conv2d gradient kernels need CPU f32 tensors",
        ));
    }
    Ok(())
}

/// The input gradient of `conv2d` alone (CPU f32): dy (n, co, oh, ow), w -> dx (n, ci, h, w).
/// For benchmarks and hand-written backward passes; `conv2d`'s own backward calls the same op.
pub fn conv2d_grad_input(
    dy: &Tensor,
    w: &Tensor,
    (h, wd): (usize, usize),
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    cpu_only(&[dy, w])?;
    let op = ConvOp {
        pass: Pass::BwdInput { h, w: wd },
        stride,
        pad: padding,
    };
    Ok(dy.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &op)?)
}

/// The weight gradient of `conv2d` alone (CPU f32): x, dy -> dw (co, ci, kh, kw).
pub fn conv2d_grad_weight(
    x: &Tensor,
    dy: &Tensor,
    (kh, kw): (usize, usize),
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    cpu_only(&[x, dy])?;
    let op = ConvOp {
        pass: Pass::BwdWeight { kh, kw },
        stride,
        pad: padding,
    };
    Ok(x.contiguous()?.apply_op2_no_bwd(&dy.contiguous()?, &op)?)
}
