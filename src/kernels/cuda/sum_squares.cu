// The sum of squares of many f32 tensors in a few launches: what global-norm gradient clipping
// needs every step. Candle's composite is sqr, sum_all and an add per gradient tensor: ~550
// launches a step at the mnist preset (182 tensors), whose step is launch-bound. Each block
// sums one piece (pieces.cuh: up to 240 a launch), then one block sums the pieces' sums.
// Fixed orders throughout: the same gradients give the same bits.
#include "block_reduce.cuh"
#include "pieces.cuh"

// part[t.first + b] = sum of x^2 over piece b.
extern "C" __global__ void diffuse_sum_squares_part_f32(const Pieces<1, 240> t, float *part) {
  __shared__ float red[32];
  const float *x = piece(t, 0);
  const unsigned n = t.len[blockIdx.x];
  float acc = 0.f;
  for (unsigned j = threadIdx.x; j < n; j += blockDim.x) acc = fmaf(x[j], x[j], acc);
  acc = block_sum(acc, red);
  if (threadIdx.x == 0) part[t.first + blockIdx.x] = acc;
}

// out[0] = sum of part[0..count), by one block.
extern "C" __global__ void diffuse_sum_squares_total_f32(const float *part, unsigned count,
                                                         float *out) {
  __shared__ float red[32];
  float acc = 0.f;
  for (unsigned j = threadIdx.x; j < count; j += blockDim.x) acc += part[j];
  acc = block_sum(acc, red);
  if (threadIdx.x == 0) out[0] = acc;
}
