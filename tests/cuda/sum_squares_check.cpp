// The sum-of-squares kernels (src/kernels/cuda/sum_squares.cu) on the CPU emulator: tensors of
// odd sizes (one empty, one past the piece size, so it spans several blocks, one a view at an
// offset into another's buffer) cut into pieces as the host cuts them, in one launch and in
// launches of 3 pieces, against the float64 sum
// (relative 1e-6); and the same input twice gives the same bits (fixed summation order).
#include "emulate.cpp"

#include <cstring>
#include <random>

int main() {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  const unsigned piece = 1000;  // the host's is 2^16; small here so the emulator stays quick
  std::vector<std::vector<float>> ts;
  for (unsigned n : {1u, 0u, 37u, 2500u, 999u, 1000u, 1001u}) {
    std::vector<float> t(n);
    for (auto &v : t) v = nd(rng) * 0.1f;
    ts.push_back(t);
  }
  int bad = 0;
  for (int threads : {32, 256}) {
    std::vector<unsigned long long> ptrs;
    std::vector<unsigned> lens;
    double want = 0;
    for (size_t i = 0; i < ts.size(); i++) {
      // The last tensor is a view of the fourth from element 3 on.
      const float *p = i + 1 == ts.size() ? ts[3].data() + 3 : ts[i].data();
      const size_t n = i + 1 == ts.size() ? ts[3].size() - 3 : ts[i].size();
      for (size_t j = 0; j < n; j++) want += (double)p[j] * p[j];
      for (size_t c = 0; c < n; c += piece) {
        ptrs.push_back(reinterpret_cast<unsigned long long>(p + c));
        lens.push_back((unsigned)std::min<size_t>(piece, n - c));
      }
    }
    float got[2];
    for (int run = 0; run < 2; run++) {
      std::vector<float> part(ptrs.size(), -1.f);
      // Launches of at most `per` pieces, as the host splits a table of more than 240.
      const unsigned per = threads == 32 ? 3 : 240;
      for (unsigned first = 0; first < ptrs.size(); first += per) {
        Pieces<1, 240> t{};
        t.count = std::min<unsigned>(per, (unsigned)ptrs.size() - first);
        t.first = first;
        for (unsigned b = 0; b < t.count; b++) t.ptr[0][b] = ptrs[first + b], t.len[b] = lens[first + b];
        launch(t.count, threads, [&] { diffuse_sum_squares_part_f32(t, part.data()); });
      }
      launch(1, threads, [&] {
        diffuse_sum_squares_total_f32(part.data(), (unsigned)part.size(), &got[run]);
      });
    }
    const double rel = std::fabs(got[0] - want) / want;
    const bool ok = rel <= 1e-6 && !memcmp(&got[0], &got[1], 4);
    printf("%s sum of squares, %zu pieces, %d threads, %s: %.9g vs float64 %.9g (relative %.1e, tolerance 1e-6), repeat %s\n",
           ok ? "ok" : "MISS", ptrs.size(), threads, threads == 32 ? "3 pieces a launch" : "one launch", got[0], want, rel,
           memcmp(&got[0], &got[1], 4) ? "differs" : "bit-equal");
    bad += !ok;
  }
  return bad ? 1 : 0;
}
