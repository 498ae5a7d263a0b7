// The convolution's data-movement kernels (src/kernels/cuda/conv.cu) on the CPU: the
// multiply-shift division against '/' (every divisor up to 5,000 and the largest ones, with
// the numerators where it could go wrong); im2col in both layouts against the definition;
// col2im against a scatter-add of the columns in float64 (its adjoint); the bias fill. Launched
// with fewer threads than elements, so the grid-stride loops wrap. One line per case.
#include "emulate.cpp"

#include <algorithm>
#include <random>

int bad = 0;
void report(bool ok, const char *what, const char *shape, size_t miss, size_t n) {
  bad += !ok;
  std::printf("%s %s %s: %zu of %zu elements differ\n", ok ? "ok" : "BAD", what, shape, miss, n);
}

struct Conv {
  int n, c, h, w, kh, kw, s, p;
  int oh() const { return (h + 2 * p - kh) / s + 1; }
  int ow() const { return (w + 2 * p - kw) / s + 1; }
  // x[img, ci, oy*s - p + i, ox*s - p + j], or -1 outside the image.
  long src(int img, int ci, int i, int j, int oy, int ox) const {
    const int iy = oy * s - p + i, ix = ox * s - p + j;
    if (iy < 0 || ix < 0 || iy >= h || ix >= w) return -1;
    return (((long)img * c + ci) * h + iy) * w + ix;
  }
};

void check_fastdiv() {
  std::mt19937 rng(5);
  std::vector<unsigned> ds;
  for (unsigned d = 1; d <= 5000; d++) ds.push_back(d);
  for (unsigned d : {65535u, 65536u, 1000003u, (1u << 30) + 1, (1u << 31) - 1, 1u << 31})
    ds.push_back(d);
  size_t miss = 0, n = 0;
  const unsigned top = (1u << 31) - 1;
  for (unsigned d : ds) {
    const FastDiv f(d);
    std::vector<unsigned> ns = {0, 1, d - 1, d, d + 1, top, top - 1, top - (top % d), top / d * d - 1};
    for (int r = 0; r < 40; r++) ns.push_back(rng() & top);
    for (unsigned q = 1; q < 64; q++) ns.push_back(q * d - 1), ns.push_back(q * d);
    for (unsigned v : ns) {
      if (v > top) continue;
      n++;
      miss += f.div(v) != v / d;
    }
  }
  report(miss == 0, "fastdiv", "d 1..5000 and up to 2^31", miss, n);
}

void check_conv(const Conv &k) {
  std::mt19937 rng(k.n * 131 + k.c * 17 + k.kh);
  std::uniform_real_distribution<float> ud(-1, 1);
  const int oh = k.oh(), ow = k.ow(), kk = k.c * k.kh * k.kw, pix = oh * ow;
  std::vector<float> x((size_t)k.n * k.c * k.h * k.w);
  for (auto &v : x) v = ud(rng);
  char shape[96];
  std::snprintf(shape, sizeof shape, "n%d c%d %dx%d k%dx%d s%d p%d", k.n, k.c, k.h, k.w, k.kh,
                k.kw, k.s, k.p);
  const size_t ncol = (size_t)k.n * kk * pix;
  for (int vec : {1, 2, 4})
  for (int major = 0; major < 2; major++) {
    if (ow % vec) continue;
    std::vector<float> col(ncol, 7.f);
    launch(3, 64, [&] {
      diffuse_im2col_f32(x.data(), col.data(), k.n, k.c, k.h, k.w, k.kh, k.kw, k.s, k.p, oh, ow,
                         major, vec);
    });
    size_t miss = 0;
    for (int img = 0; img < k.n; img++)
      for (int ci = 0; ci < k.c; ci++)
        for (int i = 0; i < k.kh; i++)
          for (int j = 0; j < k.kw; j++)
            for (int oy = 0; oy < oh; oy++)
              for (int ox = 0; ox < ow; ox++) {
                const long kx = (ci * k.kh + i) * k.kw + j;
                const long row = major ? kx * k.n + img : (long)img * kk + kx;
                const long at = k.src(img, ci, i, j, oy, ox);
                miss += col[row * pix + oy * ow + ox] != (at < 0 ? 0.f : x[at]);
              }
    char what[64];
    std::snprintf(what, sizeof what, "im2col %s, %d per thread", major ? "k-major" : "image-major", vec);
    report(miss == 0, what, shape, miss, ncol);
  }
  // col2im: the float64 scatter-add of random columns.
  std::vector<float> col(ncol), dx(x.size(), 7.f);
  for (auto &v : col) v = ud(rng);
  std::vector<double> want(x.size(), 0.0);
  for (int img = 0; img < k.n; img++)
    for (int ci = 0; ci < k.c; ci++)
      for (int i = 0; i < k.kh; i++)
        for (int j = 0; j < k.kw; j++)
          for (int oy = 0; oy < oh; oy++)
            for (int ox = 0; ox < ow; ox++) {
              const long at = k.src(img, ci, i, j, oy, ox);
              const long row = (long)img * kk + (ci * k.kh + i) * k.kw + j;
              if (at >= 0) want[at] += col[row * pix + oy * ow + ox];
            }
  for (int vec : {1, 2, 4}) {
    if (k.w % vec) continue;
    std::fill(dx.begin(), dx.end(), 7.f);
    launch(2, 96, [&] {
      diffuse_col2im_f32(col.data(), dx.data(), k.n, k.c, k.h, k.w, k.kh, k.kw, k.s, k.p, oh, ow,
                         vec);
    });
    size_t miss = 0;
    for (size_t e = 0; e < dx.size(); e++) miss += std::fabs(dx[e] - want[e]) > 1e-5;
    char what[64];
    std::snprintf(what, sizeof what, "col2im, %d per thread", vec);
    report(miss == 0, what, shape, miss, dx.size());
  }
}

void check_bias() {
  const int n = 3, co = 5, pix = 7;
  std::vector<float> b(n * co), y(n * co * pix, 7.f);
  for (int i = 0; i < n * co; i++) b[i] = 0.5f * i - 2;
  for (int per_image = 0; per_image < 2; per_image++) {
    launch(2, 32, [&] { diffuse_bias_fill_f32(b.data(), y.data(), n, co, pix, per_image); });
    size_t miss = 0;
    for (int img = 0; img < n; img++)
      for (int o = 0; o < co; o++)
        for (int q = 0; q < pix; q++)
          miss += y[(img * co + o) * pix + q] != b[per_image ? img * co + o : o];
    report(miss == 0, per_image ? "bias per image" : "bias per channel", "n3 co5 pix7", miss,
           y.size());
  }
}

int main() {
  check_fastdiv();
  const Conv cases[] = {{2, 3, 5, 7, 3, 3, 1, 1}, {3, 2, 8, 6, 3, 3, 2, 1}, {2, 4, 5, 5, 1, 1, 1, 0},
                        {1, 2, 9, 8, 3, 3, 2, 0}, {2, 3, 4, 4, 5, 5, 1, 2}, {2, 2, 7, 7, 3, 3, 2, 1},
                        {2, 3, 8, 8, 3, 3, 1, 1}, {2, 3, 8, 12, 3, 3, 2, 1}, {2, 4, 4, 4, 1, 1, 1, 0}};
  for (const Conv &k : cases) check_conv(k);
  check_bias();
  return bad ? 1 : 0;
}
