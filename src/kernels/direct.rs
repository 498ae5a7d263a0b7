//! Direct stride-1 "same" convolutions (3x3 pad 1, 1x1 pad 0) with AVX-512 microkernels: the
//! forward pass, the input gradient (the forward pass of the flipped, transposed kernel) and
//! the 3x3 weight gradient, with no im2col matrix. 3x3 passes with at least 8 channels on
//! each side go to Winograd (winograd.rs) instead; these kernels take the 1x1 convolutions
//! and the UNet's 1-channel input and output convolutions.
//!
//! Each image is copied once into zero-padded planes of row length `wp = w + 2 pad`. In that
//! layout output pixel `p = oy * wp + ox` is `sum_c sum_t w[o, c, t] * xpad[c, p + off_t]`
//! with `off_t = i * wp + j`: a one-dimensional shift per tap, so a tile of 32 consecutive
//! pixels is two unaligned vector loads per tap, whatever the row boundaries (the `2 pad`
//! columns past each row are computed and dropped). The microkernel keeps a 32-pixel x
//! 8-channel tile in 16 registers and broadcasts weights.
//!
//! Why: im2col + gemm spent as much time building, packing and (for the input gradient)
//! scattering the 9x-larger column matrix as in the multiply (profile: gemm microkernels 34%,
//! im2col/col2im/packing 22% of a train step); PyTorch's oneDNN direct convolution was ~2x
//! faster at 64 channels. Measured figures are in docs/kernels.md.
use super::conv::Bias;
use super::par::{collect_chunks, n_threads, slot_sums, tail_mask, with_workspace};
use std::mem::MaybeUninit;

/// Output channels per tile (weights broadcast from one 32-byte row).
const NR: usize = 8;
/// 16-pixel vectors per tile.
const MR: usize = 2;
const TILE: usize = 16 * MR;
/// Output channels per weight-gradient tile.
const WR: usize = 4;

/// Whether the direct kernels take a convolution of this geometry on this CPU. Channel
/// counts that are not a multiple of the tile width are padded with zero weights (the
/// UNet's 1-channel output conv: 8x its few FLOPs, but no 9x im2col copy of its input).
pub(super) fn applies(stride: usize, pad: usize, k: (usize, usize)) -> bool {
    let (kh, kw) = k;
    stride == 1 && kh == kw && (kh == 1 || kh == 3) && pad == kh / 2 && avx512()
}

pub(super) fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The padded-plane geometry of an image of `c` channels, h x w, for a k x k kernel.
#[derive(Clone, Debug)]
struct Planes {
    h: usize,
    w: usize,
    pad: usize,
    /// Row length of a padded plane.
    wp: usize,
    /// Output positions h * wp, rounded up to whole tiles.
    p_pad: usize,
    /// Plane stride: the padded image plus the reads of the last tile, in whole vectors.
    s: usize,
    /// Tap offsets i * wp + j.
    offs: Vec<usize>,
    /// Per 16-position vector of output positions: which lanes are real pixels (not dropped
    /// columns or the tail) and the output index of the first one. Real pixels of a vector
    /// are consecutive in the output, rows included, so one compressed store writes them.
    stores: Vec<(u16, u32)>,
}

impl Planes {
    fn new(h: usize, w: usize, k: usize) -> Self {
        let pad = k / 2;
        let wp = w + 2 * pad;
        let p_pad = (h * wp).div_ceil(TILE) * TILE;
        let s = (p_pad + (k - 1) * wp + (k - 1)).div_ceil(16) * 16;
        let offs = (0..k)
            .flat_map(|i| (0..k).map(move |j| i * wp + j))
            .collect();
        let stores = (0..p_pad / 16)
            .map(|v| {
                let real = |l: usize| {
                    let p = 16 * v + l;
                    (p / wp < h && p % wp < w).then_some((p / wp) * w + p % wp)
                };
                let mask = (0..16)
                    .filter(|&l| real(l).is_some())
                    .fold(0u16, |m, l| m | 1 << l);
                let first = (0..16).find_map(real).unwrap_or(0);
                (mask, first as u32)
            })
            .collect();
        Self {
            h,
            w,
            pad,
            wp,
            p_pad,
            s,
            offs,
            stores,
        }
    }

    /// Copy image planes `x` (c, h, w) into `dst` (c planes of stride `stride`), zero elsewhere.
    fn pad_into(&self, x: &[f32], c: usize, dst: &mut [f32], stride: usize) {
        let hw = self.h * self.w;
        for ch in 0..c {
            let d = &mut dst[ch * stride..ch * stride + self.s];
            d.fill(0.0);
            for r in 0..self.h {
                let o = (r + self.pad) * self.wp + self.pad;
                d[o..o + self.w].copy_from_slice(&x[ch * hw + r * self.w..][..self.w]);
            }
        }
    }

    /// Copy gradient planes `dy` (c, h, w) into output-position layout (row length `wp`),
    /// zero in the dropped columns and the tail, as the weight gradient's pixel loop needs.
    fn spread_into(&self, dy: &[f32], c: usize, dst: &mut [f32], stride: usize) {
        let hw = self.h * self.w;
        for ch in 0..c {
            let d = &mut dst[ch * stride..ch * stride + self.s];
            d.fill(0.0);
            for r in 0..self.h {
                d[r * self.wp..][..self.w].copy_from_slice(&dy[ch * hw + r * self.w..][..self.w]);
            }
        }
    }
}

/// Weights for the forward microkernel: ceil(cout / NR) blocks of (cin * taps) rows of NR,
/// from `get(o, c, t)`, zero past cout.
fn pack(
    cout: usize,
    cin: usize,
    taps: usize,
    get: impl Fn(usize, usize, usize) -> f32,
) -> Vec<f32> {
    let mut p = Vec::with_capacity(cout * cin * taps);
    for b in 0..cout.div_ceil(NR) {
        for c in 0..cin {
            for t in 0..taps {
                p.extend((0..NR).map(|n| {
                    let o = b * NR + n;
                    if o < cout {
                        get(o, c, t)
                    } else {
                        0.0
                    }
                }));
            }
        }
    }
    p
}

/// One image: y (cout, h, w) = conv(x (cin, h, w)) with packed weights, + bias. `x` holds
/// the image and may run on (the rest of the batch).
fn image(
    pl: &Planes,
    x: &[f32],
    cin: usize,
    wpk: &[f32],
    y: &mut [MaybeUninit<f32>],
    cout: usize,
    bias: Option<&[f32]>,
) {
    let hw = pl.h * pl.w;
    assert!(y.len() == cout * hw && bias.is_none_or(|b| b.len() == cout));
    // A 1x1 kernel reads the planes as they are (row length w, stride hw) when the last
    // tile's overrun (< TILE floats past the image) is still inside `x`: the padded copy was
    // 2.5% of a train step for the UNet's 1x1 shortcut and attention convs.
    if pl.pad == 0 && x.len() >= cin * hw + TILE {
        return image_planes(pl, x, hw, cin, wpk, y, cout, bias);
    }
    with_workspace(cin * pl.s, 0, |xp, _| {
        pl.pad_into(x, cin, xp, pl.s);
        image_planes(pl, xp, pl.s, cin, wpk, y, cout, bias)
    })
}

/// `image` on planes `xp` of stride `s` laid out as `pl` says, readable TILE floats past
/// each plane's output positions.
#[allow(clippy::too_many_arguments)]
fn image_planes(
    pl: &Planes,
    xp: &[f32],
    s: usize,
    cin: usize,
    wpk: &[f32],
    y: &mut [MaybeUninit<f32>],
    cout: usize,
    bias: Option<&[f32]>,
) {
    let (taps, hw) = (pl.offs.len(), pl.h * pl.w);
    let last = pl.offs.last().copied().unwrap_or(0);
    assert!(xp.len() >= (cin - 1) * s + pl.p_pad + last);
    for b in 0..cout.div_ceil(NR) {
        let wb = &wpk[b * cin * taps * NR..(b + 1) * cin * taps * NR];
        let rows = NR.min(cout - b * NR);
        let bb = bias.map(|bias| &bias[b * NR..b * NR + rows]);
        for t0 in (0..pl.p_pad).step_by(TILE) {
            let stores = &pl.stores[t0 / 16..t0 / 16 + MR];
            // SAFETY: tile t0 reads xp[c * s + t0 + off + 0..TILE] for c < cin, inside xp by
            // the assertion above; it writes the real pixels of `stores` (indices < hw by
            // construction) in `rows` planes of y from plane b * NR.
            unsafe {
                tile(
                    xp.as_ptr().add(t0),
                    s,
                    cin,
                    &pl.offs,
                    wb.as_ptr(),
                    y.as_mut_ptr().cast::<f32>().add(b * NR * hw),
                    hw,
                    stores,
                    rows,
                    bb,
                )
            }
        }
    }
}

/// Forward: x (n, ci, h, w), w (co, ci, k, k), bias [co] or [n, co] -> y (n, co, h, w).
#[allow(clippy::too_many_arguments)]
pub(super) fn fwd(
    n: usize,
    ci: usize,
    co: usize,
    (h, w): (usize, usize),
    k: usize,
    x: &[f32],
    wt: &[f32],
    bias: Option<Bias>,
) -> Vec<f32> {
    let wpk = pack(co, ci, k * k, |o, c, t| wt[(o * ci + c) * k * k + t]);
    images(n, (ci, co), (h, w), k, x, &wpk, bias)
}

/// y (n, cout, h, w) from x (n, cin, h, w) with packed weights, one image per task.
fn images(
    n: usize,
    (cin, cout): (usize, usize),
    (h, w): (usize, usize),
    k: usize,
    x: &[f32],
    wpk: &[f32],
    bias: Option<Bias>,
) -> Vec<f32> {
    let pl = Planes::new(h, w, k);
    let (xl, yl) = (cin * h * w, cout * h * w);
    let fill = |i: usize, yn: &mut [MaybeUninit<f32>]| {
        let b = bias.map(|b| b.of_image(i, cout));
        image(&pl, &x[i * xl..], cin, wpk, yn, cout, b);
    };
    // SAFETY: `image` writes every real pixel of every output plane (the tiles' stores cover
    // all positions p < h * w of each row block).
    unsafe { collect_chunks(n * yl, yl, fill) }
}

/// Input gradient: dy (n, co, h, w), w (co, ci, k, k) -> dx (n, ci, h, w), the forward pass
/// of the kernel transposed in channels and flipped in space.
pub(super) fn bwd_input(
    n: usize,
    ci: usize,
    co: usize,
    (h, w): (usize, usize),
    k: usize,
    dy: &[f32],
    wt: &[f32],
) -> Vec<f32> {
    let taps = k * k;
    let wpk = pack(ci, co, taps, |o, c, t| {
        wt[(c * ci + o) * taps + (taps - 1 - t)]
    });
    images(n, (co, ci), (h, w), k, dy, &wpk, None)
}

/// Weight gradient of a 3x3 kernel (1x1 ones are gemms in conv.rs, which measured faster):
/// x (n, ci, h, w), dy (n, co, h, w) -> dw (co, ci, 3, 3) =
/// sum over images and pixels of dy[o, p] * xpad[c, p + off_t]. Images are packed channel-major
/// in chunks, so the pixel loop runs over a whole chunk at once; each slot takes a fixed equal
/// share of the images and the slots' sums are added in slot order, so the result does not
/// depend on scheduling.
#[allow(clippy::too_many_arguments)]
pub(super) fn bwd_weight(
    n: usize,
    ci: usize,
    co: usize,
    (h, w): (usize, usize),
    k: usize,
    x: &[f32],
    dy: &[f32],
) -> Vec<f32> {
    assert_eq!(k, 3, "direct weight gradient: 3x3 kernels only");
    let (pl, taps) = (Planes::new(h, w, k), k * k);
    let (xl, yl) = (ci * h * w, co * h * w);
    // A WR-channel block of dy (WR * nb * s floats) is re-read for every (channel, kernel
    // row): keep it within ~32 KB of L1 (at ~256 KB, in L2, the kernel was bandwidth-bound
    // and 1.4x slower), while the pixel loop stays long enough to amortise the final sums.
    let nb_max = (2048 / pl.s).max(1);
    let nt = n_threads();
    slot_sums(co * ci * taps, |tid, dw| {
        // Slot tid takes an equal share of the images (a fixed assignment: deterministic sums),
        // in chunks of at most nb_max. Round-robin chunks of nb_max had left one thread with
        // 42 of the 64 images at 7x7.
        let (lo, hi) = (tid * n / nt, (tid + 1) * n / nt);
        let chunks = (hi - lo).div_ceil(nb_max);
        for j in 0..chunks {
            let (n0, n1) = (
                lo + j * (hi - lo) / chunks,
                lo + (j + 1) * (hi - lo) / chunks,
            );
            let bn = n1 - n0;
            if bn == 0 {
                continue;
            }
            let len = bn * pl.s;
            // Pixel loop: each image's output positions (rounded to whole vectors), not its
            // plane's slack: 18-33% fewer FMAs at 14x14 / 7x7 than looping over whole planes.
            let sp = Span {
                row: len,
                segs: bn,
                seg: (h * pl.wp).div_ceil(16) * 16,
                stride: pl.s,
            };
            // x chunk (ci, bn, s) with one plane of slack for the last taps' reads.
            // dy rows padded to whole WR-row tiles with zero planes.
            let co_pad = co.div_ceil(WR) * WR;
            with_workspace(ci * len + pl.s, co_pad * len, |xp, dyp| {
                xp[ci * len..].fill(0.0);
                dyp[co * len..].fill(0.0);
                for b in 0..bn {
                    let img = n0 + b;
                    for c in 0..ci {
                        let d = &mut xp[c * len + b * pl.s..];
                        pl.pad_into(&x[img * xl + c * h * w..][..h * w], 1, d, pl.s);
                    }
                    for o in 0..co {
                        let d = &mut dyp[o * len + b * pl.s..];
                        pl.spread_into(&dy[img * yl + o * h * w..][..h * w], 1, d, pl.s);
                    }
                }
                for b in 0..co_pad / WR {
                    for c in 0..ci {
                        for i in 0..k {
                            let mut acc = [[0f32; 3]; WR];
                            // SAFETY: reads dyp rows b*NR.. (each `len`, a multiple of 16)
                            // and xp[c * len + i * wp + j + 0..len] for j < k, inside xp
                            // thanks to the trailing slack plane.
                            unsafe {
                                let xr = xp.as_ptr().add(c * len + i * pl.wp);
                                let dr = dyp.as_ptr().add(b * WR * len);
                                wtile3(dr, xr, sp, &mut acc)
                            }
                            for (nn, a) in acc.iter().enumerate().take(co - b * WR) {
                                let row = ((b * WR + nn) * ci + c) * taps + i * k;
                                for jj in 0..k {
                                    dw[row + jj] += a[jj];
                                }
                            }
                        }
                    }
                }
            });
        }
    })
}

/// Forward microkernel: NR output rows of TILE pixels at `y` (row stride `ldy`) =
/// sum over cin planes (stride `s`) and taps of w * x[off + ..]. `w` is NR floats per
/// (channel, tap) in that order.
///
/// # Safety
/// AVX-512F must be available; all reads and writes must be in bounds (see the caller).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // register tiles indexed by (row, column)
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    x: *const f32,
    s: usize,
    cin: usize,
    offs: &[usize],
    w: *const f32,
    y: *mut f32,
    ldy: usize,
    stores: &[(u16, u32)],
    rows: usize,
    bias: Option<&[f32]>,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); NR]; MR];
    let mut wp = w;
    for c in 0..cin {
        let xc = x.add(c * s);
        for &off in offs {
            let xo = xc.add(off);
            let xv: [__m512; MR] = std::array::from_fn(|m| _mm512_loadu_ps(xo.add(16 * m)));
            for nn in 0..NR {
                let b = _mm512_set1_ps(*wp.add(nn));
                for m in 0..MR {
                    acc[m][nn] = _mm512_fmadd_ps(xv[m], b, acc[m][nn]);
                }
            }
            wp = wp.add(NR);
        }
    }
    // Plain stores to a stack tile first: indexing the accumulators from the data-dependent
    // store loop below made LLVM keep them in memory inside the FMA loop (2.6x slower).
    let mut out = [[0f32; TILE]; NR];
    for nn in 0..NR {
        for m in 0..MR {
            _mm512_storeu_ps(out[nn].as_mut_ptr().add(16 * m), acc[m][nn]);
        }
    }
    // Only real pixels reach y: packed (dropped columns squeezed out), bias added.
    for (nn, row) in out.iter().enumerate().take(rows) {
        let bv = _mm512_set1_ps(bias.map_or(0.0, |b| b[nn]));
        for (m, &(mask, first)) in stores.iter().enumerate() {
            let v = _mm512_add_ps(_mm512_loadu_ps(row.as_ptr().add(16 * m)), bv);
            let dst = y.add(nn * ldy + first as usize);
            if mask == u16::MAX {
                _mm512_storeu_ps(dst, v);
            } else if mask != 0 {
                let packed = _mm512_maskz_compress_ps(mask, v);
                let head = tail_mask(mask.count_ones() as usize);
                _mm512_mask_storeu_ps(dst, head, packed);
            }
        }
    }
}

/// The pixel loop of the weight-gradient kernel: `segs` runs of `seg` positions, `stride`
/// apart, in dy rows `row` floats apart.
#[derive(Clone, Copy)]
struct Span {
    row: usize,
    segs: usize,
    seg: usize,
    stride: usize,
}

/// Weight-gradient microkernel: acc[n][j] = sum_q dy[n * sp.row + q] * x[q + j] over the
/// positions q of `sp`, for the WR gradient rows at `dy` and the 3 taps of one kernel row.
///
/// # Safety
/// AVX-512F must be available; `dy` must hold WR rows of `sp.row` floats and `x` every
/// position of `sp` plus 2 floats.
//
// The accumulators are named variables (generated), 4 rows x 3 taps: written as an array of
// __m512, or with 8 rows (24 accumulators + 11 loads live), LLVM spilled and rotated them and
// the kernel ran at half the forward's FMA rate.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[rustfmt::skip]
unsafe fn wtile3(dy: *const f32, x: *const f32, sp: Span, acc: &mut [[f32; 3]; WR]) {
    let len = sp.row;
    use std::arch::x86_64::*;
    let z = _mm512_setzero_ps();
    let (mut a00, mut a01, mut a02, mut a10, mut a11, mut a12, mut a20, mut a21, mut a22, mut a30, mut a31, mut a32) = (z, z, z, z, z, z, z, z, z, z, z, z);
    for seg in 0..sp.segs {
    let (mut xq, mut dq) = (x.add(seg * sp.stride), dy.add(seg * sp.stride));
    for _ in 0..sp.seg / 16 {
        let x0 = _mm512_loadu_ps(xq);
        let x1 = _mm512_loadu_ps(xq.add(1));
        let x2 = _mm512_loadu_ps(xq.add(2));
        let d = _mm512_loadu_ps(dq);
        a00 = _mm512_fmadd_ps(d, x0, a00);
        a01 = _mm512_fmadd_ps(d, x1, a01);
        a02 = _mm512_fmadd_ps(d, x2, a02);
        let d = _mm512_loadu_ps(dq.add(len));
        a10 = _mm512_fmadd_ps(d, x0, a10);
        a11 = _mm512_fmadd_ps(d, x1, a11);
        a12 = _mm512_fmadd_ps(d, x2, a12);
        let d = _mm512_loadu_ps(dq.add(2 * len));
        a20 = _mm512_fmadd_ps(d, x0, a20);
        a21 = _mm512_fmadd_ps(d, x1, a21);
        a22 = _mm512_fmadd_ps(d, x2, a22);
        let d = _mm512_loadu_ps(dq.add(3 * len));
        a30 = _mm512_fmadd_ps(d, x0, a30);
        a31 = _mm512_fmadd_ps(d, x1, a31);
        a32 = _mm512_fmadd_ps(d, x2, a32);
        xq = xq.add(16);
        dq = dq.add(16);
    }
    }
    acc[0] = [_mm512_reduce_add_ps(a00), _mm512_reduce_add_ps(a01), _mm512_reduce_add_ps(a02)];
    acc[1] = [_mm512_reduce_add_ps(a10), _mm512_reduce_add_ps(a11), _mm512_reduce_add_ps(a12)];
    acc[2] = [_mm512_reduce_add_ps(a20), _mm512_reduce_add_ps(a21), _mm512_reduce_add_ps(a22)];
    acc[3] = [_mm512_reduce_add_ps(a30), _mm512_reduce_add_ps(a31), _mm512_reduce_add_ps(a32)];
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    _: *const f32,
    _: usize,
    _: usize,
    _: &[usize],
    _: *const f32,
    _: *mut f32,
    _: usize,
    _: &[(u16, u32)],
    _: usize,
    _: Option<&[f32]>,
) {
    unreachable!("direct convolution needs AVX-512")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn wtile3(_: *const f32, _: *const f32, _: Span, _: &mut [[f32; 3]; WR]) {
    unreachable!("direct convolution needs AVX-512")
}
