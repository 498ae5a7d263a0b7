// AdamW for CUDA: one pass per parameter tensor, the weights updated in place and the moments
// [m | v] too (the optimizer's own buffer). The composite update is ~16 launches per parameter
// (~2,400 a step at the mnist preset, where the step is launch-bound). The same f32 operations
// in the same order as the composite and the CPU kernel (src/kernels/adamw.rs); the gradient
// scale (global-norm clipping) is read on the device, so the update needs no host round trip.
extern "C" __global__ void diffuse_adamw_f32(float *p, const float *g, float *mv, const float *scale,
                                             int has_scale, long n, float b1, float omb1, float b2,
                                             float omb2, float ibc1, float ibc2, float eps,
                                             float decay, float lr) {
  const float s = has_scale ? *scale : 1.f;
  for (long j = blockIdx.x * (long)blockDim.x + threadIdx.x; j < n; j += (long)gridDim.x * blockDim.x) {
    const float gj = g[j] * s;
    const float mk = mv[j] * b1 + gj * omb1;
    const float vk = mv[n + j] * b2 + (gj * gj) * omb2;
    const float upd = (mk * ibc1) / (sqrtf(vk * ibc2) + eps);
    mv[j] = mk;
    mv[n + j] = vk;
    p[j] = p[j] * decay - upd * lr;
  }
}
