//! Winograd F(2x2, 3x3) for stride-1, pad-1 3x3 convolutions: forward, the input gradient
//! (the forward pass of the flipped, channel-transposed kernel) and the weight gradient.
//!
//! Why: the direct kernels (`direct.rs`) already run at the FMA peak, and 3x3 convolutions
//! were ~40% of a train step. Winograd computes each 2x2 output tile from a 4x4 input tile
//! with 16 multiplies per (output, input) channel pair instead of 36: in transformed space
//! the convolution is 16 independent matrix products `M[xi] = U[xi] (co x ci) . V[xi]
//! (ci x tiles)`, run by the same broadcast-FMA register tile as the direct kernel. The
//! transforms are adds only (`B`, `A` have entries 0 and +-1; `G` has 1/2), so the result
//! stays within ~1e-6 of direct summation. Measured figures are in docs/kernels.md.
//!
//! Layout: each image is split into its four polyphase components (even/odd padded rows x
//! even/odd padded columns), each `(th + 1) x (tw + 1)` for `th x tw` tiles. Tile (ty, tx)
//! then reads `P[i % 2][j % 2][ty + i / 2][tx + j / 2]`: with tiles numbered over the
//! `(tw + 1)`-wide rows, input value (i, j) of 16 consecutive tiles is one vector load at
//! a fixed offset, like the direct kernel's taps. Tiles of the extra column and row are
//! squeezed out by a register compress, so the products run on real tiles only, in bands
//! that span image boundaries. Outputs are re-interleaved in registers, so every row of y is
//! one contiguous copy.
use super::conv::Bias;
use super::par::{
    copy_add, for_each_chunk_mut, for_each_range, n_threads, slot_sums, tail_mask, with_workspace,
    SharedMut, SharedUninit,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Output channels per register tile.
const NR: usize = 8;
/// Tiles per register tile (two 16-lane vectors).
const TT: usize = 32;
/// Scratch for one band's transformed input and products: about half of a core's L2.
const BAND_BYTES: usize = 512 * 1024;
/// Polyphase planes built at once (see `superbands`).
const POLY_BYTES: usize = 256 * 1024;
/// Floats added to the V and M plane strides (see `images`).
const SKEW: usize = 32;

/// Whether a pass from `cin` to `cout` channels of this convolution goes through Winograd on
/// this CPU. With fewer than 8 channels on either side the direct kernel's padding to 8 is
/// cheaper than the transforms (UNet's 1-channel conv_in / conv_out: 0.30 vs 0.45 ms, 0.60
/// vs 0.68 ms at 64x28x28).
pub(super) fn applies(
    stride: usize,
    pad: usize,
    k: (usize, usize),
    cin: usize,
    cout: usize,
) -> bool {
    stride == 1
        && pad == 1
        && k == (3, 3)
        && cin >= NR
        && cout >= NR
        && super::direct::avx512()
        && enabled()
}

/// `DIFFUSE_WINOGRAD=0` sends these convolutions to the direct kernels instead (direct
/// summation; for comparisons and benchmarks). Read once.
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("DIFFUSE_WINOGRAD").map_or(true, |v| v != "0"))
}

/// Tile geometry of an h x w image.
struct Geo {
    h: usize,
    w: usize,
    /// Real tile rows.
    th: usize,
    /// Tiles per (extended) row: tw + 1.
    er: usize,
    /// Tile rows per image, the extra one included: th + 1.
    rows: usize,
}

impl Geo {
    fn new(h: usize, w: usize) -> Self {
        let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
        Self {
            h,
            w,
            th,
            er: tw + 1,
            rows: th + 1,
        }
    }
}

/// Transformed weights `G g G^T`, packed as [16][ceil(cout / NR)][cin][NR] (zero past cout),
/// from `get(o, c, t)` with t = 3 i + j.
#[allow(clippy::needless_range_loop)] // r indexes the transformed columns
fn pack(cout: usize, cin: usize, get: impl Fn(usize, usize, usize) -> f32 + Sync) -> Vec<f32> {
    let nob = cout.div_ceil(NR);
    let mut u = vec![0f32; 16 * nob * cin * NR];
    let up = SharedMut::new(&mut u);
    // In parallel over blocks of NR output channels (whole cache lines each): done serially
    // it left the other core idle for ~5% of a 7x7 convolution.
    for_each_range(nob, |obs| {
        for ob in obs {
            // SAFETY: block ob's 16 regions are written by this task only.
            let dst: [&mut [f32]; 16] = std::array::from_fn(|xi| unsafe {
                up.slice((xi * nob + ob) * cin * NR..(xi * nob + ob + 1) * cin * NR)
            });
            // One channel c for all NR output channels at a time: the transform runs on
            // NR-lane rows (vectorised) and each destination row is one contiguous store
            // (per (o, c) pair in scalar code, pack had been 12% of a 7x7 convolution).
            let os = ob * NR..(ob * NR + NR).min(cout);
            for c in 0..cin {
                let mut g = [[0f32; NR]; 9];
                for (l, o) in os.clone().enumerate() {
                    for (t, gt) in g.iter_mut().enumerate() {
                        gt[l] = get(o, c, t);
                    }
                }
                let col = |j: usize| g_t_lanes([g[j], g[3 + j], g[6 + j]]);
                let gg = [col(0), col(1), col(2)]; // gg[j][r] = (G g)[r][j]
                for r in 0..4 {
                    let row = g_t_lanes([gg[0][r], gg[1][r], gg[2][r]]);
                    for (s, val) in row.iter().enumerate() {
                        dst[4 * r + s][c * NR..(c + 1) * NR].copy_from_slice(val);
                    }
                }
            }
        }
    });
    u
}

/// G a for 3-vectors a (the filter transform along one axis), on NR lanes at once.
#[inline(always)]
fn g_t_lanes(a: [[f32; NR]; 3]) -> [[f32; NR]; 4] {
    let mut out = [a[0], [0.0; NR], [0.0; NR], a[2]];
    for l in 0..NR {
        out[1][l] = 0.5 * (a[0][l] + a[1][l] + a[2][l]);
        out[2][l] = 0.5 * (a[0][l] - a[1][l] + a[2][l]);
    }
    out
}

/// Forward: x (n, ci, h, w), w (co, ci, 3, 3), bias [co] or [n, co] -> y (n, co, h, w).
#[allow(clippy::too_many_arguments)]
pub(super) fn fwd(
    n: usize,
    ci: usize,
    co: usize,
    (h, w): (usize, usize),
    x: &[f32],
    wt: &[f32],
    bias: Option<Bias>,
) -> Vec<f32> {
    let u = pack(co, ci, |o, c, t| wt[(o * ci + c) * 9 + t]);
    images(n, (ci, co), (h, w), x, &u, bias)
}

/// Input gradient: dy (n, co, h, w), w (co, ci, 3, 3) -> dx (n, ci, h, w).
pub(super) fn bwd_input(
    n: usize,
    ci: usize,
    co: usize,
    (h, w): (usize, usize),
    dy: &[f32],
    wt: &[f32],
) -> Vec<f32> {
    let u = pack(ci, co, |o, c, t| wt[(c * ci + o) * 9 + (8 - t)]);
    images(n, (co, ci), (h, w), dy, &u, None)
}

/// Weight gradient: x (n, ci, h, w), dy (n, co, h, w) -> dw (co, ci, 3, 3) = G^T dU G with
/// dU[xi] (co x ci) = sum over tiles of (A dY A^T)[xi] (co x tiles) . V[xi]^T (tiles x ci):
/// per band and xi, 4x4 blocks of dot products over the band's tiles (both operands are
/// tile-contiguous; the `gemm` crate spent a third of its time repacking them). Each slot
/// takes a fixed equal share of the band groups and the slots' sums are added in slot order,
/// so the result does not depend on scheduling.
pub(super) fn bwd_weight(
    n: usize,
    ci: usize,
    co: usize,
    (h, w): (usize, usize),
    x: &[f32],
    dy: &[f32],
) -> Vec<f32> {
    let geo = Geo::new(h, w);
    // Band capacity in tiles (also V's and dM's row stride), longer than the forward's:
    // longer dot products per reduction.
    let tb = (4 * BAND_BYTES / (16 * 4 * (ci + co)) / TT * TT).max(TT);
    let plan = Plan::get(&geo, n, tb, ci + co, n_threads());
    let (bands, groups, spans, ps) = (&plan.bands, &plan.groups, &plan.spans, plan.ps);
    let (vs, ms) = (ci * tb + SKEW, co * tb + SKEW);
    let nt = n_threads();
    let du = slot_sums(16 * co * ci, |tid, du| {
        let mine = tid * groups.len() / nt..(tid + 1) * groups.len() / nt;
        with_workspace(16 * vs + 4 * ci * ps, 16 * ms + 4 * co * ps, |v, m| {
            let (v, xp) = v.split_at_mut(16 * vs);
            let (m, yp) = m.split_at_mut(16 * ms);
            for (gi, bi) in mine.flat_map(|gi| groups[gi].clone().map(move |bi| (gi, bi))) {
                let band = &bands[bi];
                let cnt = plan.starts[bi + 1] - plan.starts[bi];
                if bi == groups[gi].start {
                    band_phases(&geo, x, n, ci, 1, spans[gi], xp, ps);
                    band_phases(&geo, dy, n, co, 0, spans[gi], yp, ps);
                }
                let base = spans[gi].0 * geo.er;
                // SAFETY: as in `images` for x; dy's planes are read at offset 0 only.
                unsafe {
                    transform_in(
                        xp.as_ptr(),
                        (ps, base),
                        geo.er,
                        band,
                        (vs, tb),
                        ci,
                        v.as_mut_ptr(),
                    );
                    transform_dy(yp.as_ptr(), (ps, base), band, (ms, tb), co, m.as_mut_ptr());
                }
                let kv = cnt.div_ceil(16);
                // dU accumulates in 4x4 blocks, [xi][o / 4][c / 4][lane 4 (c % 4) + o % 4]:
                // one vector add per block (scattered scalar adds had cost as much as the
                // dot products at 64 channels).
                for xi in 0..16 {
                    let (mx, vx) = (m[xi * ms..].as_ptr(), v[xi * vs..].as_ptr());
                    let dux = &mut du[xi * co * ci..][..co * ci];
                    for (ob, dub) in dux.chunks_exact_mut(4 * ci).enumerate() {
                        for (cb, acc) in dub.chunks_exact_mut(16).enumerate() {
                            // SAFETY: rows 4 ob.. of dM and 4 cb.. of V, 16 kv <= cnt + 15
                            // floats each, inside their planes (dM zero past cnt).
                            unsafe {
                                dot4x4(mx.add(4 * ob * tb), vx.add(4 * cb * tb), tb, kv, acc)
                            };
                        }
                    }
                }
            }
        })
    });
    let mut dw = vec![0f32; co * ci * 9];
    // In parallel over output channels: serial, it left the other core idle for ~8% of a
    // 7x7 weight gradient.
    for_each_chunk_mut(&mut dw, ci * 9, |o, dwo| {
        for (c, out) in dwo.chunks_exact_mut(9).enumerate() {
            let blk = (o / 4 * (ci / 4) + c / 4) * 16 + 4 * (c % 4) + o % 4;
            let at = |r: usize, s: usize| du[(4 * r + s) * co * ci + blk];
            // G^T dU: per column s; then (G^T dU) G: per row.
            let cols: [[f32; 3]; 4] =
                std::array::from_fn(|s| gt([at(0, s), at(1, s), at(2, s), at(3, s)]));
            for i in 0..3 {
                let row = gt([cols[0][i], cols[1][i], cols[2][i], cols[3][i]]);
                out[3 * i..3 * i + 3].copy_from_slice(&row);
            }
        }
    });
    dw
}

/// G^T a for a 4-vector a: the adjoint of `g_t`.
fn gt(a: [f32; 4]) -> [f32; 3] {
    [
        a[0] + 0.5 * (a[1] + a[2]),
        0.5 * (a[1] - a[2]),
        0.5 * (a[1] + a[2]) + a[3],
    ]
}

/// y (n, cout, h, w) from x (n, cin, h, w) with transformed weights `u`: bands of real
/// tiles (possibly spanning images) in parallel, each group of bands building its polyphase
/// planes once, so every band but the last fills its register tiles.
fn images(
    n: usize,
    (cin, cout): (usize, usize),
    (h, w): (usize, usize),
    x: &[f32],
    u: &[f32],
    bias: Option<Bias>,
) -> Vec<f32> {
    let geo = Geo::new(h, w);
    let tw = geo.er - 1;
    let co8 = cout.div_ceil(NR) * NR;
    // Band capacity in real tiles (also V's and M's row stride): V and M within
    // BAND_BYTES, whole register tiles.
    let tb = (BAND_BYTES / (16 * 4 * (cin + co8)) / TT * TT).max(TT);
    let plan = Plan::get(&geo, n, tb, cin, 4 * n_threads());
    let (bands, groups, spans, ps) = (&plan.bands, &plan.groups, &plan.spans, plan.ps);
    // Every element of y is written below (the bands cover every real tile, whose outputs
    // cover every pixel), so y starts uninitialised and is written through a raw pointer:
    // zeroing it first was a memset of up to 13 MB per call.
    let len = n * cout * h * w;
    let mut y: Vec<f32> = Vec::with_capacity(len);
    let yp = SharedUninit::new(&mut y, len);
    // Plane strides of V and M skewed off multiples of 4 KiB: the 16 planes written (and read)
    // together at 32 KiB apart had all mapped to one L1 set (transform_in ran 4x slower).
    // The skew also takes the last channel's compressed stores spilling past its row.
    let (vs, ms) = (cin * tb + SKEW, co8 * tb + SKEW);
    let (vl, ml) = (16 * vs, 16 * ms);
    for_each_range(groups.len(), |r| {
        with_workspace(vl + 4 * cin * ps, ml + 4 * tb, |v, rest| {
            let (v, poly) = v.split_at_mut(vl);
            let (m, z) = rest.split_at_mut(ml);
            for (gi, bi) in r.flat_map(|gi| groups[gi].clone().map(move |bi| (gi, bi))) {
                let band = &bands[bi];
                let (k0, k1) = (plan.starts[bi], plan.starts[bi + 1]);
                let cnt = k1 - k0;
                let tn = cnt.div_ceil(TT) * TT;
                if bi == groups[gi].start {
                    band_phases(&geo, x, n, cin, 1, spans[gi], poly, ps);
                }
                // SAFETY: reads the band's planes at 16 q + l + off - r0 * er for its vectors
                // q, l < 16 and off <= er + 1, inside the span; writes
                // v[xi * vs + c * tb + 0..cnt + 15], inside v thanks to the skew.
                unsafe {
                    transform_in(
                        poly.as_ptr(),
                        (ps, spans[gi].0 * geo.er),
                        geo.er,
                        band,
                        (vs, tb),
                        cin,
                        v.as_mut_ptr(),
                    )
                };
                let nob = co8 / NR;
                for xi in 0..16 {
                    for ob in 0..nob {
                        let ub = &u[(xi * nob + ob) * cin * NR..][..cin * NR];
                        for t0 in (0..tn).step_by(TT) {
                            // SAFETY: reads v[xi][c][t0..t0 + TT] for c < cin and ub; writes
                            // m[xi][ob * NR + 0..NR][t0..t0 + TT], all inside their slices.
                            unsafe {
                                mk(
                                    v.as_ptr().add(xi * vs + t0),
                                    tb,
                                    cin,
                                    ub.as_ptr(),
                                    m.as_mut_ptr().add(xi * ms + ob * NR * tb + t0),
                                    tb,
                                )
                            }
                        }
                    }
                }
                let (z0, z1) = z.split_at_mut(2 * tb);
                for o in 0..cout {
                    // SAFETY: reads m[xi][o][0..tn]; writes z0, z1[0..2 tn] (2 * tb each).
                    unsafe {
                        transform_out(
                            m.as_ptr().add(o * tb),
                            ms,
                            tn,
                            z0.as_mut_ptr(),
                            z1.as_mut_ptr(),
                        )
                    };
                    // Tile rows (image, ty) overlapping the band's tiles k0..k1.
                    for row in k0 / tw..k1.div_ceil(tw) {
                        let (img, ty) = (row / geo.th, row % geo.th);
                        let ta = k0.max(row * tw) - row * tw;
                        let tz = k1.min(row * tw + tw) - row * tw;
                        let (c0, c1) = (2 * ta, (2 * tz).min(w));
                        let at = 2 * (row * tw + ta - k0);
                        let b = bias.map_or(0.0, |b| b.of_image(img, cout)[o]);
                        for (i, zi) in [&*z0, &*z1].into_iter().enumerate() {
                            let r = 2 * ty + i;
                            if r < h {
                                let base = ((img * cout + o) * h + r) * w;
                                // SAFETY: bands own disjoint tiles, so disjoint (row, column)
                                // ranges of y.
                                let dst = unsafe { yp.piece(base + c0, c1 - c0) };
                                copy_add(dst, &zi[at..], b);
                            }
                        }
                    }
                }
            }
        })
    });
    // SAFETY: all `len` elements were written (see above).
    unsafe { y.set_len(len) };
    y
}

/// How a call's tiles are split: bands, their groups sharing polyphase planes, and where
/// each band's tiles start (band b holds real tiles starts[b]..starts[b + 1]). The same for
/// every call with the same shapes, so cached: built serially, it had left the other core
/// idle ~50 us per call at 28x28.
struct Plan {
    bands: Vec<Vec<(usize, u16)>>,
    groups: Vec<std::ops::Range<usize>>,
    spans: Vec<(usize, usize)>,
    ps: usize,
    starts: Vec<usize>,
}

impl Plan {
    fn get(geo: &Geo, n: usize, cap: usize, chans: usize, min_groups: usize) -> Arc<Plan> {
        type Key = (usize, usize, usize, usize, usize, usize);
        static CACHE: Mutex<Option<HashMap<Key, Arc<Plan>>>> = Mutex::new(None);
        let key = (geo.h, geo.w, n, cap, chans, min_groups);
        let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        let map = cache.get_or_insert_with(HashMap::new);
        if let Some(p) = map.get(&key) {
            return p.clone();
        }
        let bands = bands(geo, n, cap);
        let (groups, spans, ps) = superbands(geo, &bands, chans, min_groups);
        let starts = std::iter::once(0)
            .chain(bands.iter().scan(0, |k, b| {
                *k += b
                    .iter()
                    .map(|&(_, m)| m.count_ones() as usize)
                    .sum::<usize>();
                Some(*k)
            }))
            .collect();
        let plan = Arc::new(Plan {
            bands,
            groups,
            spans,
            ps,
            starts,
        });
        if map.len() >= 256 {
            map.clear(); // shapes are few in practice; bound the memory anyway
        }
        map.insert(key, plan.clone());
        plan
    }
}

/// The real tiles of `n` images in bands of at most `cap`, in order: each band a list of
/// (extended 16-tile vector, lanes taken from it). A vector is split between bands when it
/// does not fit, so every band but the last is full.
fn bands(geo: &Geo, n: usize, cap: usize) -> Vec<Vec<(usize, u16)>> {
    let ext = n * geo.rows * geo.er;
    let real = |e: usize| e < ext && e % geo.er < geo.er - 1 && (e / geo.er) % geo.rows < geo.th;
    let (mut out, mut cur, mut cnt) = (Vec::new(), Vec::new(), 0);
    for q in 0..ext.div_ceil(16) {
        let mut m = (0..16)
            .filter(|&l| real(16 * q + l))
            .fold(0u16, |m, l| m | 1 << l);
        while m != 0 {
            // The lowest set lanes of m that fit.
            let mut take = m;
            while take.count_ones() as usize > cap - cnt {
                take &= !(1 << (15 - take.leading_zeros()));
            }
            cur.push((q, take));
            cnt += take.count_ones() as usize;
            m &= !take;
            if cnt == cap {
                out.push(std::mem::take(&mut cur));
                cnt = 0;
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Rows of extended tiles [r0, r1) (over all images, `rows` per image) that `band` reads.
fn band_span(geo: &Geo, band: &[(usize, u16)]) -> (usize, usize) {
    let (qa, qz) = (band[0].0, band[band.len() - 1].0);
    (
        16 * qa / geo.er,
        (16 * qz + 16 + geo.er + 1).div_ceil(geo.er),
    )
}

/// Consecutive bands that share one build of the polyphase planes, and each group's span:
/// neighbouring bands' spans overlap by a row or two, which had been ~40% of the planes'
/// work at 28x28 with one build per band. Groups are as long as keeps `chans` channels'
/// planes within POLY_BYTES and leaves at least `min_groups` of them.
fn superbands(
    geo: &Geo,
    bands: &[Vec<(usize, u16)>],
    chans: usize,
    min_groups: usize,
) -> (Vec<std::ops::Range<usize>>, Vec<(usize, usize)>, usize) {
    let spans: Vec<(usize, usize)> = bands.iter().map(|b| band_span(geo, b)).collect();
    let nb = bands.len();
    let group = |s: usize| {
        let groups: Vec<_> = (0..nb).step_by(s).map(|i| i..(i + s).min(nb)).collect();
        let gs: Vec<_> = groups
            .iter()
            .map(|g| (spans[g.start].0, spans[g.end - 1].1))
            .collect();
        let ps = plane_len(geo, &gs);
        (groups, gs, ps)
    };
    [8, 4, 2]
        .into_iter()
        .map(group)
        .find(|(g, _, ps)| g.len() >= min_groups && 4 * chans * ps * 4 <= POLY_BYTES)
        .unwrap_or_else(|| group(1))
}

/// Plane stride for the bands' spans: the longest, in whole vectors.
fn plane_len(geo: &Geo, spans: &[(usize, usize)]) -> usize {
    let rows = spans.iter().map(|&(a, b)| b - a).max().unwrap_or(0);
    (rows * geo.er).div_ceil(16) * 16
}

/// The four polyphase planes of extended tile rows [r0, r1) of `cin`-channel images x, `pad`
/// (0 or 1) zero rows and columns before each image: channel c's plane 2a + b (padded row
/// parity a, column parity b) at `dst[(4 c + 2 a + b) * ps..]`, tile row r at `(r - r0) * er`,
/// zero outside the images. Built per band, so the planes stay in cache (a copy of the whole
/// batch went through memory: 20% of a 96-channel forward pass).
#[allow(clippy::too_many_arguments)]
fn band_phases(
    geo: &Geo,
    x: &[f32],
    n: usize,
    cin: usize,
    pad: usize,
    (r0, r1): (usize, usize),
    dst: &mut [f32],
    ps: usize,
) {
    let (h, w, er) = (geo.h, geo.w, geo.er);
    dst[..4 * cin * ps].fill(0.0);
    // Per band row: (offset within a channel of its first x row, image, phase a of that row,
    // plane offset, rows: 1 or 2), the divisions done once per call instead of per channel (at
    // 7x7 a row is 7 floats, and this bookkeeping was a visible part of the weight gradient).
    // Padded row 2 ty + a is x row 2 ty + a - pad, so a row's two phases, when both exist,
    // are consecutive x rows.
    let todo: Vec<(usize, usize, usize, usize, usize)> = (r0..r1.min(n * geo.rows))
        .filter_map(|row| {
            let (img, ty) = (row / geo.rows, row % geo.rows);
            let x_row = |a: usize| (2 * ty + a).checked_sub(pad).filter(|&r| r < h);
            let poff = (row - r0) * er;
            match (x_row(0), x_row(1)) {
                (Some(r), next) => Some((r * w, img, 0, poff, 1 + next.is_some() as usize)),
                (None, Some(r)) => Some((r * w, img, 1, poff, 1)),
                (None, None) => None,
            }
        })
        .collect();
    // A channel's rows are a few KB, too short for the hardware prefetcher to ramp up:
    // fetch the same rows two channels ahead (not for tiny planes, where a whole image's
    // channels are a few KB and the hint costs more than it saves).
    let hint = w >= 16;
    // Even and odd destination rows of phase a at plane offset poff for channel c, and
    // their lengths.
    let split = |dst: &mut [f32], c: usize, a: usize, poff: usize| {
        let base = (4 * c + 2 * a) * ps + poff;
        let (p0, p1) = dst[base..base + ps + er].split_at_mut(ps);
        // Columns 2v and 2v + 1 go to padded columns 2v + pad and 2v + 1 + pad.
        if pad == 1 {
            (p1.as_mut_ptr(), p0[1..].as_mut_ptr(), er - 1)
        } else {
            (p0.as_mut_ptr(), p1.as_mut_ptr(), er)
        }
    };
    for c in 0..cin {
        for &(roff, img, a, poff, rows) in &todo {
            let src = &x[(img * cin + c) * h * w + roff..];
            // Rows of at most 16 floats go two at a time: one pair of loads and one call.
            if rows == 2 && w <= 16 && src.len() >= 32 {
                let ((e0, o0, _), (e1, o1, _)) = (split(dst, c, 0, poff), split(dst, c, 1, poff));
                // SAFETY: AVX-512 (see `applies`); each destination row holds er >= w/2 + 1
                // floats past its start (odd rows with pad 1 start one in, and hold w/2).
                unsafe { deinterleave2(src, w, [e0, o0, e1, o1]) };
                continue;
            }
            for k in 0..rows {
                if hint && c + 2 < cin {
                    prefetch(&x[(img * cin + c + 2) * h * w + roff + k * w..][..w]);
                }
                let (e, o, no) = split(dst, c, a + k, poff);
                // SAFETY: AVX-512 (see `applies`); e and o start rows of er and no floats in
                // distinct planes of `dst` (see `split`).
                unsafe {
                    let even = std::slice::from_raw_parts_mut(e, er);
                    let odd = std::slice::from_raw_parts_mut(o, no);
                    deinterleave(&src[k * w..], w, even, odd)
                };
            }
        }
    }
}

/// Two consecutive rows of `w` <= 16 floats (src[0..2w], with src.len() >= 32) split into
/// [even, odd] of the first row and [even, odd] of the second, at `dst`'s four pointers.
///
/// # Safety
/// AVX-512F must be available; each destination must hold ceil(w / 2) (even) or w / 2 (odd)
/// floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn deinterleave2(src: &[f32], w: usize, dst: [*mut f32; 4]) {
    use std::arch::x86_64::*;
    assert!(w <= 16 && src.len() >= 32);
    let ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let sh = _mm512_set1_epi32(w as i32);
    let (lo, hi) = (
        _mm512_loadu_ps(src.as_ptr()),
        _mm512_loadu_ps(src.as_ptr().add(16)),
    );
    let (me, mo) = (tail_mask(w.div_ceil(2)), tail_mask(w / 2));
    let idx = [ie, io, _mm512_add_epi32(ie, sh), _mm512_add_epi32(io, sh)];
    for (k, (&d, ix)) in dst.iter().zip(idx).enumerate() {
        let m = if k % 2 == 0 { me } else { mo };
        _mm512_mask_storeu_ps(d, m, _mm512_permutex2var_ps(lo, ix, hi));
    }
}
#[cfg(not(target_arch = "x86_64"))]
unsafe fn deinterleave2(_: &[f32], _: usize, _: [*mut f32; 4]) {
    unreachable!("winograd kernels need AVX-512")
}

/// Ask for `s` in cache (a hint; no effect off x86-64).
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn prefetch(s: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in s.chunks(16) {
        // SAFETY: prefetching is a hint and never faults; the address is inside `s`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            )
        }
    }
}

/// even[v] = src[2 v], odd[v] = src[2 v + 1] for 2 v (+ 1) < n; `src` may extend past n.
///
/// # Safety
/// AVX-512F must be available; `even` must hold ceil(n / 2), `odd` floor(n / 2) values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn deinterleave(src: &[f32], n: usize, even: &mut [f32], odd: &mut [f32]) {
    use std::arch::x86_64::*;
    // Scalar loops at baseline x86-64 (SSE) made this copy 16% of a weight gradient; masked
    // loads were slower still (whole-vector loads when the source has them).
    let ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let mask = |k: usize| tail_mask(k.min(16));
    assert!(src.len() >= n && even.len() >= n.div_ceil(2) && odd.len() >= n / 2);
    for i in (0..n).step_by(32) {
        let k = (n - i).min(32);
        if src.len() - i < 32 {
            for (j, &val) in src[i..i + k].iter().enumerate() {
                let (dst, at) = if j % 2 == 0 {
                    (&mut *even, j / 2)
                } else {
                    (&mut *odd, j / 2)
                };
                dst[i / 2 + at] = val;
            }
            continue;
        }
        let (lo, hi) = (
            _mm512_loadu_ps(src.as_ptr().add(i)),
            _mm512_loadu_ps(src.as_ptr().add(i + 16)),
        );
        let (e, o) = (
            _mm512_permutex2var_ps(lo, ie, hi),
            _mm512_permutex2var_ps(lo, io, hi),
        );
        _mm512_mask_storeu_ps(even.as_mut_ptr().add(i / 2), mask(k.div_ceil(2)), e);
        _mm512_mask_storeu_ps(odd.as_mut_ptr().add(i / 2), mask(k / 2), o);
    }
}

/// V[xi][c][k] (plane stride ld, row stride tb) = (B^T d B)[xi] for the 4x4 input tile d
/// of the k-th lane taken by `band` ((vector q, lanes): extended tiles 16 q + lane), from
/// planes of stride ps starting at extended tile `base`.
///
/// # Safety
/// AVX-512F must be available; reads `poly` as laid out by `band_phases`, writes
/// `v[xi * ld + c * tb + 0..cnt + 15]` (cnt: the lanes taken); stores are whole vectors of
/// compressed lanes, each overwriting the previous one's tail.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)]
unsafe fn transform_in(
    poly: *const f32,
    (ps, base): (usize, usize),
    er: usize,
    band: &[(usize, u16)],
    (ld, tb): (usize, usize),
    cin: usize,
    v: *mut f32,
) {
    use std::arch::x86_64::*;
    let offs: [[usize; 4]; 4] = std::array::from_fn(|i| {
        std::array::from_fn(|j| ((i % 2) * 2 + j % 2) * ps + (i / 2) * er + j / 2)
    });
    for c in 0..cin {
        let p = poly.add(4 * c * ps);
        let out = v.add(c * tb);
        let mut k = 0;
        for &(q, mask) in band {
            let t = 16 * q - base;
            let d: [[__m512; 4]; 4] = std::array::from_fn(|i| {
                std::array::from_fn(|j| _mm512_loadu_ps(p.add(offs[i][j] + t)))
            });
            let mut r = [[_mm512_setzero_ps(); 4]; 4];
            for j in 0..4 {
                r[0][j] = _mm512_sub_ps(d[0][j], d[2][j]);
                r[1][j] = _mm512_add_ps(d[1][j], d[2][j]);
                r[2][j] = _mm512_sub_ps(d[2][j], d[1][j]);
                r[3][j] = _mm512_sub_ps(d[1][j], d[3][j]);
            }
            for i in 0..4 {
                let q = [
                    _mm512_sub_ps(r[i][0], r[i][2]),
                    _mm512_add_ps(r[i][1], r[i][2]),
                    _mm512_sub_ps(r[i][2], r[i][1]),
                    _mm512_sub_ps(r[i][1], r[i][3]),
                ];
                for j in 0..4 {
                    let val = if mask == u16::MAX {
                        q[j]
                    } else {
                        _mm512_maskz_compress_ps(mask, q[j])
                    };
                    _mm512_storeu_ps(out.add((4 * i + j) * ld + k), val);
                }
            }
            k += mask.count_ones() as usize;
        }
    }
}

/// dM[xi][o][k] (plane stride ld, row stride tb) = (A dY A^T)[xi] for the 2x2 output
/// gradient dY of the k-th lane taken by `band`, read from dy's unpadded polyphase planes,
/// zero for k from the band's tile count to the next multiple of 16.
///
/// # Safety
/// As `transform_in`, with `co` channels and reads at offset 0 only.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)]
unsafe fn transform_dy(
    poly: *const f32,
    (ps, base): (usize, usize),
    band: &[(usize, u16)],
    (ld, tb): (usize, usize),
    co: usize,
    m: *mut f32,
) {
    use std::arch::x86_64::*;
    let zero = _mm512_setzero_ps();
    // A applied to a 2-vector (u, v): u, u + v, u - v, -v.
    let a = |u: __m512, v: __m512| {
        [
            u,
            _mm512_add_ps(u, v),
            _mm512_sub_ps(u, v),
            _mm512_sub_ps(zero, v),
        ]
    };
    for o in 0..co {
        let p = poly.add(4 * o * ps);
        let out = m.add(o * tb);
        let mut k = 0;
        for &(q, mask) in band {
            let t = 16 * q - base;
            let y: [__m512; 4] = std::array::from_fn(|ab| _mm512_loadu_ps(p.add(ab * ps + t)));
            // A dY per column b, then A along each resulting row.
            let col = [a(y[0], y[2]), a(y[1], y[3])];
            for r in 0..4 {
                for (s, val) in a(col[0][r], col[1][r]).into_iter().enumerate() {
                    let val = if mask == u16::MAX {
                        val
                    } else {
                        _mm512_maskz_compress_ps(mask, val)
                    };
                    _mm512_storeu_ps(out.add((4 * r + s) * ld + k), val);
                }
            }
            k += mask.count_ones() as usize;
        }
        // Zeros past the band's tiles, so whole-vector dot products ignore them.
        for xi in 0..16 {
            _mm512_storeu_ps(out.add(xi * ld + k), zero);
        }
    }
}

/// acc[4 j + i] += sum over t < 16 kv of dm[i * ld + t] * v[j * ld + t], for i, j < 4.
///
/// # Safety
/// AVX-512F must be available; reads 4 rows of `16 kv` floats at `ld` apart from each pointer.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // register tiles indexed by (row, column)
unsafe fn dot4x4(dm: *const f32, v: *const f32, ld: usize, kv: usize, acc_out: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 4]; 4];
    for t in 0..kv {
        let a: [__m512; 4] = std::array::from_fn(|i| _mm512_loadu_ps(dm.add(i * ld + 16 * t)));
        let b: [__m512; 4] = std::array::from_fn(|j| _mm512_loadu_ps(v.add(j * ld + 16 * t)));
        for i in 0..4 {
            for j in 0..4 {
                acc[i][j] = _mm512_fmadd_ps(a[i], b[j], acc[i][j]);
            }
        }
    }
    // Sum each accumulator's 16 lanes: halve the lanes per value four times, pairing values.
    let v: [__m512; 16] = std::array::from_fn(|k| acc[k / 4][k % 4]);
    let w: [__m512; 8] = std::array::from_fn(|k| {
        let (a, b) = (v[2 * k], v[2 * k + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(a, b),
            _mm512_shuffle_f32x4::<0xEE>(a, b),
        )
    });
    let x: [__m512; 4] = std::array::from_fn(|k| {
        let (a, b) = (w[2 * k], w[2 * k + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(a, b),
            _mm512_shuffle_f32x4::<0xDD>(a, b),
        )
    });
    let y: [__m512; 2] = std::array::from_fn(|k| {
        let (a, b) = (x[2 * k], x[2 * k + 1]);
        _mm512_add_ps(
            _mm512_shuffle_ps::<0x88>(a, b),
            _mm512_shuffle_ps::<0xDD>(a, b),
        )
    });
    let z = _mm512_add_ps(
        _mm512_shuffle_ps::<0x88>(y[0], y[1]),
        _mm512_shuffle_ps::<0xDD>(y[0], y[1]),
    );
    assert!(acc_out.len() >= 16);
    let sum = _mm512_add_ps(_mm512_loadu_ps(acc_out.as_ptr()), z);
    _mm512_storeu_ps(acc_out.as_mut_ptr(), sum);
}

/// The 2x2 outputs `A^T M A` of tiles 0..tb of one channel (`m[xi * ld + t]`), interleaved:
/// output row i of tile t, columns 0 and 1, at `z_i[2 t]` and `z_i[2 t + 1]`.
///
/// # Safety
/// AVX-512F must be available; reads m[xi * ld + 0..tb] for xi < 16, writes z0, z1[0..2 tb].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transform_out(m: *const f32, ld: usize, tb: usize, z0: *mut f32, z1: *mut f32) {
    use std::arch::x86_64::*;
    let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for t in (0..tb).step_by(16) {
        let mv: [[__m512; 4]; 4] = std::array::from_fn(|i| {
            std::array::from_fn(|j| _mm512_loadu_ps(m.add((4 * i + j) * ld + t)))
        });
        // A^T M: rows m0 + m1 + m2 and m1 - m2 - m3.
        let s: [[__m512; 4]; 2] = [
            std::array::from_fn(|j| _mm512_add_ps(_mm512_add_ps(mv[0][j], mv[1][j]), mv[2][j])),
            std::array::from_fn(|j| _mm512_sub_ps(_mm512_sub_ps(mv[1][j], mv[2][j]), mv[3][j])),
        ];
        for (i, z) in [z0, z1].into_iter().enumerate() {
            let y0 = _mm512_add_ps(_mm512_add_ps(s[i][0], s[i][1]), s[i][2]);
            let y1 = _mm512_sub_ps(_mm512_sub_ps(s[i][1], s[i][2]), s[i][3]);
            _mm512_storeu_ps(z.add(2 * t), _mm512_permutex2var_ps(y0, lo, y1));
            _mm512_storeu_ps(z.add(2 * t + 16), _mm512_permutex2var_ps(y0, hi, y1));
        }
    }
}

/// NR rows of TT products at `m` (row stride `ldm`) = sum over c < cin of `u[c][0..NR]`
/// (broadcast) times `v[c * ldv + 0..TT]`.
///
/// # Safety
/// AVX-512F must be available; all reads and writes in bounds (see the caller).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // register tiles indexed by (row, column)
unsafe fn mk(v: *const f32, ldv: usize, cin: usize, u: *const f32, m: *mut f32, ldm: usize) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); NR]; 2];
    let mut up = u;
    for c in 0..cin {
        let vc = v.add(c * ldv);
        let x = [_mm512_loadu_ps(vc), _mm512_loadu_ps(vc.add(16))];
        for nn in 0..NR {
            let b = _mm512_set1_ps(*up.add(nn));
            for k in 0..2 {
                acc[k][nn] = _mm512_fmadd_ps(x[k], b, acc[k][nn]);
            }
        }
        up = up.add(NR);
    }
    for nn in 0..NR {
        for k in 0..2 {
            _mm512_storeu_ps(m.add(nn * ldm + 16 * k), acc[k][nn]);
        }
    }
}

// Never called off x86-64: `applies` is false there.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn transform_in(
    _: *const f32,
    _: (usize, usize),
    _: usize,
    _: &[(usize, u16)],
    _: (usize, usize),
    _: usize,
    _: *mut f32,
) {
    unreachable!("winograd kernels need AVX-512")
}
#[cfg(not(target_arch = "x86_64"))]
unsafe fn transform_dy(
    _: *const f32,
    _: (usize, usize),
    _: &[(usize, u16)],
    _: (usize, usize),
    _: usize,
    _: *mut f32,
) {
    unreachable!("winograd kernels need AVX-512")
}
#[cfg(not(target_arch = "x86_64"))]
unsafe fn deinterleave(_: &[f32], _: usize, _: &mut [f32], _: &mut [f32]) {
    unreachable!("winograd kernels need AVX-512")
}
#[cfg(not(target_arch = "x86_64"))]
unsafe fn dot4x4(_: *const f32, _: *const f32, _: usize, _: usize, _: &mut [f32]) {
    unreachable!("winograd kernels need AVX-512")
}
#[cfg(not(target_arch = "x86_64"))]
unsafe fn transform_out(_: *const f32, _: usize, _: usize, _: *mut f32, _: *mut f32) {
    unreachable!("winograd kernels need AVX-512")
}
#[cfg(not(target_arch = "x86_64"))]
unsafe fn mk(_: *const f32, _: usize, _: usize, _: *const f32, _: *mut f32, _: usize) {
    unreachable!("winograd kernels need AVX-512")
}

#[cfg(test)]
mod tests {
    use super::super::{conv::Bias, direct};
    use crate::core::rng::NoiseRng;

    fn rel_err(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        diff / scale
    }

    /// Winograd against direct summation, all three passes: odd sizes and channel counts,
    /// 1x1 images, bands split mid-row and across images (64 images of 7x7, 4 of 28x28),
    /// per-image biases.
    #[test]
    fn matches_direct_convolution() {
        if !super::super::direct::avx512() {
            return; // neither kernel runs here
        }
        let cases = [
            (3, 13, 16, 5, 11),
            (5, 16, 8, 9, 9),
            (2, 8, 8, 1, 1),
            (7, 8, 12, 3, 2),
            (64, 64, 64, 7, 7),
            (4, 96, 32, 28, 28),
            (3, 16, 24, 14, 14),
        ];
        let mut rng = NoiseRng::new(7);
        for (n, ci, co, h, w) in cases {
            let x = rng.normal_vec(n * ci * h * w);
            let wt = rng.normal_vec(co * ci * 9);
            let dy = rng.normal_vec(n * co * h * w);
            let b = rng.normal_vec(n * co);
            let bias = Some(Bias {
                data: &b,
                per_image: true,
            });
            let label = format!("{n}x{ci}x{h}x{w}->{co}");
            let e = rel_err(
                &super::fwd(n, ci, co, (h, w), &x, &wt, bias),
                &direct::fwd(n, ci, co, (h, w), 3, &x, &wt, bias),
            );
            assert!(e < 1e-5, "{label} forward: {e}");
            let e = rel_err(
                &super::bwd_input(n, ci, co, (h, w), &dy, &wt),
                &direct::bwd_input(n, ci, co, (h, w), 3, &dy, &wt),
            );
            assert!(e < 1e-5, "{label} input gradient: {e}");
            if ci % 4 == 0 && co % 4 == 0 {
                let e = rel_err(
                    &super::bwd_weight(n, ci, co, (h, w), &x, &dy),
                    &direct::bwd_weight(n, ci, co, (h, w), 3, &x, &dy),
                );
                assert!(e < 1e-5, "{label} weight gradient: {e}");
            }
        }
    }
}
