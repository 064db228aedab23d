// The fused epilogues of the three conv ops, run on the fp32 accumulator tile in smem by
// both GEMMs (conv_simt.cuh, conv_tc.cuh). CUDA headers and csrc/common only (docs/design.md §4).
#pragma once

#include "cuda/conv_common.cuh"

namespace fr::cuda {
namespace {

// ================================================================ fused epilogues
// Each runs after the CTA's fp32 accumulator tile sits in smem (Cs[BM][LDC]), with all
// threads of the CTA; rows m0.., columns n0.. of grid slice blockIdx.z.

// conv_fwd: y = epilogue(acc) stored NHWC (y[m*K + n]); stats: per-column Welford of the
// tile's valid rows (two-pass over smem) -> workspace [count, pivot, mean - pivot, m2][mtiles][K].
template <class S>
struct FwdEpilogue {
  ConvFwdParams p;  // by value: these functors are kernel arguments
  __device__ void operator()(float* Cs, int64_t m0, int64_t n0) const {
    const int64_t M = fwd_gemm_m(p.s), Ncols = p.s.K;
    const float* os = static_cast<const float*>(p.out_scale);
    const float* ob = static_cast<const float*>(p.out_shift);
    const float* rs = static_cast<const float*>(p.res_scale);
    const float* rb = static_cast<const float*>(p.res_shift);
    const S* res = static_cast<const S*>(p.residual);
    S* y = static_cast<S*>(p.y);
    for (int idx = threadIdx.x; idx < BM * BN; idx += blockDim.x) {
      const int row = idx / BN, col = idx % BN;
      const int64_t m = m0 + row, n = n0 + col;
      if (m >= M || n >= Ncols) continue;
      const int64_t off = m * Ncols + n;
      const float r = res ? Cvt<S>::to(res[off]) : 0.f;
      y[off] = Cvt<S>::from(
          epilogue<float>(Cs[row * LDC + col], os, ob, res != nullptr, r, rs, rb, p.out_relu, n));
    }
    if (!p.stats) return;
    const int64_t mtiles = conv_tiles(M, BM);
    const int64_t rows = M - m0 < BM ? M - m0 : BM;
    float* ws = static_cast<float*>(p.workspace);
    for (int col = threadIdx.x; col < BN; col += blockDim.x) {
      const int64_t n = n0 + col;
      if (n >= Ncols) continue;
      // Deviations from a pivot (the tile's first value, exact): a float mean near |mean|
      // >> std would carry a rounding error comparable to std/1000 into every merge.
      const float pivot = Cs[col];
      const Welford<float> w =
          welford_run<float>([&](int64_t i) { return Cs[i * LDC + col] - pivot; }, rows);
      const int64_t at = (m0 / BM) * Ncols + n, plane = mtiles * Ncols;
      ws[at] = w.count;
      ws[plane + at] = pivot;
      ws[2 * plane + at] = w.mean;
      ws[3 * plane + at] = w.m2;
    }
  }
};

// conv_bwd_data: dx = acc (+ residual), ReLU-masked by prev_y*prev_scale + prev_shift, at
// the input pixels of the stride phase's rows; sums of dx and dx*(prev_y - prev_mean) per
// column -> workspace [2][tiles][C], tile z * dgrad_row_tiles + x.
template <class S>
struct DgradEpilogue {
  ConvDgradParams p;
  __device__ void operator()(float* Cs, int64_t m0, int64_t n0) const {
    const DgradPhase f = dgrad_phase(p.s, blockIdx.z);
    const int64_t M = dgrad_gemm_m(p.s, f), Ncols = p.s.C;
    FR_SHARED(int64_t, px, [BM]);  // the rows' input pixels (NHWC order of dx), decoded once
    for (int i = threadIdx.x; i < BM; i += blockDim.x) {
      int64_t n = 0, h = 0, w = 0;
      if (m0 + i < M) decode_in_pixel(p.s, f, m0 + i, &n, &h, &w);
      px[i] = (n * p.s.H + h) * p.s.W + w;
    }
    __syncthreads();
    const S* res = static_cast<const S*>(p.residual);
    const S* py = static_cast<const S*>(p.prev_y);
    const float* ps = static_cast<const float*>(p.prev_scale);
    const float* pb = static_cast<const float*>(p.prev_shift);
    S* dx = static_cast<S*>(p.dx);
    for (int idx = threadIdx.x; idx < BM * BN; idx += blockDim.x) {
      const int row = idx / BN, col = idx % BN;
      const int64_t m = m0 + row, n = n0 + col;
      if (m >= M || n >= Ncols) continue;
      const int64_t off = px[row] * Ncols + n;
      float g = Cs[row * LDC + col];
      if (res) g += Cvt<S>::to(res[off]);
      if (py) g = relu_bwd<float, float>(g, maybe_affine<float>(Cvt<S>::to(py[off]), ps, pb, n));
      dx[off] = Cvt<S>::from(g);
      Cs[row * LDC + col] = g;  // each element is owned by one thread: no race
    }
    if (!py) return;
    __syncthreads();
    const float* pm = static_cast<const float*>(p.prev_mean);
    const int64_t tiles = dgrad_tiles(p.s);
    const int64_t tile = blockIdx.z * dgrad_row_tiles(p.s) + m0 / BM;
    const int64_t rows = M - m0 < BM ? M - m0 : BM;  // <= 0: an empty tile, zero sums
    float* ws = static_cast<float*>(p.workspace);
    for (int col = threadIdx.x; col < BN; col += blockDim.x) {
      const int64_t n = n0 + col;
      if (n >= Ncols) continue;
      float s0 = 0.f, s1 = 0.f;
      for (int64_t i = 0; i < rows; ++i) {
        const float g = Cs[i * LDC + col];
        s0 += g;
        s1 += g * (Cvt<S>::to(py[px[i] * Ncols + n]) - pm[n]);
      }
      const int64_t at = tile * Ncols + n;
      ws[at] = s0;
      ws[tiles * Ncols + at] = s1;
    }
  }
};

// conv_bwd_weight: the split's fp32 partial dw tile -> workspace [splits][K][RSC].
struct WgradEpilogue {
  ConvWgradParams p;
  __device__ void operator()(float* Cs, int64_t m0, int64_t n0) const {
    const int64_t M = p.s.K, Ncols = fwd_gemm_k(p.s);
    float* ws = static_cast<float*>(p.workspace) + int64_t(blockIdx.z) * M * Ncols;
    for (int idx = threadIdx.x; idx < BM * BN; idx += blockDim.x) {
      const int row = idx / BN, col = idx % BN;
      const int64_t m = m0 + row, n = n0 + col;
      if (m < M && n < Ncols) ws[m * Ncols + n] = Cs[row * LDC + col];
    }
  }
};

}  // namespace
}  // namespace fr::cuda
