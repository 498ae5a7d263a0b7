// AdamW for CUDA: one pass per parameter tensor, the weights updated in place and the moments
// [m | v] too (the optimizer's own buffer). The composite update is ~16 launches per parameter
// (~2,400 a step at the mnist preset, where the step is launch-bound). The same f32 operations
// in the same order as the composite and the CPU kernel (src/kernels/adamw.rs), each rounded
// (__fmul_rn/__fadd_rn: nvcc would otherwise fuse multiply-adds the composite rounds twice);
// the gradient scale (global-norm clipping) is read on the device: no host round trip.
extern "C" __global__ void diffuse_adamw_f32(float *p, const float *g, float *mv, const float *scale,
                                             int has_scale, long long n, float b1, float omb1, float b2,
                                             float omb2, float ibc1, float ibc2, float eps,
                                             float decay, float lr) {
  const float s = has_scale ? *scale : 1.f;
  for (long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x; j < n;
       j += (long long)gridDim.x * blockDim.x) {
    const float gj = __fmul_rn(g[j], s);
    const float mk = __fadd_rn(__fmul_rn(mv[j], b1), __fmul_rn(gj, omb1));
    const float vk = __fadd_rn(__fmul_rn(mv[n + j], b2), __fmul_rn(__fmul_rn(gj, gj), omb2));
    const float upd = __fdiv_rn(__fmul_rn(mk, ibc1), __fadd_rn(sqrtf(__fmul_rn(vk, ibc2)), eps));
    mv[j] = mk;
    mv[n + j] = vk;
    p[j] = __fsub_rn(__fmul_rn(p[j], decay), __fmul_rn(upd, lr));
  }
}
