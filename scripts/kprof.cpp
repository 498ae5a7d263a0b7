// A kernel profiler for any CUDA program, ours or PyTorch's: where the GPU's time goes, by
// kernel name (issue "CUDA for real", GPU check section 5). The GPU machines have no Nsight;
// the driver loads this library into a process through CUDA_INJECTION64_PATH, and CUPTI's
// activity API records every kernel, memcpy and memset with its GPU start and end time.
// At exit it writes a table to $KPROF_OUT (else stderr): the top $KPROF_TOP (default 20)
// kernels by total GPU time, with calls and mean duration, after a summary line: kernel
// time, copy time, and the span from the first to the last record (the difference is the GPU
// waiting for the host: launch overhead). A second table splits the top $KPROF_SHAPES
// (default 15) by launch shape (grid and block), which for a generic kernel (Candle's
// elementwise ops and sums size their grid by the elements) says which tensor sizes cost.
//
// Build (`make gpu-profiler`): g++ -shared -fPIC against CUPTI 13.0's headers and library
// (the nvidia-cuda-cupti wheel); run: CUDA_INJECTION64_PATH=gpu/libkprof.so KPROF_OUT=f cmd.
#include <cupti.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cxxabi.h>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

struct Stat {
  unsigned long long calls = 0, ns = 0;
};

std::mutex mu;
std::unordered_map<std::string, Stat> kernels, shapes;
unsigned long long kernel_ns = 0, copy_ns = 0, first = ~0ull, last = 0, dropped = 0;

std::string demangle(const char *name) {
  int status = 0;
  char *d = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string s = status == 0 && d ? d : name;
  free(d);
  // Template arguments make cuBLAS names unreadable: keep the name and its first 90 chars.
  if (s.size() > 90) s = s.substr(0, 87) + "...";
  return s;
}

void span(unsigned long long start, unsigned long long end) {
  first = std::min(first, start);
  last = std::max(last, end);
}

void CUPTIAPI requested(uint8_t **buffer, size_t *size, size_t *max_records) {
  *size = 8 << 20;
  *buffer = static_cast<uint8_t *>(aligned_alloc(8, *size));
  *max_records = 0;
}

void CUPTIAPI completed(CUcontext, uint32_t, uint8_t *buffer, size_t, size_t valid) {
  std::lock_guard<std::mutex> lock(mu);
  CUpti_Activity *r = nullptr;
  while (cuptiActivityGetNextRecord(buffer, valid, &r) == CUPTI_SUCCESS) {
    switch (r->kind) {
      case CUPTI_ACTIVITY_KIND_KERNEL:
      case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: {
        auto *k = reinterpret_cast<CUpti_ActivityKernel10 *>(r);
        std::string name = demangle(k->name);
        char dims[96];
        snprintf(dims, sizeof dims, " <<<%dx%dx%d, %dx%dx%d>>>", k->gridX, k->gridY, k->gridZ, k->blockX,
                 k->blockY, k->blockZ);
        for (Stat *s : {&kernels[name], &shapes[name + dims]}) {
          s->calls++;
          s->ns += k->end - k->start;
        }
        kernel_ns += k->end - k->start;
        span(k->start, k->end);
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMCPY: {
        auto *m = reinterpret_cast<CUpti_ActivityMemcpy6 *>(r);
        copy_ns += m->end - m->start;
        span(m->start, m->end);
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMSET: {
        auto *m = reinterpret_cast<CUpti_ActivityMemset4 *>(r);
        copy_ns += m->end - m->start;
        span(m->start, m->end);
        break;
      }
      default:
        break;
    }
  }
  size_t d = 0;
  cuptiActivityGetNumDroppedRecords(nullptr, 0, &d);
  dropped += d;
  free(buffer);
}

// The `top` entries of `m` by total time, as a markdown table.
void table(FILE *f, const std::unordered_map<std::string, Stat> &m, const char *env, size_t top,
           const char *what) {
  std::vector<std::pair<std::string, Stat>> v(m.begin(), m.end());
  std::sort(v.begin(), v.end(), [](auto &a, auto &b) { return a.second.ns > b.second.ns; });
  const char *e = getenv(env);
  size_t n = std::min(v.size(), e ? static_cast<size_t>(atoi(e)) : top);
  fprintf(f, "| share | total ms | calls | mean us | %s |\n|---|---|---|---|---|\n", what);
  for (size_t i = 0; i < n; i++) {
    const Stat &s = v[i].second;
    std::string name = v[i].first;
    for (char &c : name)
      if (c == '|') c = '/';
    fprintf(f, "| %.1f%% | %.1f | %llu | %.1f | `%s` |\n", 100.0 * s.ns / (kernel_ns ? kernel_ns : 1),
            s.ns / 1e6, s.calls, s.ns / 1e3 / s.calls, name.c_str());
  }
}

void report() {
  cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  std::lock_guard<std::mutex> lock(mu);
  const char *path = getenv("KPROF_OUT");
  FILE *f = path ? fopen(path, "w") : stderr;
  if (!f) f = stderr;
  double wall = last > first ? (last - first) / 1e6 : 0;
  fprintf(f, "kernels %.1f ms (%zu names), copies/memsets %.1f ms, GPU span %.1f ms (%.0f%% busy)%s\n\n",
          kernel_ns / 1e6, kernels.size(), copy_ns / 1e6, wall,
          wall > 0 ? 100.0 * (kernel_ns + copy_ns) / 1e6 / wall : 0.0,
          dropped ? " [records dropped]" : "");
  table(f, kernels, "KPROF_TOP", 20, "kernel");
  fprintf(f, "\nBy launch shape (grid, block):\n\n");
  table(f, shapes, "KPROF_SHAPES", 15, "kernel <<<grid, block>>>");
  if (f != stderr) fclose(f);
}

}  // namespace

extern "C" int InitializeInjection(void) {
  if (cuptiActivityRegisterCallbacks(requested, completed) != CUPTI_SUCCESS) return 0;
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY);
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET);
  atexit(report);
  return 1;
}
