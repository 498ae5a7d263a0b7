// Runs CUDA kernel source on the CPU: each thread of a block is an OS thread, __syncthreads a
// barrier, warp shuffles go through shared slots between barriers of the warp alone (so warps
// run apart between __syncthreads, as on a GPU, and a missing one can show as a race). Blocks
// run one after another.
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};
thread_local Dim3 threadIdx;
Dim3 blockIdx, blockDim, gridDim;
static std::barrier<> *sync_all;
static std::vector<std::unique_ptr<std::barrier<>>> sync_warp;
static std::vector<float> shfl;

#define __global__
#define __device__
#define __shared__ static
void __syncthreads() { sync_all->arrive_and_wait(); }
float __shfl_xor_sync(unsigned, float v, int o) {
  // Every thread of the warp takes part (the kernels call shuffles uniformly, in whole warps).
  std::barrier<> &warp = *sync_warp[threadIdx.x >> 5];
  shfl[threadIdx.x] = v;
  warp.arrive_and_wait();
  const unsigned lane = threadIdx.x & 31, base = threadIdx.x & ~31u;
  const float r = shfl[base + (lane ^ o)];
  warp.arrive_and_wait();
  return r;
}
float rsqrtf(float x) { return 1.f / std::sqrt(x); }
// Round-to-nearest intrinsics: plain float operations here (no FMA on the emulating CPU).
float __fmul_rn(float a, float b) { return a * b; }
float __fadd_rn(float a, float b) { return a + b; }
float __fsub_rn(float a, float b) { return a - b; }
float __fdiv_rn(float a, float b) { return a / b; }
struct float2 {
  float x, y;
};
struct float4 {
  float x, y, z, w;
};
float2 make_float2(float x, float y) { return {x, y}; }
float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }

#include KERNEL

// Launch `f` over `blocks` blocks of `threads` threads.
void launch(unsigned blocks, unsigned threads, const std::function<void()> &f) {
  blockDim.x = threads;
  gridDim.x = blocks;
  shfl.assign(threads, 0.f);
  sync_warp.clear();
  for (unsigned w = 0; w < threads; w += 32)
    sync_warp.push_back(std::make_unique<std::barrier<>>(std::min(32u, threads - w)));
  for (unsigned b = 0; b < blocks; b++) {
    blockIdx.x = b;
    std::barrier<> bar(threads);
    sync_all = &bar;
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < threads; t++)
      ts.emplace_back([&, t] {
        threadIdx.x = t;
        f();
      });
    for (auto &t : ts) t.join();
  }
}
