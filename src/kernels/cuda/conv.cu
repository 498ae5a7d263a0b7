// The data movement of conv2d on CUDA around cuBLAS's GEMMs (src/kernels/cuda_conv.rs): im2col
// into the column layout the GEMM wants, its adjoint col2im as a gather (no atomics, so the sum
// order is fixed), and the bias written into the output before a GEMM that accumulates onto it.
// Candle's im2col wrote the columns pixel-major ([n, oh*ow, c*kh*kw]): its reads strided across
// channels and kernel rows, and the GEMM's output needed a transposing copy. Here consecutive
// threads take consecutive output pixels, so reads and writes are both coalesced, and the
// layouts let the GEMMs write NCHW directly. Flat 32-bit indices (the host keeps every buffer of
// a call under 2^31 elements by chunking images) with multiply-shift division.

#include "grid.cuh"

// Stores V consecutive floats at v (aligned to V floats): one vector store.
template <int V> struct Vec;
template <> struct Vec<1> {
  static __device__ void store(float *p, const float *v) { *p = v[0]; }
};
template <> struct Vec<2> {
  static __device__ void store(float *p, const float *v) {
    *reinterpret_cast<float2 *>(p) = make_float2(v[0], v[1]);
  }
};
template <> struct Vec<4> {
  static __device__ void store(float *p, const float *v) {
    *reinterpret_cast<float4 *>(p) = make_float4(v[0], v[1], v[2], v[3]);
  }
};

// col[a][b][q] = x[img, ci, oy*s - p + i, ox*s - p + j] (0 outside the image) for k = (ci, i, j)
// and q = (oy, ox); (a, b) = (img, k) when k_major is 0 (the forward's per-image [k, oh*ow]
// matrices), (k, img) when 1 (the weight gradient's one [k, n*oh*ow] matrix). With a 1x1 kernel,
// stride 1 and no padding, k_major 1 is the transpose [c][n][h*w] of x. Each thread writes V
// consecutive pixels of one output row (ow a multiple of V): the index arithmetic, not the
// memory, bounded the one-pixel version (62 us a call on an H200 in training, 32% of GPU time).
template <int V>
__device__ void im2col(const float *x, float *col, int n, int c, int h, int w, int kh, int kw,
                       int stride, int pad, int oh, int ow, int k_major) {
  const unsigned kk = c * kh * kw, pix = oh * ow, total = (unsigned)n * kk * pix / V;
  const FastDiv dpix(pix / V), dow(ow / V), db(k_major ? n : kk), dkhw(kh * kw), dkw(kw);
  for (unsigned e = first_index(); e < total; e += grid_step()) {
    const unsigned row = dpix.div(e), q = e - row * dpix.d;
    const unsigned a = db.div(row), b = row - a * db.d;
    const unsigned img = k_major ? b : a, k = k_major ? a : b;
    const unsigned ci = dkhw.div(k), r = k - ci * dkhw.d;
    const unsigned i = dkw.div(r), j = r - i * kw;
    const unsigned oy = dow.div(q), ox = (q - oy * dow.d) * V;
    const int iy = (int)(oy * stride + i) - pad, ix = (int)(ox * stride + j) - pad;
    float v[V];
    const bool row_in = iy >= 0 && iy < h;
    const float *src = x + ((img * c + ci) * h + (row_in ? iy : 0)) * w;
#pragma unroll
    for (int t = 0; t < V; t++) {
      const int xx = ix + t * stride;
      v[t] = row_in && xx >= 0 && xx < w ? src[xx] : 0.f;
    }
    Vec<V>::store(col + (row * pix + q * V), v);
  }
}

extern "C" __global__ void diffuse_im2col_f32(const float *x, float *col, int n, int c, int h,
                                              int w, int kh, int kw, int stride, int pad, int oh,
                                              int ow, int k_major, int vec) {
  if (vec == 4) im2col<4>(x, col, n, c, h, w, kh, kw, stride, pad, oh, ow, k_major);
  else if (vec == 2) im2col<2>(x, col, n, c, h, w, kh, kw, stride, pad, oh, ow, k_major);
  else im2col<1>(x, col, n, c, h, w, kh, kw, stride, pad, oh, ow, k_major);
}

// The adjoint of im2col with k_major 0: dx[img, ci, iy, ix] = the sum over (i, j) of
// col[img][(ci, i, j)][(oy, ox)] with oy*s - p + i = iy and ox*s - p + j = ix. Each thread
// gathers V consecutive elements of one row (w a multiple of V), each in (i, j) order.
template <int V>
__device__ void col2im(const float *col, float *dx, int n, int c, int h, int w, int kh, int kw,
                       int stride, int pad, int oh, int ow) {
  const unsigned hw = h * w, pix = oh * ow, total = (unsigned)n * c * hw / V;
  const FastDiv dhw(hw / V), dw(w / V), dc(c);
  for (unsigned e = first_index(); e < total; e += grid_step()) {
    const unsigned row = dhw.div(e), q = e - row * dhw.d;
    const unsigned img = dc.div(row), ci = row - img * c;
    const unsigned iy = dw.div(q), ix0 = (q - iy * dw.d) * V;
    const float *base = col + ((unsigned long long)img * c + ci) * kh * kw * pix;
    float s[V];
#pragma unroll
    for (int t = 0; t < V; t++) s[t] = 0.f;
    for (int i = 0; i < kh; i++) {
      const int ty = (int)iy + pad - i;
      if (ty < 0) break;
      const int oy = ty / stride;
      if (oy * stride != ty || oy >= oh) continue;
      for (int j = 0; j < kw; j++) {
        const float *src = base + (i * kw + j) * pix + oy * ow;
#pragma unroll
        for (int t = 0; t < V; t++) {
          const int tx = (int)ix0 + t + pad - j;
          const int ox = tx / stride;
          if (tx >= 0 && ox * stride == tx && ox < ow) s[t] += src[ox];
        }
      }
    }
    Vec<V>::store(dx + (row * hw + q * V), s);
  }
}

extern "C" __global__ void diffuse_col2im_f32(const float *col, float *dx, int n, int c, int h,
                                              int w, int kh, int kw, int stride, int pad, int oh,
                                              int ow, int vec) {
  if (vec == 4) col2im<4>(col, dx, n, c, h, w, kh, kw, stride, pad, oh, ow);
  else if (vec == 2) col2im<2>(col, dx, n, c, h, w, kh, kw, stride, pad, oh, ow);
  else col2im<1>(col, dx, n, c, h, w, kh, kw, stride, pad, oh, ow);
}

// y[img][o][q] = b[o] (per_image 0) or b[img * co + o] (per_image 1): the bias, onto which the
// forward GEMM then accumulates (beta 1) instead of a broadcast add over its output.
extern "C" __global__ void diffuse_bias_fill_f32(const float *b, float *y, int n, int co, int pix,
                                                 int per_image) {
  const unsigned total = (unsigned)n * co * pix;
  const FastDiv dpix(pix), dco(co);
  for (unsigned e = first_index(); e < total; e += grid_step()) {
    const unsigned row = dpix.div(e);
    y[e] = b[per_image ? row : row - dco.div(row) * co];
  }
}
