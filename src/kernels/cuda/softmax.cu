// Row softmax of scale * x for attention scores [items, n, n], forward and backward, one block
// per row. Candle's softmax on CUDA is 5 ops forward (max, a broadcast sub, exp, sum, a
// broadcast div) and ~14 backward, with the attention's scale one more each way: ~20 full-size
// passes over the scores, several of them with broadcast index arithmetic per element. These
// read the row once and write it once forward, and read y and dy once and write dx once
// backward (rows are short: the re-reads within a row hit the cache).
#include "block_reduce.cuh"

// y = softmax(z) per row of n, z = x * scale rounded as the composite's affine op rounds it
// (no fusion into the subtraction), then exp(z - max) / sum as Candle's softmax.
extern "C" __global__ void diffuse_softmax_fwd_f32(const float *x, float *y, int n, float scale) {
  __shared__ float red[32];
  const long off = (long)blockIdx.x * n;
  const float *xr = x + off;
  float m = -INFINITY;
  for (int i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, __fmul_rn(xr[i], scale));
  m = block_max(m, red);
  float s = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += expf(__fmul_rn(xr[i], scale) - m);
  s = block_sum(s, red);
  for (int i = threadIdx.x; i < n; i += blockDim.x)
    y[off + i] = expf(__fmul_rn(xr[i], scale) - m) / s;
}

// dx = scale * y * (dy - sum(dy * y)) per row: the gradient of softmax(scale * x) at its output y.
extern "C" __global__ void diffuse_softmax_bwd_f32(const float *y, const float *dy, float *dx,
                                                   int n, float scale) {
  __shared__ float red[32];
  const long off = (long)blockIdx.x * n;
  float d = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) d = fmaf(dy[off + i], y[off + i], d);
  d = block_sum(d, red);
  for (int i = threadIdx.x; i < n; i += blockDim.x)
    dx[off + i] = scale * (y[off + i] * (dy[off + i] - d));
}
