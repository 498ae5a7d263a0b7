// Nearest-neighbour 2x upsampling and its adjoint for CUDA (src/kernels/upsample.rs). Candle's
// backward of upsample_nearest2d is a grouped conv2d with a ones kernel, which Candle runs as
// one convolution per channel: 768 im2col + GEMV launches per cifar10-preset train step on an
// H200, where this is one pass. Planes p = (image, channel) of h x w source pixels.

#include "grid.cuh"

// y[p, 2r + a, 2j + b] = x[p, r, j] (a, b in {0, 1}): each thread copies one source pixel into
// its 2x2 block, one two-float store per output row.
extern "C" __global__ void diffuse_up2_fwd_f32(const float *x, float *y, int planes, int h,
                                               int w) {
  const unsigned total = (unsigned)planes * h * w;
  const FastDiv dw(w);
  for (unsigned e = first_index(); e < total; e += grid_step()) {
    const unsigned row = dw.div(e), j = e - row * w;  // row = p * h + r
    const float v = x[e];
    float2 *out = reinterpret_cast<float2 *>(y + 2 * row * (2 * w) + 2 * j);
    out[0] = make_float2(v, v);
    out[w] = make_float2(v, v);  // the next output row, 2w floats on
  }
}

// dx[p, r, j] = the sum of dy's 2x2 block over it, in the CPU kernel's order:
// dy[2r, 2j] + dy[2r, 2j + 1] + dy[2r + 1, 2j] + dy[2r + 1, 2j + 1].
extern "C" __global__ void diffuse_up2_bwd_f32(const float *dy, float *dx, int planes, int h,
                                               int w) {
  const unsigned total = (unsigned)planes * h * w;
  const FastDiv dw(w);
  for (unsigned e = first_index(); e < total; e += grid_step()) {
    const unsigned row = dw.div(e), j = e - row * w;
    // Scalar reads: dy may start at any offset of a Candle view (no float2 alignment).
    const float *a = dy + 2 * row * (2 * w) + 2 * j, *b = a + 2 * w;
    dx[e] = a[0] + a[1] + b[0] + b[1];
  }
}
