// The row-softmax CUDA kernels on the CPU emulator: the forward against softmax(scale * x) in
// float64, the backward against central differences of L = sum(softmax(scale * x) * dy) in
// float64. Prints one line per case and exits non-zero on a miss.
#include "emulate.cpp"

#include <algorithm>
#include <random>

struct Case {
  int rows, n, threads;
  float scale, spread;
};

// softmax(scale * x) of one row, in float64.
static void reference(const double *x, double *y, int n, double scale) {
  double m = -INFINITY, s = 0;
  for (int i = 0; i < n; i++) m = std::max(m, scale * x[i]);
  for (int i = 0; i < n; i++) s += y[i] = std::exp(scale * x[i] - m);
  for (int i = 0; i < n; i++) y[i] /= s;
}

int main() {
  // Rows shorter than a warp, of one element, not a multiple of the block, several elements
  // per thread; scores large enough that exp would overflow without the max (spread 200).
  const Case cases[] = {{3, 16, 32, 0.125f, 3}, {2, 1, 32, 1, 1},       {4, 37, 32, 0.5f, 4},
                        {2, 256, 64, 0.0625f, 20}, {3, 300, 256, 1, 2}, {2, 1000, 128, 0.3f, 200},
                        {5, 49, 64, 1, 1}};
  int bad = 0;
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  for (const Case &k : cases) {
    const long nel = (long)k.rows * k.n;
    std::vector<float> x(nel), dy(nel), y(nel), dx(nel);
    for (auto &v : x) v = nd(rng) * k.spread;
    for (auto &v : dy) v = nd(rng);
    launch(k.rows, k.threads, [&] { diffuse_softmax_fwd_f32(x.data(), y.data(), k.n, k.scale); });
    launch(k.rows, k.threads,
           [&] { diffuse_softmax_bwd_f32(y.data(), dy.data(), dx.data(), k.n, k.scale); });
    double fwd_err = 0, bwd_err = 0, gscale = 1e-3;
    std::vector<double> xd(k.n), yd(k.n);
    for (int r = 0; r < k.rows; r++) {
      const long off = (long)r * k.n;
      for (int i = 0; i < k.n; i++) xd[i] = x[off + i];
      reference(xd.data(), yd.data(), k.n, k.scale);
      for (int i = 0; i < k.n; i++) fwd_err = std::max(fwd_err, std::fabs(y[off + i] - yd[i]));
      auto loss = [&] {
        std::vector<double> p(k.n);
        reference(xd.data(), p.data(), k.n, k.scale);
        double l = 0;
        for (int i = 0; i < k.n; i++) l += p[i] * dy[off + i];
        return l;
      };
      for (int i = 0; i < k.n; i++) {
        const double keep = xd[i], h = 1e-5 * std::max(1.0, std::fabs(keep));
        xd[i] = keep + h;
        const double up = loss();
        xd[i] = keep - h;
        const double dn = loss();
        xd[i] = keep;
        const double want = (up - dn) / (2 * h);
        gscale = std::max(gscale, std::fabs(want));
        bwd_err = std::max(bwd_err, std::fabs(dx[off + i] - want));
      }
    }
    // f32 against f64: probabilities within 1e-6; the gradient within 1e-5 of its scale (the
    // central differences themselves are good to ~1e-9 here).
    // (std::max drops a NaN, so finiteness is checked on its own.)
    const bool finite = std::all_of(y.begin(), y.end(), [](float v) { return std::isfinite(v); }) &&
                        std::all_of(dx.begin(), dx.end(), [](float v) { return std::isfinite(v); });
    const bool ok = finite && fwd_err < 1e-6 && bwd_err < 1e-5 * gscale;
    printf("%s rows%d n%d threads%d scale%g spread%g: y %.2e, dx %.2e (scale %.2e)\n",
           ok ? "ok" : "MISS", k.rows, k.n, k.threads, k.scale, k.spread, fwd_err, bwd_err,
           gscale);
    bad += !ok;
  }
  return bad ? 1 : 0;
}
