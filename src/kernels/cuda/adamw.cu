// AdamW for CUDA over every parameter tensor in a few launches (pieces.cuh: lists p, g, m, v),
// the weights and the moments updated in place. The composite update is ~16 launches per
// parameter (~2,400 a step at the mnist preset, where the step is launch-bound); one launch per
// tensor still made 182. The same f32 operations in the same order as the composite and the
// CPU kernel (src/kernels/adamw.rs), each rounded (__fmul_rn/__fadd_rn: nvcc would otherwise
// fuse multiply-adds the composite rounds twice); the gradient scale (global-norm clipping) is
// read on the device: no host round trip.
#include "pieces.cuh"

extern "C" __global__ void diffuse_adamw_f32(const Pieces<4, 100> t, const float *scale,
                                             int has_scale, float b1, float omb1, float b2,
                                             float omb2, float ibc1, float ibc2, float eps,
                                             float decay, float lr) {
  float *p = piece(t, 0), *m = piece(t, 2), *v = piece(t, 3);
  const float *g = piece(t, 1);
  const unsigned n = t.len[blockIdx.x];
  const float s = has_scale ? *scale : 1.f;
  for (unsigned j = threadIdx.x; j < n; j += blockDim.x) {
    const float gj = __fmul_rn(g[j], s);
    const float mk = __fadd_rn(__fmul_rn(m[j], b1), __fmul_rn(gj, omb1));
    const float vk = __fadd_rn(__fmul_rn(v[j], b2), __fmul_rn(__fmul_rn(gj, gj), omb2));
    const float upd = __fdiv_rn(__fmul_rn(mk, ibc1), __fadd_rn(sqrtf(__fmul_rn(vk, ibc2)), eps));
    m[j] = mk;
    v[j] = vk;
    p[j] = __fsub_rn(__fmul_rn(p[j], decay), __fmul_rn(upd, lr));
  }
}
