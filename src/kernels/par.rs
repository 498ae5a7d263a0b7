//! Parallel loops on Candle's own CPU thread pool, and AVX2 dispatch for elementwise loops.
//!
//! Candle 0.11 runs its CPU ops on a barrier pool whose workers spin ~25k iterations after
//! each op. Running our kernels on rayon's global pool put a second set of spinning threads on
//! the same 2 cores: interleaved with Candle ops (as in every backward pass) our silu fwd+bwd
//! measured 3.9 ms for 0.5 ms of work. Sharing Candle's pool removes that contention.
use candle_core::utils::barrier_pool;
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::ops::Range;

thread_local! {
    /// Per-thread scratch (im2col columns, padded planes, attention scores), kept across
    /// calls so the hot loops never allocate it (~2-3 MB per thread at the UNet's sizes).
    static WS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Two scratch slices of `a` and `b` floats from this thread's workspace (contents
/// unspecified). Not re-entrant: `f` must not call it again.
pub fn with_workspace<R>(a: usize, b: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    WS.with(|ws| {
        let mut ws = ws.borrow_mut();
        if ws.len() < a + b {
            ws.resize(a + b, 0.0);
        }
        let (wa, wb) = ws[..a + b].split_at_mut(a);
        f(wa, wb)
    })
}

/// Threads that `for_each_index` and `for_each_thread` spread work over (workers + caller).
pub fn n_threads() -> usize {
    barrier_pool().n_workers() + 1
}

/// Run `f` on every index in `0..n`, in dynamically balanced chunks across Candle's pool.
pub fn for_each_range(n: usize, f: impl Fn(Range<usize>) + Sync) {
    barrier_pool().execute_chunked(n, f)
}

/// Run `f(slot)` for each slot in `0..n_threads()`, spread over the pool; a slot is a unit of
/// per-thread state (a thread may run several; inline when nested inside a pool worker,
/// where `BarrierPool::execute` itself would deadlock).
pub fn for_each_slot(f: impl Fn(usize) + Sync) {
    for_each_range(n_threads(), |r| r.for_each(&f))
}

/// A raw pointer that may be shared across threads: callers guarantee disjoint writes.
#[derive(Clone, Copy)]
pub struct SharedMut(*mut f32, usize);
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    pub fn new(v: &mut [f32]) -> Self {
        Self(v.as_mut_ptr(), v.len())
    }
    /// # Safety
    /// No other live slice may overlap `r`.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, r: Range<usize>) -> &mut [f32] {
        assert!(r.start <= r.end && r.end <= self.1);
        std::slice::from_raw_parts_mut(self.0.add(r.start), r.len())
    }
}

/// A new vector of `len` floats, `f(i, piece_i)` filling each `chunk`-sized piece (the last
/// may be shorter) in parallel, without zeroing it first: the memset of a zeroed output had
/// been ~1/4 of group norm's and silu's forward.
///
/// # Safety
/// `f` must write every element of the piece it is given.
pub unsafe fn collect_chunks(
    len: usize,
    chunk: usize,
    f: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let chunk = chunk.max(1);
    let mut v: Vec<f32> = Vec::with_capacity(len);
    let p = SharedUninit::new(&mut v, len);
    for_each_range(len.div_ceil(chunk), |r| {
        for i in r {
            let n = chunk.min(len - i * chunk);
            // SAFETY: piece i covers [i*chunk, i*chunk + n), disjoint across i.
            f(i, unsafe { p.piece(i * chunk, n) })
        }
    });
    // SAFETY: every element was written by `f` (the caller's contract).
    unsafe { v.set_len(len) };
    v
}

/// The first `len` floats of a vector's spare capacity, written from parallel tasks before
/// the owner sets the vector's length.
#[derive(Clone, Copy)]
pub struct SharedUninit(*mut MaybeUninit<f32>, usize);
unsafe impl Send for SharedUninit {}
unsafe impl Sync for SharedUninit {}

impl SharedUninit {
    /// `v` must have no other live access while this is used.
    pub fn new(v: &mut Vec<f32>, len: usize) -> Self {
        Self(v.spare_capacity_mut()[..len].as_mut_ptr(), len)
    }

    /// Elements `at..at + n`.
    ///
    /// # Safety
    /// No other task may access the same elements.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn piece(&self, at: usize, n: usize) -> &mut [MaybeUninit<f32>] {
        assert!(at + n <= self.1);
        std::slice::from_raw_parts_mut(self.0.add(at), n)
    }
}

/// The sum of one `len`-float accumulator per slot (`n_threads()` of them, zeroed), each
/// filled by `f(slot, acc)`, added in slot order: with a fixed assignment of work to slots
/// the result does not depend on scheduling (a shared work cursor had made resumed training
/// runs drift).
pub fn slot_sums(len: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let nt = n_threads();
    let mut partials = vec![0f32; nt * len];
    let pp = SharedMut::new(&mut partials);
    for_each_slot(|tid| {
        // SAFETY: slot tid owns partial tid.
        f(tid, unsafe { pp.slice(tid * len..(tid + 1) * len) })
    });
    // Added in slot order per element, in parallel over element ranges (serial, it left the
    // other core idle at the end of every weight gradient).
    let mut sum = partials[..len].to_vec();
    for_each_chunk_mut(&mut sum, 4096, |i, s| {
        let at = i * 4096;
        for p in partials[len..].chunks(len.max(1)) {
            s.iter_mut().zip(&p[at..]).for_each(|(a, b)| *a += b);
        }
    });
    sum
}

/// `f(i, out_chunk_i)` for each `chunk`-sized piece of `out` (the last may be shorter), in
/// parallel.
pub fn for_each_chunk_mut(out: &mut [f32], chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let len = out.len();
    let n = len.div_ceil(chunk.max(1));
    let p = SharedMut::new(out);
    for_each_range(n, |r| {
        for i in r {
            // SAFETY: chunk i covers [i*chunk, (i+1)*chunk), disjoint across i.
            let s = unsafe { p.slice(i * chunk..((i + 1) * chunk).min(len)) };
            f(i, s)
        }
    })
}

/// Define `$name` calling the `#[inline(always)]` body `$body` compiled for AVX-512 or
/// AVX2+FMA when the CPU has them (the crate is built for baseline x86-64: SSE2, 4 lanes),
/// else as is. AVX-512 measured ~2x over AVX2 on silu (exp + divide bound).
macro_rules! avx2_dispatch {
    ($vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? => $body:ident) => {
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the feature was just detected.
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the features were just detected.
                    return unsafe { v3($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use avx2_dispatch;

/// dst[i] = src[i] + b for the first dst.len() elements of `src`. Short rows (7-28 floats) are
/// what the Winograd output writes: the portable loop left them to its scalar remainder
/// (perf: ~6% of a train step in that loop); AVX-512 does a row in 1-2 masked stores.
pub fn copy_add(dst: &mut [MaybeUninit<f32>], src: &[f32], b: f32) {
    let src = &src[..dst.len()];
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was just detected; src and dst have equal lengths.
        return unsafe { copy_add_x512(dst, src, b) };
    }
    for (d, &v) in dst.iter_mut().zip(src) {
        d.write(v + b);
    }
}

/// The AVX-512 lane mask of the first `n` (<= 16) lanes, for masked tails.
#[inline]
pub fn tail_mask(n: usize) -> u16 {
    debug_assert!(n <= 16);
    ((1u32 << n) - 1) as u16
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn copy_add_x512(dst: &mut [MaybeUninit<f32>], src: &[f32], b: f32) {
    use std::arch::x86_64::*;
    let (n, vb) = (dst.len(), _mm512_set1_ps(b));
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr() as *mut f32);
    let mut i = 0;
    while i + 16 <= n {
        _mm512_storeu_ps(dp.add(i), _mm512_add_ps(_mm512_loadu_ps(sp.add(i)), vb));
        i += 16;
    }
    if i < n {
        let m = tail_mask(n - i);
        let v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, sp.add(i)), vb);
        _mm512_mask_storeu_ps(dp.add(i), m, v);
    }
}

/// Sum in 16 independent f32 lanes (vectorisable, unlike a sequential f32/f64 fold, which
/// is bound by add latency), combined in f64.
#[inline(always)]
pub fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut acc = [0f32; 16];
    let mut it = x.chunks_exact(16);
    for c in &mut it {
        let c: &[f32; 16] = c.try_into().unwrap();
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    let tail: f64 = it.remainder().iter().map(|&v| f(v) as f64).sum();
    acc.iter().map(|&a| a as f64).sum::<f64>() + tail
}

/// (sum a, sum a*b) in 16 lanes, as `lane_sum`. Two loops over `a` (it is in L1 wherever this
/// is used): fused into one, LLVM's SLP vectoriser interleaved the two accumulators into
/// partial xmm vectors with blends (perf: group norm's backward at a third of its memory
/// bound).
#[inline(always)]
pub fn lane_sum2(a: &[f32], b: &[f32]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 16];
    let (mut ia, mut ib) = (a.chunks_exact(16), b.chunks_exact(16));
    for (ca, cb) in (&mut ia).zip(&mut ib) {
        for ((s, &x), &y) in acc.iter_mut().zip(ca).zip(cb) {
            *s += x * y;
        }
    }
    let tail: f64 = ia
        .remainder()
        .iter()
        .zip(ib.remainder())
        .map(|(&x, &y)| (x * y) as f64)
        .sum();
    let dot = acc.iter().map(|&v| v as f64).sum::<f64>() + tail;
    (lane_sum(a, |v| v), dot)
}
