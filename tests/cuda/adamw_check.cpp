// The AdamW CUDA kernel run on the CPU emulator against the update written out in float, in
// the composite's order: three steps, with and without a gradient scale, n larger than the
// grid (the grid-stride loop) and not a multiple of the block. The emulated kernel must equal
// the reference exactly (same float operations, no FMA on the emulating CPU).
#include "emulate.cpp"

#include <cstring>
#include <random>

int main() {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  int bad = 0;
  for (int has_scale = 0; has_scale < 2; has_scale++) {
    const long long n = 150;
    std::vector<float> p(n), mv(2 * n, 0.f), g(n), pr, mvr;
    for (auto &v : p) v = nd(rng);
    pr = p;
    mvr = mv;
    const float scale = 0.37f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, lr = 1e-3f, wd = 1e-2f;
    for (int t = 1; t <= 3; t++) {
      for (auto &v : g) v = nd(rng);
      const float ibc1 = (float)(1.0 / (1.0 - std::pow(0.9, t)));
      const float ibc2 = (float)(1.0 / (1.0 - std::pow(0.999, t)));
      const float omb1 = (float)(1.0 - 0.9), omb2 = (float)(1.0 - 0.999);
      const float decay = (float)(1.0 - 1e-3 * 1e-2);
      (void)wd;
      launch(2, 32, [&] {
        diffuse_adamw_f32(p.data(), g.data(), mv.data(), &scale, has_scale, n, b1, omb1, b2, omb2,
                          ibc1, ibc2, eps, decay, lr);
      });
      for (long long j = 0; j < n; j++) {
        const float gj = g[j] * (has_scale ? scale : 1.f);
        const float mk = mvr[j] * b1 + gj * omb1;
        const float vk = mvr[n + j] * b2 + (gj * gj) * omb2;
        const float upd = (mk * ibc1) / (std::sqrt(vk * ibc2) + eps);
        mvr[j] = mk;
        mvr[n + j] = vk;
        pr[j] = pr[j] * decay - upd * lr;
      }
    }
    const bool ok = !memcmp(p.data(), pr.data(), n * 4) && !memcmp(mv.data(), mvr.data(), 2 * n * 4);
    float moved = 0;
    for (long long j = 0; j < n; j++) moved = std::max(moved, std::fabs(p[j] - pr[j]));
    printf("%s adamw n%lld scale%d: 3 steps equal to the float reference (max diff %g)\n",
           ok ? "ok" : "MISS", n, has_scale, moved);
    bad += !ok;
  }
  return bad ? 1 : 0;
}
