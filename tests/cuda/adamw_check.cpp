// The AdamW CUDA kernel (src/kernels/cuda/adamw.cu) run on the CPU emulator against the update
// written out in float, in the composite's order: three steps, with and without a gradient
// scale, over tensors of odd sizes (one empty, one past the piece size, so it spans several
// blocks), in launches of 2 pieces and of all of them. The emulated kernel must equal the
// reference exactly (same float operations, no FMA on the emulating CPU).
#include "emulate.cpp"

#include <array>
#include <cstring>
#include <random>

int main() {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  const unsigned piece = 100;  // the host's is 2^16; small here so the emulator stays quick
  int bad = 0;
  for (int has_scale = 0; has_scale < 2; has_scale++) {
    for (unsigned per : {2u, 100u}) {
      const std::vector<size_t> sizes = {150, 0, 1, 233, 100};
      std::vector<std::vector<float>> p, m, v, g, pr, mr, vr;
      for (size_t n : sizes) {
        std::vector<float> a(n);
        for (auto &x : a) x = nd(rng);
        p.push_back(a);
        pr.push_back(a);
        m.emplace_back(n, 0.f);
        v.emplace_back(n, 0.f);
        mr.emplace_back(n, 0.f);
        vr.emplace_back(n, 0.f);
        g.emplace_back(n, 0.f);
      }
      const float scale = 0.37f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, lr = 1e-3f;
      for (int t = 1; t <= 3; t++) {
        const float ibc1 = (float)(1.0 / (1.0 - std::pow(0.9, t)));
        const float ibc2 = (float)(1.0 / (1.0 - std::pow(0.999, t)));
        const float omb1 = (float)(1.0 - 0.9), omb2 = (float)(1.0 - 0.999);
        const float decay = (float)(1.0 - 1e-3 * 1e-2);
        std::vector<std::array<unsigned long long, 4>> ptrs;
        std::vector<unsigned> lens;
        for (size_t i = 0; i < sizes.size(); i++) {
          for (auto &x : g[i]) x = nd(rng);
          for (size_t c = 0; c < sizes[i]; c += piece) {
            ptrs.push_back({reinterpret_cast<unsigned long long>(p[i].data() + c),
                            reinterpret_cast<unsigned long long>(g[i].data() + c),
                            reinterpret_cast<unsigned long long>(m[i].data() + c),
                            reinterpret_cast<unsigned long long>(v[i].data() + c)});
            lens.push_back((unsigned)std::min<size_t>(piece, sizes[i] - c));
          }
          for (size_t j = 0; j < sizes[i]; j++) {
            const float gj = g[i][j] * (has_scale ? scale : 1.f);
            const float mk = mr[i][j] * b1 + gj * omb1;
            const float vk = vr[i][j] * b2 + (gj * gj) * omb2;
            const float upd = (mk * ibc1) / (std::sqrt(vk * ibc2) + eps);
            mr[i][j] = mk;
            vr[i][j] = vk;
            pr[i][j] = pr[i][j] * decay - upd * lr;
          }
        }
        for (unsigned first = 0; first < lens.size(); first += per) {
          Pieces<4, 100> tab{};
          tab.count = std::min<unsigned>(per, (unsigned)lens.size() - first);
          tab.first = first;
          for (unsigned b = 0; b < tab.count; b++) {
            for (int k = 0; k < 4; k++) tab.ptr[k][b] = ptrs[first + b][k];
            tab.len[b] = lens[first + b];
          }
          launch(tab.count, 32, [&] {
            diffuse_adamw_f32(tab, &scale, has_scale, b1, omb1, b2, omb2, ibc1, ibc2, eps, decay, lr);
          });
        }
      }
      bool ok = true;
      float moved = 0;
      for (size_t i = 0; i < sizes.size(); i++) {
        const size_t n = sizes[i] * 4;
        ok &= !memcmp(p[i].data(), pr[i].data(), n) && !memcmp(m[i].data(), mr[i].data(), n) &&
              !memcmp(v[i].data(), vr[i].data(), n);
        for (size_t j = 0; j < sizes[i]; j++) moved = std::max(moved, std::fabs(p[i][j] - pr[i][j]));
      }
      printf("%s adamw scale%d, %u pieces a launch: 3 steps equal to the float reference (max diff %g)\n",
             ok ? "ok" : "MISS", has_scale, per, moved);
      bad += !ok;
    }
  }
  return bad ? 1 : 0;
}
