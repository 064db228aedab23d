// The emulator's own proof that it can fail: small kernels, one correct and the others each
// with one deliberate fault, run by name (`selftest CASE`). Emulator-only: the kernels call
// the emulated cp.async and ldmatrix directly. Exit status 0 and "result ok"
// when the kernel ran and its output matched; otherwise the emulator's report or
// "result wrong" on stdout/stderr. tests/test_cuda_emu.py expects each fault's message.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "cuda/hooks.h"

// shared-oob indexes past an array on purpose.
#pragma GCC diagnostic ignored "-Warray-bounds"

namespace {

constexpr int kThreads = 64;

enum Fault { kNone, kNoBarrier, kNoWait, kPartialWarp, kSharedOob, kMisalignedCopy,
             kSplitBarrier, kLdmatrixGlobal };

// out[t] = in[(t + 1) % n] + shuffle of lane + 1, through shared memory filled by cp.async:
// every primitive the conv kernels use, each with an optional fault.
__global__ void __launch_bounds__(kThreads) exchange_kernel(const float* in, float* out,
                                                             int fault) {
  FR_SHARED(float, buf, [kThreads]);  // arrays start 16-byte aligned in the arena
  const int t = threadIdx.x;
  if (t % 4 == 0) {  // 16-byte copies: one per 4 floats
    const char* src = reinterpret_cast<const char*>(in + t) + (fault == kMisalignedCopy ? 4 : 0);
    fr::emu::cp_async(buf + t, src, 16, fr::emu::Site::current());
  }
  fr::emu::cp_async_commit();
  if (fault != kNoWait) fr::emu::cp_async_wait(0, fr::emu::Site::current());
  if (fault == kSplitBarrier && t == 0) {
    __syncthreads();
  } else if (fault != kNoBarrier) {
    __syncthreads();
  }
  float v = buf[(t + 1) % kThreads];
  const int past_end = kThreads + fault - kSharedOob;  // buf[kThreads]: one past the end
  float* const flat = buf;  // through a pointer, as the conv kernels index their smem
  if (fault == kSharedOob && t == 0) flat[past_end] = v;
  if (fault == kPartialWarp && t % 32 >= 16) {
    out[t] = v;
    return;
  }
  v += __shfl_down_sync(0xffffffffu, float(t % 32), 1);
  out[t] = v;
}

// ldmatrix from a global pointer instead of shared memory.
__global__ void ldmatrix_global_kernel(const __half* g, unsigned* out) {
  unsigned r[4];
  fr::emu::ldmatrix_x4(r, g + 8 * (threadIdx.x % 32), false, fr::emu::Site::current());
  out[threadIdx.x] = r[0];
}

__global__ void noop_kernel() {}

bool check_exchange(const std::vector<float>& in, const std::vector<float>& out) {
  for (int t = 0; t < kThreads; ++t) {
    const int lane = t % 32;
    const float want = in[(t + 1) % kThreads] + float(lane < 31 ? lane + 1 : lane);
    if (out[t] != want) {
      std::printf("result wrong: out[%d] = %g, expected %g%s\n", t, out[t], want,
                  std::isnan(out[t]) ? " (NaN: poisoned memory was read)" : "");
      return false;
    }
  }
  std::printf("result ok\n");
  return true;
}

int run_exchange(int fault) {
  std::vector<float> in(kThreads), out(kThreads);
  for (int t = 0; t < kThreads; ++t) in[t] = float(3 * t + 1);
  float *din = nullptr, *dout = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&din), sizeof(float) * kThreads);
  cudaMalloc(reinterpret_cast<void**>(&dout), sizeof(float) * kThreads);
  cudaMemcpy(din, in.data(), sizeof(float) * kThreads, cudaMemcpyHostToDevice);
  FR_LAUNCH(1, kThreads, 0, nullptr, exchange_kernel)(din, dout, fault);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) {
    std::printf("launch failed: %s\n", cudaGetErrorString(e));
    return 2;
  }
  cudaMemcpy(out.data(), dout, sizeof(float) * kThreads, cudaMemcpyDeviceToHost);
  cudaFree(din);
  cudaFree(dout);
  return check_exchange(in, out) ? 0 : 1;
}

int report(cudaError_t e) {
  if (e == cudaSuccess) {
    std::printf("result ok\n");
    return 0;
  }
  std::printf("launch failed: %s\n", cudaGetErrorString(e));
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  const char* name = argc > 1 ? argv[1] : "ok";
  const struct {
    const char* name;
    Fault fault;
  } exchanges[] = {{"ok", kNone},
                   {"missing-barrier", kNoBarrier},
                   {"missing-wait", kNoWait},
                   {"partial-warp", kPartialWarp},
                   {"shared-oob", kSharedOob},
                   {"misaligned-cp-async", kMisalignedCopy},
                   {"split-barrier", kSplitBarrier}};
  for (const auto& c : exchanges)
    if (std::strcmp(name, c.name) == 0) return run_exchange(c.fault);
  if (std::strcmp(name, "ldmatrix-global") == 0) {
    std::vector<__half> h(256, __float2half_rn(1.f));
    __half* g = nullptr;
    unsigned* o = nullptr;
    cudaMalloc(reinterpret_cast<void**>(&g), 256 * sizeof(__half));
    cudaMalloc(reinterpret_cast<void**>(&o), 32 * sizeof(unsigned));
    cudaMemcpy(g, h.data(), 256 * sizeof(__half), cudaMemcpyHostToDevice);
    FR_LAUNCH(1, 32, 0, nullptr, ldmatrix_global_kernel)(g, o);
    return report(cudaGetLastError());
  }
  if (std::strcmp(name, "oversized-grid") == 0) {
    FR_LAUNCH(dim3(1, 65536), 32, 0, nullptr, noop_kernel)();
    return report(cudaGetLastError());
  }
  if (std::strcmp(name, "oversized-block") == 0) {
    FR_LAUNCH(1, 2048, 0, nullptr, noop_kernel)();
    return report(cudaGetLastError());
  }
  std::printf("unknown case %s\n", name);
  return 3;
}
