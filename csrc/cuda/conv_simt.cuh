// The SIMT conv GEMM (fp32, and the backward of channel counts the tensor cores cannot
// take) and its per-op operand loaders. CUDA headers and csrc/common only (docs/design.md §4).
#pragma once

#include "cuda/conv_common.cuh"

namespace fr::cuda {
namespace {

// ================================================================ operand loaders (SIMT path)
// at(z): the loader bound to grid slice z, slice() its rows and reduction range (GemmSlice).
// A loader: row(m) caches the per-row decode; a(row, k) gives the fused, rounded operand.
// B loader: the same for GEMM columns. Out-of-range rows/columns/k give 0.

template <class S>
struct FwdOperands {
  ConvFwdParams p;  // by value: these functors are kernel arguments
  __device__ FwdOperands at(int64_t) const { return *this; }
  __device__ GemmSlice slice() const { return fwd_slice(p.s); }
  struct Row {
    int64_t n, p, q;
    bool ok;
  };
  __device__ Row row_a(int64_t m) const {
    Row r{0, 0, 0, m < fwd_gemm_m(p.s)};
    if (r.ok) decode_m(p.s, m, &r.n, &r.p, &r.q);
    return r;
  }
  __device__ float a(const Row& r, int64_t k) const {
    if (!r.ok || k >= fwd_gemm_k(p.s)) return 0.f;
    const S* x = static_cast<const S*>(p.x);
    const float* sc = static_cast<const float*>(p.in_scale);
    const float* sh = static_cast<const float*>(p.in_shift);
    return fwd_a_elem<float>(p.s, r.n, r.p, r.q, k, [&](int64_t off, int64_t c) {
      return round_to<S>(prologue<float>(Cvt<S>::to(x[off]), sc, sh, p.in_relu, c));
    });
  }
  __device__ int64_t row_b(int64_t n) const { return n < p.s.K ? n : -1; }
  __device__ float b(int64_t n, int64_t k) const {
    const int64_t kd = fwd_gemm_k(p.s);
    if (n < 0 || k >= kd) return 0.f;
    return Cvt<S>::to(static_cast<const S*>(p.w)[n * kd + k]);
  }
};

template <class S>
struct DgradOperands {
  ConvDgradParams p;
  DgradPhase f;  // the stride phase of the slice
  __device__ DgradOperands at(int64_t z) const { return {p, dgrad_phase(p.s, z)}; }
  __device__ GemmSlice slice() const { return dgrad_slice(p.s, f); }
  struct Row {
    int64_t n, i, j;  // the phase row
    bool ok;
  };
  __device__ Row row_a(int64_t m) const {
    Row r{0, 0, 0, m < dgrad_gemm_m(p.s, f)};
    if (r.ok) decode_phase_row(f, m, &r.n, &r.i, &r.j);
    return r;
  }
  __device__ float a(const Row& r, int64_t k) const {
    if (!r.ok || k >= dgrad_gemm_k(p.s, f)) return 0.f;
    const S* dz = static_cast<const S*>(p.dz);
    const S* y = static_cast<const S*>(p.y);
    const float* ca = static_cast<const float*>(p.a);
    const float* cb = static_cast<const float*>(p.b);
    const float* cc = static_cast<const float*>(p.c);
    return dgrad_a_elem<float>(p.s, f, r.n, r.i, r.j, k, [&](int64_t off, int64_t ko) {
      return round_to<S>(
          bn_bwd_apply<float>(Cvt<S>::to(dz[off]), Cvt<S>::to(y[off]), ca[ko], cb[ko], cc[ko]));
    });
  }
  __device__ int64_t row_b(int64_t c) const { return c < p.s.C ? c : -1; }
  __device__ float b(int64_t c, int64_t k) const {
    if (c < 0 || k >= dgrad_gemm_k(p.s, f)) return 0.f;
    return Cvt<S>::to(static_cast<const S*>(p.w)[dgrad_b_offset(p.s, f, c, k)]);
  }
};

template <class S>
struct WgradOperands {
  ConvWgradParams p;
  int64_t z;  // the split-K range of the slice
  __device__ WgradOperands at(int64_t zz) const { return {p, zz}; }
  __device__ GemmSlice slice() const { return wgrad_slice(p.s, p.kchunk, z); }
  using Row = int64_t;  // output channel, -1 when out of range
  __device__ Row row_a(int64_t ko) const { return ko < p.s.K ? ko : -1; }
  __device__ float a(Row ko, int64_t i) const {  // dy at output pixel i, channel ko
    if (ko < 0 || i >= fwd_gemm_m(p.s)) return 0.f;
    const int64_t off = i * p.s.K + ko;
    return round_to<S>(bn_bwd_apply<float>(
        Cvt<S>::to(static_cast<const S*>(p.dz)[off]), Cvt<S>::to(static_cast<const S*>(p.y)[off]),
        static_cast<const float*>(p.a)[ko], static_cast<const float*>(p.b)[ko],
        static_cast<const float*>(p.c)[ko]));
  }
  __device__ int64_t row_b(int64_t j) const { return j < fwd_gemm_k(p.s) ? j : -1; }
  __device__ float b(int64_t j, int64_t i) const {  // activation of pixel i through tap j
    if (j < 0 || i >= fwd_gemm_m(p.s)) return 0.f;
    const S* x = static_cast<const S*>(p.x);
    const float* sc = static_cast<const float*>(p.in_scale);
    const float* sh = static_cast<const float*>(p.in_shift);
    return wgrad_b_elem<float>(p.s, j, i, [&](int64_t off, int64_t c) {
      return round_to<S>(prologue<float>(Cvt<S>::to(x[off]), sc, sh, p.in_relu, c));
    });
  }
};

// ================================================================ SIMT tiled GEMM
// 256 threads, 64x64 tile, BK=16, 4x4 outputs per thread, fp32 accumulate. CTA (x, y, z)
// computes rows [64x, 64x+64) x columns [64y, 64y+64) of grid slice z (common/igemm.h
// GemmSlice) over the slice's reduction range, then runs the op's epilogue.
constexpr int SIMT_THREADS = kSimtThreads;  // cuda/launch_plan.h
constexpr int SIMT_BK = kSimtBK;

template <class Ops, class Epi>
__global__ void __launch_bounds__(SIMT_THREADS) simt_conv_kernel(Ops ops_all, Epi epi) {
  FR_SHARED(float, As, [SIMT_BK][BM]);
  FR_SHARED(float, Bs, [SIMT_BK][BN]);
  FR_SHARED(float, Cs, [BM * LDC]);
  const int tid = threadIdx.x;
  const int64_t m0 = int64_t(blockIdx.x) * BM, n0 = int64_t(blockIdx.y) * BN;
  const Ops ops = ops_all.at(blockIdx.z);
  const GemmSlice sl = ops.slice();
  const int64_t k_begin = sl.k_begin, k_end = sl.k_end;
  // Loader mapping: one tile row per 4 threads, 4 consecutive k each (rows decoded once).
  const int lrow = tid / 4, lk = (tid % 4) * 4;
  const auto arow = ops.row_a(m0 + lrow);
  const auto brow = ops.row_b(n0 + lrow);
  const int ty = tid / 16, tx = tid % 16;  // compute mapping: rows ty+16i, cols tx+16j
  float acc[4][4] = {};
  for (int64_t k0 = k_begin; k0 < k_end; k0 += SIMT_BK) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t k = k0 + lk + e;
      As[lk + e][lrow] = k < k_end ? ops.a(arow, k) : 0.f;
      Bs[lk + e][lrow] = k < k_end ? ops.b(brow, k) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < SIMT_BK; ++kk) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = Bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) Cs[(ty + 16 * i) * LDC + tx + 16 * j] = acc[i][j];
  __syncthreads();
  epi(Cs, m0, n0);
}

}  // namespace
}  // namespace fr::cuda
