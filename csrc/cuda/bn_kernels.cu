// CUDA kernels of bn_finalize, block_end, block_end_bwd. CUDA headers and csrc/common only
// (a torch header would cost ~50 s of compile time per file). fp32 math for 16-bit data,
// int64 offsets everywhere.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/bn.h"
#include "common/fusion.h"
#include "cuda/hooks.h"
#include "cuda/kernels.h"
#include "cuda/merge.cuh"

namespace fr::cuda {
namespace {

// Explicit conversions: torch builds with __CUDA_NO_HALF_CONVERSIONS__ and friends.
template <class S>
struct Cvt;
template <>
struct Cvt<float> {
  using acc = float;
  static __device__ __forceinline__ float to(float v) { return v; }
  static __device__ __forceinline__ float from(float v) { return v; }
};
template <>
struct Cvt<double> {
  using acc = double;
  static __device__ __forceinline__ double to(double v) { return v; }
  static __device__ __forceinline__ double from(double v) { return v; }
};
template <>
struct Cvt<__half> {
  using acc = float;
  static __device__ __forceinline__ float to(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from(float v) { return __float2half_rn(v); }
};
template <>
struct Cvt<__nv_bfloat16> {
  using acc = float;
  static __device__ __forceinline__ float to(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from(float v) { return __float2bfloat16_rn(v); }
};

// 16-byte vector of VEC elements.
template <class S, int VEC>
struct alignas(sizeof(S) * VEC) Vec {
  S v[VEC];
};

// ---------------------------------------------------------------- bn_finalize
// One CTA: C is at most a few thousand, and one CTA makes the num_batches_tracked increment
// race-free (every thread reads the old value before thread 0 writes the new one).
template <class T>
__global__ void __launch_bounds__(kElementwiseThreads) bn_finalize_kernel(BnFinalizeParams p) {
  const bool track = p.update && p.num_batches_tracked != nullptr;
  const int64_t nbt = track ? p.num_batches_tracked[0] + 1 : 0;
  __syncthreads();
  if (track && threadIdx.x == 0) p.num_batches_tracked[0] = nbt;
  const T factor = bn_momentum_factor<T>(p.has_momentum, T(p.momentum), nbt);
  const T* mean = static_cast<const T*>(p.mean);
  const T* m2 = static_cast<const T*>(p.m2);
  const T* weight = static_cast<const T*>(p.weight);
  const T* bias = static_cast<const T*>(p.bias);
  T* rm = static_cast<T*>(p.running_mean);
  T* rv = static_cast<T*>(p.running_var);
  for (int64_t c = threadIdx.x; c < p.C; c += blockDim.x) {
    const T invstd = bn_invstd<T>(m2[c], T(p.count), T(p.eps));
    static_cast<T*>(p.invstd)[c] = invstd;
    bn_scale_shift<T>(mean[c], invstd, weight, bias, c, static_cast<T*>(p.scale) + c,
                      static_cast<T*>(p.shift) + c);
    if (p.update) {
      rm[c] = bn_running_update<T>(rm[c], mean[c], factor);
      rv[c] = bn_running_update<T>(rv[c], bn_unbiased_var<T>(m2[c], p.count), factor);
    }
  }
}

// ---------------------------------------------------------------- block_end
// Grid-stride over VEC-element vectors (16-byte loads when VEC > 1), then a scalar tail.
// The channel of each element is tracked incrementally from one division per vector.
template <class S, int VEC>
__global__ void __launch_bounds__(kElementwiseThreads) block_end_kernel(BlockEndParams p) {
  using A = typename Cvt<S>::acc;
  const S* y = static_cast<const S*>(p.y);
  const S* res = static_cast<const S*>(p.residual);
  S* out = static_cast<S*>(p.out);
  const A* scale = static_cast<const A*>(p.scale);
  const A* shift = static_cast<const A*>(p.shift);
  const A* rs = static_cast<const A*>(p.res_scale);
  const A* rb = static_cast<const A*>(p.res_shift);
  const A* bs = static_cast<const A*>(p.branch_scale);
  const int64_t n = p.L.numel(), C = p.L.C, inner = p.L.inner;
  const int64_t nvec = n / VEC;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t v = tid; v < nvec; v += step) {
    const int64_t i0 = v * VEC;
    const Vec<S, VEC> yv = reinterpret_cast<const Vec<S, VEC>*>(y)[v];
    const Vec<S, VEC> rv = reinterpret_cast<const Vec<S, VEC>*>(res)[v];
    Vec<S, VEC> ov;
    int64_t r = i0 % inner, c = (i0 / inner) % C;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      ov.v[k] = Cvt<S>::from(block_end_value<A>(Cvt<S>::to(yv.v[k]), scale, shift,
                                                branch_factor(bs, i0 + k, p.per_sample),
                                                Cvt<S>::to(rv.v[k]), rs, rb, c));
      if (++r == inner) {
        r = 0;
        if (++c == C) c = 0;
      }
    }
    reinterpret_cast<Vec<S, VEC>*>(out)[v] = ov;
  }
  for (int64_t i = nvec * VEC + tid; i < n; i += step) {
    const int64_t c = p.L.channel(i);
    out[i] = Cvt<S>::from(block_end_value<A>(Cvt<S>::to(y[i]), scale, shift,
                                             branch_factor(bs, i, p.per_sample),
                                             Cvt<S>::to(res[i]), rs, rb, c));
  }
}

// ---------------------------------------------------------------- block_end_bwd
// Per element: dz = relu_bwd(d_out, out); sums of dz, dz*(y-mean), dz*(y_d-mean_d) (invstd
// is applied per channel at the end).
template <class S>
struct BwdElem {
  using A = typename Cvt<S>::acc;
  const BlockEndBwdParams& p;
  __device__ __forceinline__ void operator()(int64_t i, A m, A md, A& s0, A& s1, A& s2) const {
    const A g = relu_bwd<A, A>(Cvt<S>::to(static_cast<const S*>(p.d_out)[i]),
                               Cvt<S>::to(static_cast<const S*>(p.out)[i]));
    static_cast<S*>(p.dz)[i] = Cvt<S>::from(g);
    // The branch's gradient is dz * branch (sums 0 and 1); the shortcut's is dz.
    const A gb = g * branch_factor(static_cast<const A*>(p.branch_scale), i, p.per_sample);
    s0 += gb;
    s1 += gb * (Cvt<S>::to(static_cast<const S*>(p.y)[i]) - m);
    if (p.y_d) s2 += g * (Cvt<S>::to(static_cast<const S*>(p.y_d)[i]) - md);
  }
};

// Channels-last: CTA (32 channels) x (8 pixel lanes) over a range of pixels; lanes are summed
// in a fixed order through shared memory.
template <class S>
__global__ void __launch_bounds__(kElementwiseThreads)
    block_end_bwd_nhwc(BlockEndBwdParams p, int64_t chunks, int64_t rows_per_chunk) {
  using A = typename Cvt<S>::acc;
  const int64_t C = p.L.C;
  const int64_t c = int64_t(blockIdx.y) * 32 + threadIdx.x;
  const int64_t chunk = blockIdx.x;
  const int64_t r0 = chunk * rows_per_chunk;
  const int64_t r1 = min(p.L.outer, r0 + rows_per_chunk);
  A s0 = 0, s1 = 0, s2 = 0;
  if (c < C) {
    const A m = static_cast<const A*>(p.mean)[c];
    const A md = p.y_d ? static_cast<const A*>(p.mean_d)[c] : A(0);
    const BwdElem<S> elem{p};
    for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) elem(r * C + c, m, md, s0, s1, s2);
  }
  FR_SHARED(A, sh, [3][8][32]);
  sh[0][threadIdx.y][threadIdx.x] = s0;
  sh[1][threadIdx.y][threadIdx.x] = s1;
  sh[2][threadIdx.y][threadIdx.x] = s2;
  __syncthreads();
  if (threadIdx.y < 3 && c < C) {
    const int k = threadIdx.y;
    A t = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) t += sh[k][j][threadIdx.x];
    static_cast<A*>(p.workspace)[(k * chunks + chunk) * C + c] = t;
  }
}

template <class A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// NCHW: CTA = one channel x a range of images; each (n, c) plane is contiguous.
template <class S>
__global__ void __launch_bounds__(kElementwiseThreads)
    block_end_bwd_nchw(BlockEndBwdParams p, int64_t chunks, int64_t planes_per_chunk) {
  using A = typename Cvt<S>::acc;
  const int64_t C = p.L.C, inner = p.L.inner;
  const int64_t c = blockIdx.y;
  const int64_t chunk = blockIdx.x;
  const int64_t o0 = chunk * planes_per_chunk;
  const int64_t total = (min(p.L.outer, o0 + planes_per_chunk) - o0) * inner;
  const A m = static_cast<const A*>(p.mean)[c];
  const A md = p.y_d ? static_cast<const A*>(p.mean_d)[c] : A(0);
  const BwdElem<S> elem{p};
  A s[3] = {0, 0, 0};
  for (int64_t j = threadIdx.x; j < total; j += blockDim.x) {
    const int64_t o = o0 + j / inner;
    elem((o * C + c) * inner + j % inner, m, md, s[0], s[1], s[2]);
  }
  FR_SHARED(A, sh, [3][8]);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    const A w = warp_sum(s[k]);
    if (lane == 0) sh[k][warp] = w;
  }
  __syncthreads();
  if (threadIdx.x < 3) {
    const int k = threadIdx.x;
    A t = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) t += sh[k][j];
    static_cast<A*>(p.workspace)[(k * chunks + chunk) * C + c] = t;
  }
}

// The per-CTA partials [3][chunks][C] of each channel, merged by cuda/merge.cuh in one
// level (chunks is bounded by block_end_bwd_chunks), in double; then invstd is applied.
template <class A>
struct BlockEndBwdPartials {
  const A* ws;
  int64_t chunks, C;
  bool projection;
  __device__ Sums<3> operator()(int64_t ch, int64_t c) const {
    const A d = projection ? ws[(2 * chunks + ch) * C + c] : A(0);
    return Sums<3>{{double(ws[ch * C + c]), double(ws[(chunks + ch) * C + c]), double(d)}};
  }
};
template <class A>
struct StoreBlockEndBwdSums {
  BlockEndBwdParams p;
  __device__ void operator()(int64_t, int64_t c, const Sums<3>& t) const {
    static_cast<A*>(p.sum_dz)[c] = A(t.v[0]);
    static_cast<A*>(p.sum_dz_xhat)[c] = A(t.v[1] * double(static_cast<const A*>(p.invstd)[c]));
    if (p.y_d)
      static_cast<A*>(p.sum_dz_xhat_d)[c] =
          A(t.v[2] * double(static_cast<const A*>(p.invstd_d)[c]));
  }
};

template <class S>
cudaError_t block_end_typed(const BlockEndParams& p, DType data, cudaStream_t stream) {
  auto aligned = [](const void* q) { return reinterpret_cast<uintptr_t>(q) % 16 == 0; };
  const bool vec = aligned(p.y) && aligned(p.residual) && aligned(p.out);
  const OpLaunchPlan plan = block_end_plan(p.L, data, vec, p.target);
  if (plan.launches.empty()) return cudaSuccess;  // no elements
  constexpr int kVec = 16 / sizeof(S);
  const KernelLaunch& l = plan.launches[0];
  if (l.kernel == Kernel::kBlockEndVec)
    FR_LAUNCH_AS(l, stream, block_end_kernel<S, kVec>)(p);
  else
    FR_LAUNCH_AS(l, stream, block_end_kernel<S, 1>)(p);
  return cudaGetLastError();
}

template <class S>
cudaError_t block_end_bwd_typed(const BlockEndBwdParams& p, DType data, cudaStream_t stream) {
  using A = typename Cvt<S>::acc;
  const OpLaunchPlan plan = block_end_bwd_plan(p.L, data, p.y_d != nullptr, p.target);
  if (plan.launches.empty()) return cudaSuccess;
  const KernelLaunch& sums = plan.launches[0];
  const int64_t chunks = sums.grid.x;
  if (sums.kernel == Kernel::kBlockEndBwdNhwc)
    FR_LAUNCH_AS(sums, stream, block_end_bwd_nhwc<S>)(p, chunks, sums.chunk);
  else
    FR_LAUNCH_AS(sums, stream, block_end_bwd_nchw<S>)(p, chunks, sums.chunk);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  return merge_partials<Sums<3>>(
      BlockEndBwdPartials<A>{static_cast<const A*>(p.workspace), chunks, p.L.C, p.y_d != nullptr},
      StoreBlockEndBwdSums<A>{p}, chunks, p.L.C, plan, 1, nullptr, stream);
}

}  // namespace

cudaError_t launch_bn_finalize(const BnFinalizeParams& p, DType stat, cudaStream_t stream) {
  const OpLaunchPlan plan = bn_finalize_plan(p.C, stat, p.target);
  if (stat == DType::kDouble)
    FR_LAUNCH_AS(plan.launches[0], stream, bn_finalize_kernel<double>)(p);
  else
    FR_LAUNCH_AS(plan.launches[0], stream, bn_finalize_kernel<float>)(p);
  return cudaGetLastError();
}

cudaError_t launch_block_end(const BlockEndParams& p, DType data, cudaStream_t stream) {
  switch (data) {
    case DType::kFloat: return block_end_typed<float>(p, data, stream);
    case DType::kDouble: return block_end_typed<double>(p, data, stream);
    case DType::kHalf: return block_end_typed<__half>(p, data, stream);
    case DType::kBFloat16: return block_end_typed<__nv_bfloat16>(p, data, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_block_end_bwd(const BlockEndBwdParams& p, DType data, cudaStream_t stream) {
  switch (data) {
    case DType::kFloat: return block_end_bwd_typed<float>(p, data, stream);
    case DType::kDouble: return block_end_bwd_typed<double>(p, data, stream);
    case DType::kHalf: return block_end_bwd_typed<__half>(p, data, stream);
    case DType::kBFloat16: return block_end_bwd_typed<__nv_bfloat16>(p, data, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fr::cuda
