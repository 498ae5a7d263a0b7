//! Row-major single-threaded sgemm on top of the `gemm` crate (the one Candle's matmul uses,
//! with runtime AVX2/AVX-512 dispatch). Callers parallelise over images instead: one gemm per
//! image per thread keeps both cores busy at batch 64 without nested-parallelism overhead.

/// A row-major view: element (i, j) at `ptr[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// Plain row-major with `cols` columns.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub fn t(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: cols,
        }
    }
}

/// `dst (m x n, row-major) (+)= a (m x k) @ b (k x n)`; `acc` adds to dst instead of overwriting.
pub fn sgemm(dst: &mut [f32], m: usize, n: usize, k: usize, a: Mat, b: Mat, acc: bool) {
    assert!(dst.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !acc {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    assert!((m - 1) * a.rs + (k - 1) * a.cs < a.data.len());
    assert!((k - 1) * b.rs + (n - 1) * b.cs < b.data.len());
    // SAFETY: bounds of all three matrices were checked above; dst does not alias a or b
    // (it is a distinct &mut borrow).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            acc,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}
