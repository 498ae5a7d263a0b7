// The 2x nearest upsampling kernels (src/kernels/cuda/upsample.cu) on the CPU: the forward
// against the definition, the backward against the sum of each 2x2 block in the CPU kernel's
// order (bit-equal), for odd and even sizes, the grid-stride loop wrapping. One line per case.
#include "emulate.cpp"

#include <random>

int main() {
  const int shapes[][3] = {{6, 3, 5}, {4, 4, 4}, {3, 7, 2}, {2, 1, 9}};  // planes, h, w
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> ud(-1, 1);
  int bad = 0;
  for (const auto &s : shapes) {
    const int planes = s[0], h = s[1], w = s[2];
    std::vector<float> x(planes * h * w), y(4 * x.size(), 7.f), dy(4 * x.size()), dx(x.size(), 7.f);
    for (auto &v : x) v = ud(rng);
    for (auto &v : dy) v = ud(rng);
    launch(2, 32, [&] { diffuse_up2_fwd_f32(x.data(), y.data(), planes, h, w); });
    launch(3, 32, [&] { diffuse_up2_bwd_f32(dy.data(), dx.data(), planes, h, w); });
    size_t miss = 0;
    for (int p = 0; p < planes; p++)
      for (int r = 0; r < 2 * h; r++)
        for (int c = 0; c < 2 * w; c++)
          miss += y[(p * 2 * h + r) * 2 * w + c] != x[(p * h + r / 2) * w + c / 2];
    for (int p = 0; p < planes; p++)
      for (int r = 0; r < h; r++)
        for (int c = 0; c < w; c++) {
          const float *a = &dy[(p * 2 * h + 2 * r) * 2 * w + 2 * c], *b = a + 2 * w;
          miss += dx[(p * h + r) * w + c] != a[0] + a[1] + b[0] + b[1];
        }
    bad += miss != 0;
    std::printf("%s upsample 2x forward and backward, %d planes of %dx%d: %zu of %zu elements differ\n",
                miss ? "BAD" : "ok", planes, h, w, miss, y.size() + dx.size());
  }
  return bad ? 1 : 0;
}
