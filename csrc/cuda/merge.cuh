// Deterministic, parallel merge of per-tile partials [parts][C] into per-channel results.
//
// One kernel, launched once or twice: CTA (channel block, group) merges a fixed range of
// parts for 32 channels with 8 lanes each -- lane y takes parts y, y+8, ... in order, then the
// 8 lane results merge in a fixed binary tree in smem. With more than one group, a second
// launch merges the groups' results the same way. The partition depends on shapes only, so
// the result is bitwise reproducible, and hundreds of CTAs share the work (a thread per
// channel walking thousands of tiles serially costs milliseconds at batch 128).
// CUDA headers and csrc/common only (docs/design.md §4).
#pragma once

#include <cuda_runtime.h>

#include "common/stats.h"
#include "cuda/hooks.h"
#include "cuda/kernels.h"

namespace fr::cuda {

// Sums of N per-channel quantities, in double: thousands of fp32 partials.
template <int N>
struct Sums {
  double v[N];
};

__device__ __forceinline__ Welford<double> combine(const Welford<double>& a,
                                                   const Welford<double>& b) {
  return welford_merge(a, b);
}
template <int N>
__device__ __forceinline__ Sums<N> combine(Sums<N> a, const Sums<N>& b) {
#pragma unroll
  for (int i = 0; i < N; ++i) a.v[i] += b.v[i];
  return a;
}
__device__ __forceinline__ void zero(Welford<double>& a) { a = Welford<double>{}; }
template <int N>
__device__ __forceinline__ void zero(Sums<N>& a) {
#pragma unroll
  for (int i = 0; i < N; ++i) a.v[i] = 0.0;
}

// in(part, c) -> Acc; out(group, c, Acc). Parts [group*chunk, min(parts, (group+1)*chunk)).
template <class Acc, class In, class Out>
__global__ void __launch_bounds__(kMergeThreads)
    merge_partials_kernel(In in, Out out, int64_t parts, int64_t C, int64_t chunk) {
  // Raw storage: a __shared__ array of a type with default member initialisers is not allowed.
  FR_SHARED(__align__(alignof(Acc)) unsigned char, raw, [sizeof(Acc) * kMergeThreads]);
  Acc* lane_acc = reinterpret_cast<Acc*>(raw);
  const int cx = threadIdx.x % kMergeChannels, ly = threadIdx.x / kMergeChannels;
  const int64_t c = int64_t(blockIdx.x) * kMergeChannels + cx;
  const int64_t begin = int64_t(blockIdx.y) * chunk;
  const int64_t end = begin + chunk < parts ? begin + chunk : parts;
  Acc acc;
  zero(acc);
  if (c < C)
    for (int64_t i = begin + ly; i < end; i += kMergeLanes) acc = combine(acc, in(i, c));
  lane_acc[threadIdx.x] = acc;
  __syncthreads();
#pragma unroll
  for (int h = kMergeLanes / 2; h >= 1; h /= 2) {  // lanes [0, h) absorb lanes [h, 2h)
    if (ly < h)
      lane_acc[threadIdx.x] =
          combine(lane_acc[threadIdx.x], lane_acc[threadIdx.x + h * kMergeChannels]);
    __syncthreads();
  }
  if (ly == 0 && c < C) out(int64_t(blockIdx.y), c, lane_acc[cx]);
}

// The second level's input and the first level's output: one Acc per (group, channel).
template <class Acc>
struct GroupResults {
  Acc* at;
  int64_t C;
  __device__ Acc operator()(int64_t g, int64_t c) const { return at[g * C + c]; }
  __device__ void operator()(int64_t g, int64_t c, const Acc& a) const { at[g * C + c] = a; }
};

// Merge `parts` partials per channel into fin(0, c, Acc) by the planned levels
// plan.launches[first..] (cuda/launch_plan.h): one launch, or two with `groups_ws` holding
// the first level's results (one Acc per group and channel; unused with one level).
template <class Acc, class In, class Final>
cudaError_t merge_partials(In in, Final fin, int64_t parts, int64_t C, const OpLaunchPlan& plan,
                           size_t first, Acc* groups_ws, cudaStream_t stream) {
  const KernelLaunch& l1 = plan.launches[first];
  if (first + 1 == plan.launches.size()) {
    FR_LAUNCH_AS(l1, stream, merge_partials_kernel<Acc>)(in, fin, parts, C, l1.chunk);
    return cudaGetLastError();
  }
  const KernelLaunch& l2 = plan.launches[first + 1];
  const GroupResults<Acc> mid{groups_ws, C};
  FR_LAUNCH_AS(l1, stream, merge_partials_kernel<Acc>)(in, mid, parts, C, l1.chunk);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  FR_LAUNCH_AS(l2, stream, merge_partials_kernel<Acc>)(mid, fin, l1.grid.y, C, l2.chunk);
  return cudaGetLastError();
}

}  // namespace fr::cuda
