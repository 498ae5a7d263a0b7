// Group norm (optionally fused with silu) for CUDA: forward and backward, one thread block per
// (sample, group). Candle's GroupNorm is ~10 full-size broadcast ops forward and ~25 backward;
// these read x twice and write y once forward, and read x and dy four times and write dx once
// backward (the statistics are recomputed: cheaper than storing them, and stateless).
// Compiled to PTX by build.rs for `--features cuda`; the default on CUDA since an H200 run
// matched Candle's ops (DIFFUSE_CUDA_KERNELS=0 turns it off; src/kernels/norm.rs).
#include "block_reduce.cuh"

// Mean and 1/sqrt(var + eps) of one block of m values: two passes, the second centred (a large
// mean would otherwise cancel the variance), as the CPU kernel does.
__device__ void stats(const float *xb, long m, float eps, float *red, float *mean, float *rstd) {
  float s = 0.f;
  for (long i = threadIdx.x; i < m; i += blockDim.x) s += xb[i];
  const float mu = block_sum(s, red) / (float)m;
  float v = 0.f;
  for (long i = threadIdx.x; i < m; i += blockDim.x) {
    const float d = xb[i] - mu;
    v += d * d;
  }
  *mean = mu;
  *rstd = rsqrtf(block_sum(v, red) / (float)m + eps);
}

__device__ float sigmoid(float z) { return 1.f / (1.f + expf(-z)); }

// Walks a thread's elements i = threadIdx.x, threadIdx.x + blockDim.x, ... of one group as
// (channel in the group, pixel) without a 64-bit division per element: two divisions per thread.
struct ChannelWalk {
  int cl, r, dcl, dr, hw;
  __device__ ChannelWalk(int hw)
      : cl(threadIdx.x / hw), r(threadIdx.x % hw), dcl(blockDim.x / hw), dr(blockDim.x % hw),
        hw(hw) {}
  __device__ void next() {
    cl += dcl;
    r += dr;
    if (r >= hw) r -= hw, cl++;
  }
};

// y = z or silu(z), z = (x - mean) * rstd * gamma[c] + beta[c]; x, y contiguous [N, C, HW].
extern "C" __global__ void diffuse_gn_fwd_f32(const float *x, const float *gamma, const float *beta,
                                              float *y, int c, int hw, int groups, float eps,
                                              int silu) {
  __shared__ float red[32];
  const int g = blockIdx.x % groups, cg = c / groups;
  const long m = (long)cg * hw, off = (long)blockIdx.x * m;
  float mean, rstd;
  stats(x + off, m, eps, red, &mean, &rstd);
  ChannelWalk w(hw);
  for (long i = threadIdx.x; i < m; i += blockDim.x, w.next()) {
    const int ch = g * cg + w.cl;
    const float a = rstd * gamma[ch];
    const float z = x[off + i] * a + (beta[ch] - mean * a);
    y[off + i] = silu ? z * sigmoid(z) : z;
  }
}

// The gradient at the norm's output z: dy, or dy * silu'(z).
__device__ float dz_of(float dy, float xhat, float gm, float bt, int silu) {
  if (!silu) return dy;
  const float z = xhat * gm + bt, s = sigmoid(z);
  return dy * s * (1.f + z * (1.f - s));
}

// out = [dx (N*C*HW) | part (N*C*2)], part[n, c] = (sum dz * xhat, sum dz) over the pixels:
// summed over n afterwards for dgamma and dbeta. gb = [gamma (C) | beta (C)].
// dx = rstd * (gamma dz - mean_group(gamma dz) - xhat * mean_group(gamma dz xhat)).
extern "C" __global__ void diffuse_gn_bwd_f32(const float *x, const float *gb, const float *dy,
                                              float *out, int n, int c, int hw, int groups,
                                              float eps, int silu) {
  __shared__ float red[32];
  const float *gamma = gb, *beta = gb + c;
  const int sample = blockIdx.x / groups, g = blockIdx.x % groups, cg = c / groups;
  const long m = (long)cg * hw, off = (long)blockIdx.x * m;
  float *dx = out, *part = out + (long)n * c * hw;
  float mean, rstd;
  stats(x + off, m, eps, red, &mean, &rstd);
  float a = 0.f, b = 0.f;  // sum(gamma dz), sum(gamma dz xhat) over the group
  for (int cl = 0; cl < cg; cl++) {
    const int ch = g * cg + cl;
    const float gm = gamma[ch], bt = beta[ch];
    float s_dz = 0.f, s_dzx = 0.f;
    for (long i = threadIdx.x; i < hw; i += blockDim.x) {
      const long k = off + (long)cl * hw + i;
      const float xhat = (x[k] - mean) * rstd;
      const float d = dz_of(dy[k], xhat, gm, bt, silu);
      s_dz += d;
      s_dzx += d * xhat;
    }
    s_dz = block_sum(s_dz, red);
    s_dzx = block_sum(s_dzx, red);
    if (threadIdx.x == 0) {
      part[((long)sample * c + ch) * 2] = s_dzx;
      part[((long)sample * c + ch) * 2 + 1] = s_dz;
    }
    a += gm * s_dz;
    b += gm * s_dzx;
  }
  const float am = a / (float)m, bm = b / (float)m;
  ChannelWalk w(hw);
  for (long i = threadIdx.x; i < m; i += blockDim.x, w.next()) {
    const int ch = g * cg + w.cl;
    const float xhat = (x[off + i] - mean) * rstd;
    const float d = dz_of(dy[off + i], xhat, gamma[ch], beta[ch], silu);
    dx[off + i] = rstd * (gamma[ch] * d - am - xhat * bm);
  }
}
