// The group-norm CUDA kernels run on the CPU emulator against a float64 reference: the forward
// against the definition, the backward against central differences of the reference forward.
// Prints one line per case and exits non-zero on a miss.
#include "emulate.cpp"

#include <algorithm>
#include <random>

struct Case {
  int n, c, hw, groups, threads, silu;
};

// y = (silu of) the group norm of x, in float64.
static std::vector<double> reference(const std::vector<double> &x, const std::vector<double> &gm,
                                     const std::vector<double> &bt, const Case &k, double eps) {
  std::vector<double> y(x.size());
  const int cg = k.c / k.groups;
  const long m = (long)cg * k.hw;
  for (int b = 0; b < k.n * k.groups; b++) {
    double s = 0, v = 0;
    for (long i = 0; i < m; i++) s += x[b * m + i];
    const double mu = s / m;
    for (long i = 0; i < m; i++) v += (x[b * m + i] - mu) * (x[b * m + i] - mu);
    const double rstd = 1 / std::sqrt(v / m + eps);
    for (long i = 0; i < m; i++) {
      const int ch = (b % k.groups) * cg + (int)(i / k.hw);
      const double z = (x[b * m + i] - mu) * rstd * gm[ch] + bt[ch];
      y[b * m + i] = k.silu ? z / (1 + std::exp(-z)) : z;
    }
  }
  return y;
}

static double dot(const std::vector<double> &a, const std::vector<double> &b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); i++) s += a[i] * b[i];
  return s;
}

int main() {
  const double eps = 1e-5;
  // Several groups and channels per group, hw not a multiple of the block, one warp and
  // several (the cross-warp reduction), a large mean (the centred variance), silu on and off,
  // pixels per channel fewer than, more than and equal to the block's threads.
  const Case cases[] = {{2, 8, 12, 4, 64, 0}, {2, 8, 12, 4, 64, 1}, {3, 6, 37, 3, 96, 1},
                        {1, 4, 5, 1, 32, 0},  {2, 16, 9, 8, 64, 1}, {2, 6, 100, 2, 32, 1},
                        {1, 4, 64, 2, 64, 0}};
  int bad = 0;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  for (int ci = 0; ci < (int)(sizeof cases / sizeof cases[0]); ci++) {
    const Case k = cases[ci];
    const long nel = (long)k.n * k.c * k.hw;
    std::vector<float> x(nel), dy(nel), gb(2 * k.c);
    const float shift = ci == 2 ? 50.f : 0.f;
    for (auto &v : x) v = nd(rng) * 1.5f + shift;
    for (auto &v : dy) v = nd(rng);
    for (auto &v : gb) v = nd(rng);
    std::vector<float> y(nel), out(nel + 2L * k.n * k.c);
    const float *gamma = gb.data(), *beta = gb.data() + k.c;
    launch(k.n * k.groups, k.threads, [&] {
      diffuse_gn_fwd_f32(x.data(), gamma, beta, y.data(), k.c, k.hw, k.groups, (float)eps, k.silu);
    });
    launch(k.n * k.groups, k.threads, [&] {
      diffuse_gn_bwd_f32(x.data(), gb.data(), dy.data(), out.data(), k.n, k.c, k.hw, k.groups,
                         (float)eps, k.silu);
    });
    std::vector<double> xd(x.begin(), x.end()), g(gamma, gamma + k.c), b(beta, beta + k.c),
        dyd(dy.begin(), dy.end());
    const auto yref = reference(xd, g, b, k, eps);
    double fwd_err = 0;
    for (long i = 0; i < nel; i++) fwd_err = std::max(fwd_err, std::fabs(y[i] - yref[i]));
    // Central differences of L = sum(y * dy).
    auto num = [&](std::vector<double> &p, long i) {
      const double h = 1e-4 * std::max(1.0, std::fabs(p[i])), keep = p[i];
      p[i] = keep + h;
      const double up = dot(reference(xd, g, b, k, eps), dyd);
      p[i] = keep - h;
      const double dn = dot(reference(xd, g, b, k, eps), dyd);
      p[i] = keep;
      return (up - dn) / (2 * h);
    };
    double dx_err = 0, dg_err = 0, db_err = 0, scale = 1;
    for (long i = 0; i < nel; i++) {
      const double want = num(xd, i);
      scale = std::max(scale, std::fabs(want));
      dx_err = std::max(dx_err, std::fabs(out[i] - want));
    }
    for (int ch = 0; ch < k.c; ch++) {
      double sg = 0, sb = 0;
      for (int s = 0; s < k.n; s++) {
        sg += out[nel + (s * k.c + ch) * 2];
        sb += out[nel + (s * k.c + ch) * 2 + 1];
      }
      dg_err = std::max(dg_err, std::fabs(sg - num(g, ch)));
      db_err = std::max(db_err, std::fabs(sb - num(b, ch)));
    }
    // f32 kernels against f64: 1e-4 relative to the gradient's scale (a shift of 50 costs
    // ~50 * 2^-24 per centred value).
    const double tol = 1e-4 * scale;
    const bool ok = fwd_err < 1e-4 && dx_err < tol && dg_err < tol * k.n * k.hw &&
                    db_err < tol * k.n * k.hw;
    printf("%s n%d c%d hw%d groups%d threads%d silu%d: y %.2e, dx %.2e, dgamma %.2e, dbeta %.2e\n",
           ok ? "ok" : "MISS", k.n, k.c, k.hw, k.groups, k.threads, k.silu, fwd_err, dx_err,
           dg_err, db_err);
    bad += !ok;
  }
  return bad ? 1 : 0;
}
