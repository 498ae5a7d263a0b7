//! conv2d on CUDA (f32, groups 1, dilation 1): our im2col / col2im / bias kernels
//! (src/kernels/cuda/conv.cu) around cuBLAS GEMMs, for the forward and both gradients.
//!
//! Candle's CUDA conv2d is im2col + GEMM too, but its im2col was the top kernel of our
//! cifar10 train step on an H200 (41% of GPU time in f32, 54% with TF32: docs/gpu.md):
//! it writes the columns pixel-major, so its reads stride across channels and kernel rows, its
//! GEMM's output needs a transposing copy, and the backward ran two more convolutions through
//! it (a zero-dilated gradient for dx, an image-sized kernel for dw). Here the columns are laid
//! out for the GEMM that reads them (reads and writes coalesced), the GEMMs write NCHW
//! directly, the input gradient is one GEMM and a gather (col2im), the weight gradient one
//! GEMM over all images, and the bias is written before a GEMM that accumulates onto it.
//! TF32 follows Candle's switch (`DIFFUSE_TF32=1`). The GEMM plans below are checked on the
//! CPU against the definition (this file's tests); the kernels by tests/cuda_kernels.rs.
#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

use super::conv::Geom;

/// Column buffers hold at most this many floats (1 GiB); larger batches go in chunks of images
/// (which also keeps every kernel's flat index in 32 bits).
const COL_BUDGET: usize = 1 << 28;

/// Whether the CUDA path takes `g`: one image's buffers must fit the kernels' 32-bit indices,
/// and nothing may be empty (Candle's op handles those).
pub(crate) fn fits(g: &Geom) -> bool {
    g.n > 0 && g.ci > 0 && g.co > 0 && per_image(g) < 1 << 31
}

/// The largest buffer any pass needs per image, in floats.
fn per_image(g: &Geom) -> usize {
    (g.k() * g.out_len())
        .max(g.in_len())
        .max(g.co * g.out_len())
}

/// Images per chunk: all of them unless the column buffer would pass `COL_BUDGET`.
fn chunk(g: &Geom) -> usize {
    (COL_BUDGET / per_image(g)).clamp(1, g.n.max(1))
}

/// One row-major product C[m, n] = A[m, k] B[k, n] + beta C, `batch` times at element strides
/// `sa`, `sb`, `sc` between products; `ta`: A is stored as its transpose [k, m], `tb`: B as
/// [n, k].
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Gemm {
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    sa: usize,
    sb: usize,
    sc: usize,
    beta: f32,
}

/// cuBLAS's (column-major) arguments for a `Gemm`: it computes C^T = B^T A^T, so cuBLAS's
/// first operand is our B and its second our A.
#[derive(Clone, Copy, Debug)]
struct Cublas {
    transa: bool,
    transb: bool,
    m: i32,
    n: i32,
    k: i32,
    lda: i32,
    ldb: i32,
    ldc: i32,
    stride_a: i64,
    stride_b: i64,
    stride_c: i64,
    batch: i32,
}

impl Gemm {
    fn cublas(&self) -> Cublas {
        Cublas {
            transa: self.tb,
            transb: self.ta,
            m: self.n as i32,
            n: self.m as i32,
            k: self.k as i32,
            lda: if self.tb { self.k } else { self.n } as i32,
            ldb: if self.ta { self.m } else { self.k } as i32,
            ldc: self.n as i32,
            stride_a: self.sb as i64,
            stride_b: self.sa as i64,
            stride_c: self.sc as i64,
            batch: self.batch as i32,
        }
    }

    /// Forward over `imgs` images: y_i [co, P] = w [co, K] col_i [K, P] (+ the bias in y).
    fn fwd(g: &Geom, imgs: usize, bias: bool) -> Self {
        let (k, p) = (g.k(), g.out_len());
        Self {
            batch: imgs,
            m: g.co,
            n: p,
            k,
            ta: false,
            tb: false,
            sa: 0,
            sb: k * p,
            sc: g.co * p,
            beta: if bias { 1.0 } else { 0.0 },
        }
    }

    /// Input gradient's columns: dcol_i [K, P] = w^T [K, co] dy_i [co, P].
    fn bwd_input(g: &Geom, imgs: usize) -> Self {
        let (k, p) = (g.k(), g.out_len());
        Self {
            batch: imgs,
            m: k,
            n: p,
            k: g.co,
            ta: true,
            tb: false,
            sa: 0,
            sb: g.co * p,
            sc: k * p,
            beta: 0.0,
        }
    }

    /// Weight gradient over `imgs` images: dw [co, K] (+)= dy^T [co, imgs*P] col [K, imgs*P]^T,
    /// accumulating onto the previous chunks' sum unless `first`.
    fn bwd_weight(g: &Geom, imgs: usize, first: bool) -> Self {
        Self {
            batch: 1,
            m: g.co,
            n: g.k(),
            k: imgs * g.out_len(),
            ta: false,
            tb: true,
            sa: 0,
            sb: 0,
            sc: 0,
            beta: if first { 0.0 } else { 1.0 },
        }
    }
}

#[cfg(feature = "cuda")]
pub(crate) use device::{bwd_input, bwd_weight, fwd};

#[cfg(feature = "cuda")]
mod device {
    use super::super::cuda::grid_stride;
    #[cfg(feature = "cudnn")]
    use super::super::cudnn_conv::Data;
    use super::{chunk, Gemm, Geom};
    use candle_core::cuda_backend::cudarc::cublas::{result, sys};
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaDevice, WrapErr};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/conv.ptx"));
    const MODULE: &str = "diffuse_conv";

    /// Pixels per thread in im2col / col2im for rows of `len`: 4, 2 or 1, a divisor of it (each
    /// thread writes one vector). One pixel per thread, the index arithmetic bounded them: on an
    /// H200 at the cifar10 preset, 4 per thread took im2col from 62 to 45 us a call on average,
    /// col2im from 242 to 152 us, and training from 573 to 641 images/s.
    fn per_thread(len: usize) -> i32 {
        [4, 2]
            .into_iter()
            .find(|&v| len.is_multiple_of(v))
            .unwrap_or(1) as i32
    }

    /// The geometry im2col and col2im take, in their argument order: (n, c, h, w, kh, kw,
    /// stride, pad, oh, ow) for `imgs` images.
    fn geometry(g: &Geom, imgs: usize) -> [i32; 10] {
        [
            imgs, g.ci, g.h, g.w, g.kh, g.kw, g.stride, g.pad, g.oh, g.ow,
        ]
        .map(|v| v as i32)
    }

    /// im2col of `imgs` images of x into col: [img][K][P] (`k_major` false) or [K][img][P].
    fn im2col(
        dev: &CudaDevice,
        g: &Geom,
        imgs: usize,
        x: &CudaView<f32>,
        col: &mut CudaViewMut<f32>,
        k_major: bool,
    ) -> candle_core::Result<()> {
        let func = dev.get_or_load_custom_func("diffuse_im2col_f32", MODULE, PTX)?;
        let args = (geometry(g, imgs), [k_major as i32, per_thread(g.ow)]);
        let mut b = func.builder();
        b.arg(x);
        b.arg(col);
        args.0.iter().chain(&args.1).for_each(|v| {
            b.arg(v);
        });
        // SAFETY: argument types and order match diffuse_im2col_f32's signature; col holds
        // imgs * K * P floats, x imgs images.
        unsafe { b.launch(grid_stride(imgs * g.k() * g.out_len())) }.w()?;
        super::super::cuda::launched();
        Ok(())
    }

    /// The transpose [co][img][P] of `imgs` images of dy [img][co][P]: im2col with a 1x1
    /// kernel over the output's geometry.
    fn transpose(
        dev: &CudaDevice,
        g: &Geom,
        imgs: usize,
        dy: &CudaView<f32>,
        out: &mut CudaViewMut<f32>,
    ) -> candle_core::Result<()> {
        let t = Geom::new(&[imgs, g.co, g.oh, g.ow], &[1, g.co, 1, 1], 1, 0)?;
        im2col(dev, &t, imgs, dy, out, true)
    }

    /// Runs the product `p` on Candle's stream (its cuBLAS handle), f32 or TF32 as Candle's
    /// switch says; `a` and `b` are our operands (cuBLAS gets them swapped: `Gemm::cublas`).
    fn gemm(
        dev: &CudaDevice,
        p: &Gemm,
        a: &CudaView<f32>,
        b: &CudaView<f32>,
        c: &mut CudaViewMut<f32>,
    ) -> candle_core::Result<()> {
        let cb = p.cublas();
        let op = |t: bool| match t {
            true => sys::cublasOperation_t::CUBLAS_OP_T,
            false => sys::cublasOperation_t::CUBLAS_OP_N,
        };
        let compute = if candle_core::cuda::gemm_reduced_precision_f32() {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
        };
        let (alpha, beta) = (1f32, p.beta);
        let blas = dev.cublas_handle();
        let stream = dev.cuda_stream();
        let (pa, _ga) = b.device_ptr(&stream);
        let (pb, _gb) = a.device_ptr(&stream);
        let (pc, _gc) = c.device_ptr_mut(&stream);
        let f32t = sys::cudaDataType_t::CUDA_R_32F;
        // SAFETY: the pointers are live device buffers on cuBLAS's stream (Candle's), sized
        // for the plan by the callers; alpha and beta are f32 as the compute type wants.
        unsafe {
            result::gemm_strided_batched_ex(
                *blas.handle(),
                op(cb.transa),
                op(cb.transb),
                cb.m,
                cb.n,
                cb.k,
                &alpha as *const f32 as *const _,
                pa as *const _,
                f32t,
                cb.lda,
                cb.stride_a,
                pb as *const _,
                f32t,
                cb.ldb,
                cb.stride_b,
                &beta as *const f32 as *const _,
                pc as *mut _,
                f32t,
                cb.ldc,
                cb.stride_c,
                cb.batch,
                compute,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
            )
        }
        .w()
    }

    /// Writes the bias ([co], or [n, co] when `per_image`) into every pixel of y [n, co, P],
    /// per chunk of images: one launch over all of y could pass 2^31 elements.
    fn bias_fill(
        dev: &CudaDevice,
        g: &Geom,
        b: &CudaView<f32>,
        per_image: bool,
        y: &mut CudaSlice<f32>,
    ) -> candle_core::Result<()> {
        let (p, step) = (g.out_len(), chunk(g));
        let fill = dev.get_or_load_custom_func("diffuse_bias_fill_f32", MODULE, PTX)?;
        for i0 in (0..g.n).step_by(step) {
            let imgs = step.min(g.n - i0);
            let mut ys = y.slice_mut(i0 * g.co * p..(i0 + imgs) * g.co * p);
            let bs = match per_image {
                true => b.slice(i0 * g.co..(i0 + imgs) * g.co),
                false => b.slice(..),
            };
            let args = [imgs, g.co, p, per_image as usize].map(|v| v as i32);
            let mut bld = fill.builder();
            bld.arg(&bs);
            bld.arg(&mut ys);
            args.iter().for_each(|v| {
                bld.arg(v);
            });
            // SAFETY: argument types and order match diffuse_bias_fill_f32's signature.
            unsafe { bld.launch(grid_stride(imgs * g.co * p)) }.w()?;
            super::super::cuda::launched();
        }
        Ok(())
    }

    /// y = conv2d(x, w) (+ bias: [co], or [n, co] when `per_image`), [n, co, oh, ow].
    pub(crate) fn fwd(
        dev: &CudaDevice,
        g: &Geom,
        x: &CudaView<f32>,
        w: &CudaView<f32>,
        bias: Option<(&CudaView<f32>, bool)>,
    ) -> candle_core::Result<CudaSlice<f32>> {
        let (k, p, step) = (g.k(), g.out_len(), chunk(g));
        // SAFETY: every element is written: by the bias fill, or by a GEMM (or cuDNN) with
        // beta 0.
        let mut y = unsafe { dev.alloc::<f32>(g.n * g.co * p)? };
        if let Some((b, per_image)) = bias {
            bias_fill(dev, g, b, per_image, &mut y)?;
        }
        // A cuDNN build's convolutions (src/kernels/cudnn_conv.rs), where it takes the shape.
        #[cfg(feature = "cudnn")]
        if super::super::cudnn_conv::fwd(dev, g, Data::F32, x, w, &mut y, bias.is_some())? {
            super::super::cuda::launched();
            return Ok(y);
        }
        let mut col = match g.is_pointwise() {
            true => None,
            // SAFETY: im2col writes every element it covers before the GEMM reads it.
            false => Some(unsafe { dev.alloc::<f32>(step.min(g.n) * k * p)? }),
        };
        for i0 in (0..g.n).step_by(step) {
            let imgs = step.min(g.n - i0);
            let xs = x.slice(i0 * g.in_len()..(i0 + imgs) * g.in_len());
            let plan = Gemm::fwd(g, imgs, bias.is_some());
            let mut ys = y.slice_mut(i0 * g.co * p..(i0 + imgs) * g.co * p);
            match &mut col {
                None => gemm(dev, &plan, w, &xs, &mut ys)?,
                Some(col) => {
                    let mut cs = col.slice_mut(..imgs * k * p);
                    im2col(dev, g, imgs, &xs, &mut cs, false)?;
                    gemm(dev, &plan, w, &col.slice(..imgs * k * p), &mut ys)?;
                }
            }
        }
        Ok(y)
    }

    /// dx [n, ci, h, w] of conv2d(x, w) for the output gradient dy.
    pub(crate) fn bwd_input(
        dev: &CudaDevice,
        g: &Geom,
        dy: &CudaView<f32>,
        w: &CudaView<f32>,
    ) -> candle_core::Result<CudaSlice<f32>> {
        #[cfg(feature = "cudnn")]
        if let Some(dx) = super::super::cudnn_conv::bwd_input(dev, g, dy, w)? {
            super::super::cuda::launched();
            return Ok(dx);
        }
        let (k, p, step) = (g.k(), g.out_len(), chunk(g));
        // SAFETY: every element is written by the GEMM (1x1) or by col2im.
        let mut dx = unsafe { dev.alloc::<f32>(g.n * g.in_len())? };
        let mut col = match g.is_pointwise() {
            true => None,
            // SAFETY: the GEMM (beta 0) writes every element col2im reads.
            false => Some(unsafe { dev.alloc::<f32>(step.min(g.n) * k * p)? }),
        };
        let func = dev.get_or_load_custom_func("diffuse_col2im_f32", MODULE, PTX)?;
        for i0 in (0..g.n).step_by(step) {
            let imgs = step.min(g.n - i0);
            let dys = dy.slice(i0 * g.co * p..(i0 + imgs) * g.co * p);
            let plan = Gemm::bwd_input(g, imgs);
            let mut dxs = dx.slice_mut(i0 * g.in_len()..(i0 + imgs) * g.in_len());
            let Some(col) = &mut col else {
                gemm(dev, &plan, w, &dys, &mut dxs)?;
                continue;
            };
            gemm(dev, &plan, w, &dys, &mut col.slice_mut(..imgs * k * p))?;
            let cs = col.slice(..imgs * k * p);
            let args = (geometry(g, imgs), per_thread(g.w));
            let mut b = func.builder();
            b.arg(&cs);
            b.arg(&mut dxs);
            args.0.iter().for_each(|v| {
                b.arg(v);
            });
            b.arg(&args.1);
            // SAFETY: argument types and order match diffuse_col2im_f32's signature (dx's chunk
            // starts at a multiple of the row length, so its vector stores are aligned).
            unsafe { b.launch(grid_stride(imgs * g.in_len())) }.w()?;
            super::super::cuda::launched();
        }
        Ok(dx)
    }

    /// dw [co, ci, kh, kw] of conv2d(x, w) for the output gradient dy.
    pub(crate) fn bwd_weight(
        dev: &CudaDevice,
        g: &Geom,
        x: &CudaView<f32>,
        dy: &CudaView<f32>,
    ) -> candle_core::Result<CudaSlice<f32>> {
        #[cfg(feature = "cudnn")]
        if let Some(dw) = super::super::cudnn_conv::bwd_weight(dev, g, x, dy)? {
            super::super::cuda::launched();
            return Ok(dw);
        }
        let (k, p, step) = (g.k(), g.out_len(), chunk(g));
        let first = step.min(g.n);
        // SAFETY: the first GEMM (beta 0) writes all of dw; im2col and the transpose write
        // every element of the chunk's buffers before the GEMM reads them.
        let mut dw = unsafe { dev.alloc::<f32>(g.co * k)? };
        let mut col = unsafe { dev.alloc::<f32>(first * k * p)? };
        let mut dyt = unsafe { dev.alloc::<f32>(first * g.co * p)? };
        for i0 in (0..g.n).step_by(step) {
            let imgs = step.min(g.n - i0);
            let xs = x.slice(i0 * g.in_len()..(i0 + imgs) * g.in_len());
            let dys = dy.slice(i0 * g.co * p..(i0 + imgs) * g.co * p);
            let mut cs = col.slice_mut(..imgs * k * p);
            im2col(dev, g, imgs, &xs, &mut cs, true)?;
            let mut ts = dyt.slice_mut(..imgs * g.co * p);
            transpose(dev, g, imgs, &dys, &mut ts)?;
            let plan = Gemm::bwd_weight(g, imgs, i0 == 0);
            let (ts, cs) = (dyt.slice(..imgs * g.co * p), col.slice(..imgs * k * p));
            gemm(dev, &plan, &ts, &cs, &mut dw.slice_mut(..))?;
        }
        Ok(dw)
    }
}

#[cfg(test)]
mod tests {
    //! The GEMM plans, run by a column-major reference of cuBLAS's strided batched GEMM on
    //! columns built as the kernels build them, against the definition of the convolution.
    use super::{Gemm, Geom};

    /// cuBLAS's sgemm_strided_batched (alpha 1) on host buffers: `a`, `b` as cuBLAS sees them
    /// (so our B, then our A).
    fn cublas_ref(p: &Gemm, ours_a: &[f32], ours_b: &[f32], c: &mut [f32]) {
        let cb = p.cublas();
        let (a, b) = (ours_b, ours_a);
        let at = |bt: usize, i: usize, l: usize| {
            let o = bt * cb.stride_a as usize;
            match cb.transa {
                true => a[o + l + i * cb.lda as usize],
                false => a[o + i + l * cb.lda as usize],
            }
        };
        let bt_ = |bt: usize, l: usize, j: usize| {
            let o = bt * cb.stride_b as usize;
            match cb.transb {
                true => b[o + j + l * cb.ldb as usize],
                false => b[o + l + j * cb.ldb as usize],
            }
        };
        for bt in 0..cb.batch as usize {
            for i in 0..cb.m as usize {
                for j in 0..cb.n as usize {
                    let s: f64 = (0..cb.k as usize)
                        .map(|l| at(bt, i, l) as f64 * bt_(bt, l, j) as f64)
                        .sum();
                    let ci = bt * cb.stride_c as usize + i + j * cb.ldc as usize;
                    c[ci] = (s + p.beta as f64 * c[ci] as f64) as f32;
                }
            }
        }
    }

    /// x[img, c, oy*s - p + i, ox*s - p + j] or None outside the image.
    fn src(
        g: &Geom,
        img: usize,
        c: usize,
        i: usize,
        j: usize,
        oy: usize,
        ox: usize,
    ) -> Option<usize> {
        let iy = (oy * g.stride + i)
            .checked_sub(g.pad)
            .filter(|&v| v < g.h)?;
        let ix = (ox * g.stride + j)
            .checked_sub(g.pad)
            .filter(|&v| v < g.w)?;
        Some(((img * g.ci + c) * g.h + iy) * g.w + ix)
    }

    /// The kernels' im2col: [img][K][P], or [K][img][P] when `k_major`.
    fn im2col(g: &Geom, x: &[f32], k_major: bool) -> Vec<f32> {
        let (k, p) = (g.k(), g.out_len());
        let mut col = vec![0f32; g.n * k * p];
        for img in 0..g.n {
            for c in 0..g.ci {
                for i in 0..g.kh {
                    for j in 0..g.kw {
                        let kx = (c * g.kh + i) * g.kw + j;
                        let row = if k_major {
                            kx * g.n + img
                        } else {
                            img * k + kx
                        };
                        for oy in 0..g.oh {
                            for ox in 0..g.ow {
                                let v = src(g, img, c, i, j, oy, ox).map_or(0.0, |a| x[a]);
                                col[row * p + oy * g.ow + ox] = v;
                            }
                        }
                    }
                }
            }
        }
        col
    }

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
            assert!((a as f64 - b).abs() < 1e-4, "{what}[{i}]: {a} vs {b}");
        }
    }

    /// Each pass's plan, in chunks of `step` images as the device code runs them.
    fn check(g: &Geom, step: usize) {
        let (k, p) = (g.k(), g.out_len());
        let (x, w, dy) = (
            rand(g.n * g.in_len(), 1),
            rand(g.co * k, 2),
            rand(g.n * g.co * p, 3),
        );
        let bias = rand(g.co, 4);
        // The definitions, in float64.
        let (mut y, mut dx, mut dw) = (
            vec![0f64; g.n * g.co * p],
            vec![0f64; g.n * g.in_len()],
            vec![0f64; g.co * k],
        );
        for img in 0..g.n {
            for o in 0..g.co {
                for q in 0..p {
                    y[(img * g.co + o) * p + q] = bias[o] as f64;
                }
                for c in 0..g.ci {
                    for i in 0..g.kh {
                        for j in 0..g.kw {
                            let kx = (c * g.kh + i) * g.kw + j;
                            for oy in 0..g.oh {
                                for ox in 0..g.ow {
                                    let Some(a) = src(g, img, c, i, j, oy, ox) else {
                                        continue;
                                    };
                                    let yi = (img * g.co + o) * p + oy * g.ow + ox;
                                    let wv = w[o * k + kx] as f64;
                                    y[yi] += wv * x[a] as f64;
                                    dx[a] += wv * dy[yi] as f64;
                                    dw[o * k + kx] += dy[yi] as f64 * x[a] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        // Forward: bias fill, then per chunk im2col (image-major) and the GEMM onto it.
        let mut got = vec![0f32; g.n * g.co * p];
        for img in 0..g.n {
            for o in 0..g.co {
                got[(img * g.co + o) * p..][..p].fill(bias[o]);
            }
        }
        let col = im2col(g, &x, false);
        for i0 in (0..g.n).step_by(step) {
            let imgs = step.min(g.n - i0);
            let cs = &col[i0 * k * p..(i0 + imgs) * k * p];
            let ys = &mut got[i0 * g.co * p..(i0 + imgs) * g.co * p];
            cublas_ref(&Gemm::fwd(g, imgs, true), &w, cs, ys);
        }
        close(&got, &y, "forward");
        // Input gradient: per chunk the GEMM's columns, then col2im as a scatter-add.
        let mut got = vec![0f32; g.n * g.in_len()];
        for i0 in (0..g.n).step_by(step) {
            let imgs = step.min(g.n - i0);
            let mut dcol = vec![0f32; imgs * k * p];
            let dys = &dy[i0 * g.co * p..(i0 + imgs) * g.co * p];
            cublas_ref(&Gemm::bwd_input(g, imgs), &w, dys, &mut dcol);
            for img in 0..imgs {
                for c in 0..g.ci {
                    for i in 0..g.kh {
                        for j in 0..g.kw {
                            let row = img * k + (c * g.kh + i) * g.kw + j;
                            for oy in 0..g.oh {
                                for ox in 0..g.ow {
                                    if let Some(a) = src(g, i0 + img, c, i, j, oy, ox) {
                                        got[a] += dcol[row * p + oy * g.ow + ox];
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        close(&got, &dx, "input gradient");
        // Weight gradient: per chunk k-major columns and dy transposed, accumulated.
        let mut got = vec![0f32; g.co * k];
        for i0 in (0..g.n).step_by(step) {
            let imgs = step.min(g.n - i0);
            let sub = Geom { n: imgs, ..*g };
            let col = im2col(&sub, &x[i0 * g.in_len()..(i0 + imgs) * g.in_len()], true);
            let mut dyt = vec![0f32; imgs * g.co * p];
            for img in 0..imgs {
                for o in 0..g.co {
                    for q in 0..p {
                        dyt[(o * imgs + img) * p + q] = dy[((i0 + img) * g.co + o) * p + q];
                    }
                }
            }
            cublas_ref(&Gemm::bwd_weight(g, imgs, i0 == 0), &dyt, &col, &mut got);
        }
        close(&got, &dw, "weight gradient");
    }

    #[test]
    fn gemm_plans_give_the_convolution_and_its_gradients() {
        // (x dims, w dims, stride, pad), each whole and in chunks of 2 images.
        let cases: [([usize; 4], [usize; 4], usize, usize); 5] = [
            ([3, 4, 6, 5], [5, 4, 3, 3], 1, 1),
            ([3, 3, 7, 6], [2, 3, 3, 3], 2, 1),
            ([3, 6, 4, 4], [3, 6, 1, 1], 1, 0),
            ([2, 2, 5, 5], [3, 2, 3, 3], 1, 0),
            ([3, 2, 8, 8], [4, 2, 3, 3], 2, 0),
        ];
        for (x, w, s, p) in cases {
            let g = Geom::new(&x, &w, s, p).unwrap();
            check(&g, g.n);
            check(&g, 2);
        }
    }
}
