// The EMA kernel (src/kernels/cuda/ema.cu) on the CPU emulator: three updates of tensors of
// odd sizes (one past the piece size, one empty), in launches of 2 pieces and of all of them,
// equal bit for bit to the composite written out in float (s * d + p * (1 - d), each rounded).
#include "emulate.cpp"

#include <cstring>
#include <random>

int main() {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  const unsigned piece = 500;  // the host's is 2^16; small here so the emulator stays quick
  int bad = 0;
  for (unsigned per : {2u, 190u}) {
    std::vector<std::vector<float>> s, p, want;
    for (unsigned n : {1u, 0u, 37u, 1203u, 500u}) {
      std::vector<float> a(n), b(n);
      for (auto &v : a) v = nd(rng);
      s.push_back(a);
      p.push_back(b);
    }
    want = s;
    for (int step = 0; step < 3; step++) {
      const double dd = std::min(0.999, (1.0 + step) / (10.0 + step));
      const float d = (float)dd, omd = (float)(1.0 - dd);
      std::vector<unsigned long long> sp, pp;
      std::vector<unsigned> lens;
      for (size_t i = 0; i < s.size(); i++) {
        for (auto &v : p[i]) v = nd(rng);
        for (size_t j = 0; j < s[i].size(); j++) want[i][j] = want[i][j] * d + p[i][j] * omd;
        for (size_t c = 0; c < s[i].size(); c += piece) {
          sp.push_back(reinterpret_cast<unsigned long long>(s[i].data() + c));
          pp.push_back(reinterpret_cast<unsigned long long>(p[i].data() + c));
          lens.push_back((unsigned)std::min<size_t>(piece, s[i].size() - c));
        }
      }
      for (unsigned first = 0; first < lens.size(); first += per) {
        Pieces<2, 190> t{};
        t.count = std::min<unsigned>(per, (unsigned)lens.size() - first);
        t.first = first;
        for (unsigned b = 0; b < t.count; b++)
          t.ptr[0][b] = sp[first + b], t.ptr[1][b] = pp[first + b], t.len[b] = lens[first + b];
        launch(t.count, 64, [&] { diffuse_ema_f32(t, d, omd); });
      }
    }
    bool ok = true;
    for (size_t i = 0; i < s.size(); i++)
      ok &= !memcmp(s[i].data(), want[i].data(), s[i].size() * 4);
    printf("%s ema, %u pieces a launch: 3 updates equal to the float composite\n", ok ? "ok" : "MISS", per);
    bad += !ok;
  }
  return bad ? 1 : 0;
}
