// Shared by the elementwise-style kernels (conv.cu, upsample.cu): flat 32-bit grid-stride
// loops (the host keeps each launch under 2^31 elements) and division by a multiply and a shift.
#pragma once

// n / d and n % d for n < 2^31 by a multiply and a shift (Granlund-Montgomery, as CUTLASS's
// FastDivmod): a hardware-less 32-bit division costs ~20 instructions per element.
struct FastDiv {
  unsigned d, mul, shr;
  __device__ FastDiv(unsigned d_) : d(d_), mul(0), shr(0) {
    if (d <= 1) return;
    unsigned l = 0;
    while ((1u << l) < d) l++;  // ceil(log2 d), d <= 2^31
    mul = (unsigned)(((1ull << (31 + l)) + d - 1) / d);
    shr = l - 1;
  }
  __device__ unsigned div(unsigned n) const { return d <= 1 ? n : __umulhi(n, mul) >> shr; }
};

__device__ unsigned first_index() { return blockIdx.x * blockDim.x + threadIdx.x; }
__device__ unsigned grid_step() { return gridDim.x * blockDim.x; }
