// Candle's im2col (vendored candle-kernels, im2col_index.cuh: the body with 32-bit indices
// where they fit) on the CPU, against a direct loop over the definition, with both index types,
// for contiguous and transposed sources, padding, stride and dilation, and the weight
// gradient's shape (a kernel as large as the image). Prints one line per case.
#include "emulate.cpp"

#include <cstdint>
#include <random>

struct Case {
  size_t b, c, h, w, kh, kw, stride, pad, dil;
  bool transposed;  // src given as the (1, 0) transpose of a contiguous (c, b, h, w) tensor
};

int main() {
  const Case cases[] = {{2, 3, 5, 7, 3, 3, 1, 1, 1, false}, {2, 3, 8, 6, 3, 3, 2, 1, 1, false},
                        {1, 2, 9, 9, 3, 3, 1, 2, 2, false}, {3, 4, 6, 6, 6, 6, 1, 1, 1, true},
                        {2, 5, 4, 4, 1, 1, 1, 0, 1, true}};
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> ud(-1, 1);
  int bad = 0;
  for (const Case &k : cases) {
    const size_t ho = (k.h + 2 * k.pad - k.dil * (k.kh - 1) - 1) / k.stride + 1;
    const size_t wo = (k.w + 2 * k.pad - k.dil * (k.kw - 1) - 1) / k.stride + 1;
    std::vector<float> src(k.b * k.c * k.h * k.w);
    for (auto &v : src) v = ud(rng);
    const size_t dims[4] = {k.b, k.c, k.h, k.w};
    size_t s[4] = {k.c * k.h * k.w, k.h * k.w, k.w, 1};
    if (k.transposed) s[0] = k.h * k.w, s[1] = k.b * k.h * k.w;
    const size_t n = k.b * ho * wo * k.c * k.kh * k.kw;
    std::vector<float> want(n), got32(n, 7.f), got64(n, 7.f);
    size_t i = 0;  // the definition, in dst order (b, ho, wo, c, kh, kw)
    for (size_t b = 0; b < k.b; b++)
      for (size_t y = 0; y < ho; y++)
        for (size_t x = 0; x < wo; x++)
          for (size_t c = 0; c < k.c; c++)
            for (size_t p = 0; p < k.kh; p++)
              for (size_t q = 0; q < k.kw; q++) {
                const long sy = (long)(y * k.stride + p * k.dil) - (long)k.pad;
                const long sx = (long)(x * k.stride + q * k.dil) - (long)k.pad;
                want[i++] = sy < 0 || sx < 0 || sy >= (long)k.h || sx >= (long)k.w
                                ? 0.f
                                : src[b * s[0] + c * s[1] + sy * s[2] + sx * s[3]];
              }
    const bool fits = im2col_fits_u32(n, dims, s, k.pad, ho, wo, k.kh, k.kw, k.stride, k.dil);
    for (size_t d = 0; d < n; d++) {
      im2col_at<float, unsigned>(d, ho, wo, k.kh, k.kw, k.stride, k.pad, k.dil, k.c, k.h, k.w,
                                 s[0], s[1], s[2], s[3], src.data(), got32.data());
      im2col_at<float, size_t>(d, ho, wo, k.kh, k.kw, k.stride, k.pad, k.dil, k.c, k.h, k.w, s[0],
                               s[1], s[2], s[3], src.data(), got64.data());
    }
    size_t miss = 0;
    for (size_t d = 0; d < n; d++) miss += got32[d] != want[d] || got64[d] != want[d];
    const bool ok = miss == 0 && fits;
    bad += !ok;
    std::printf("%s b%zu c%zu %zux%zu k%zux%zu s%zu p%zu d%zu%s: %zu of %zu elements differ, fits u32 %d\n",
                ok ? "ok" : "BAD", k.b, k.c, k.h, k.w, k.kh, k.kw, k.stride, k.pad, k.dil,
                k.transposed ? " transposed" : "", miss, n, fits);
  }
  // Past 2^32 elements the 64-bit path must be taken.
  const size_t dims[4] = {1u << 16, 64, 32, 32}, s[4] = {65536, 1024, 32, 1};
  const bool big = im2col_fits_u32(size_t(1) << 33, dims, s, 1, 32, 32, 3, 3, 1, 1);
  std::printf("%s more than 2^32 elements: fits u32 %d\n", big ? "BAD" : "ok", big);
  bad += big;
  return bad ? 1 : 0;
}
