// The EMA's update over every parameter tensor in a few launches (pieces.cuh), in place:
// shadow = shadow * d + param * (1 - d). Candle's composite is two affine ops and an add per
// tensor (~550 launches a step at the mnist preset, whose step is launch-bound). The same f32
// operations as the composite, each rounded (__fmul_rn/__fadd_rn: no fused multiply-add the
// composite rounds twice), so the shadow weights are the composite's bits (but for the sign of a
// zero: Candle's product is a fused x * d + 0, which turns -0 into +0).
#include "pieces.cuh"

extern "C" __global__ void diffuse_ema_f32(const Pieces<2, 190> t, float d, float omd) {
  float *s = piece(t, 0);
  const float *p = piece(t, 1);
  const unsigned n = t.len[blockIdx.x];
  for (unsigned j = threadIdx.x; j < n; j += blockDim.x)
    s[j] = __fadd_rn(__fmul_rn(s[j], d), __fmul_rn(p[j], omd));
}
