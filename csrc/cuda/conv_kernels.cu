// CUDA kernels of conv_fwd, conv_bwd_data, conv_bwd_weight (NHWC implicit GEMM, groups == 1).
//
// GPU-UNVERIFIED: written without a GPU. nvcc compiles it, ptxas reports no spills and the SASS
// of the 16-bit forward kernel contains HMMA (tests/test_cuda_build.py), and the CPU twin
// (cpu/conv_igemm_cpu.cpp) checks the same index/prologue/padding/epilogue/stats math against
// the reference; the kernels themselves have not been run.
//
// - fp16/bf16: one tensor-core implicit GEMM (mma.sync m16n8k16 fed by ldmatrix[.trans], a
//   3-stage pipeline: cp.async for weights, register-staged loads with the fused prologue /
//   BN-backward map for activations and gradients), templated on per-op operand policies
//   (FwdTc, DgradTc, WgradTc) and epilogues. dgrad needs C % 8 == K % 8 == 0, wgrad K % 8 == 0.
// - fp32, and the backward of other channel counts: one tiled SIMT GEMM templated on its
//   operand loaders and the same epilogues.
// - Grid z is a slice of the op's GEMM (common/igemm.h GemmSlice): wgrad's split-K ranges,
//   dgrad's stride phases (each a dense GEMM over only the taps that reach its pixels).
// - Statistics / sums: per-CTA partials in a workspace, merged per channel in parallel in a
//   fixed order (cuda/merge.cuh; deterministic, no atomics). wgrad: split-K partials, reduced
//   in a fixed order.
// CUDA headers and csrc/common only (DESIGN §4).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/fusion.h"
#include "common/igemm.h"
#include "common/stats.h"
#include "cuda/hooks.h"
#include "cuda/kernels.h"
#include "cuda/merge.cuh"
#include "cuda/mma_layout.h"

namespace fr::cuda {
namespace {

constexpr int BM = int(kConvTileM);
constexpr int BN = int(kConvTileN);
constexpr int LDC = BN + 1;  // fp32 accumulator tile in smem, padded against bank conflicts

// Explicit conversions: torch builds with __CUDA_NO_HALF_CONVERSIONS__ and friends.
template <class S>
struct Cvt;
template <>
struct Cvt<float> {
  static __device__ __forceinline__ float to(float v) { return v; }
  static __device__ __forceinline__ float from(float v) { return v; }
};
template <>
struct Cvt<double> {
  static __device__ __forceinline__ float to(double v) { return float(v); }
  static __device__ __forceinline__ double from(float v) { return double(v); }
};
template <>
struct Cvt<__half> {
  static __device__ __forceinline__ float to(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from(float v) { return __float2half_rn(v); }
};
template <>
struct Cvt<__nv_bfloat16> {
  static __device__ __forceinline__ float to(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from(float v) { return __float2bfloat16_rn(v); }
};
// Round to the data dtype and back: the GEMM operands are stored in the data dtype.
template <class S>
__device__ __forceinline__ float round_to(float v) {
  return Cvt<S>::to(Cvt<S>::from(v));
}

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
constexpr int SIMT_THREADS = 256;
constexpr int SIMT_BK = 16;

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

// ================================================================ tensor-core implicit GEMM
// 128 threads = 4 warps in 2x2, each a 32x32 warp tile of m16n8k16 MMAs (fp16/bf16 in, fp32
// accumulate); BK = 32 per stage, 3 stages. An operand tile sits in smem in one of two layouts
// (cuda/mma_layout.h, with every thread's slots and fragment addresses):
//   K-major  [64 rows][40]  -- reduction index contiguous, read by ldmatrix;
//   MN-major [32 k][72]     -- GEMM rows contiguous, read by ldmatrix.trans;
// whichever makes the global reads 16-byte vectors of NHWC / KRSC memory. Rows are padded
// (80 B / 144 B) so the 8 row addresses of an ldmatrix hit different banks.
//
// Each op supplies an operand policy (FwdTc, DgradTc, WgradTc below): at(z) / slice() bind it
// to grid slice z as the SIMT loaders do; begin() decodes what a
// thread keeps for the whole reduction; fetch(k0) issues the stage's global reads -- cp.async
// straight to smem for plain copies (weights), loads into registers for fused operands --
// before the MMAs of the current stage, so they are in flight meanwhile; stash() then applies
// the prologue / BN-backward map and rounding and stores to smem. Zeros fill padding, stride
// holes and everything past the tile or the CTA's reduction range, in both operands.
using mma::KMajorSlot;
using mma::MNMajorSlot;
constexpr int TC_THREADS = mma::kThreads;
constexpr int TC_BK = mma::kBK;
constexpr int TC_STAGES = 3;
constexpr int TC_TILE_ELEMS = mma::kStageElems;
constexpr int TC_PIPE_BYTES = 2 * TC_STAGES * TC_TILE_ELEMS * 2;
constexpr int TC_C_BYTES = BM * LDC * 4;
constexpr int TC_SMEM_BYTES = TC_PIPE_BYTES > TC_C_BYTES ? TC_PIPE_BYTES : TC_C_BYTES;
static_assert(BM == mma::kTile && BN == mma::kTile, "the tensor-core tile is the conv tile");

#if defined(FR_CUDA_EMULATOR)
// The emulator executes each instruction per the PTX ISA, checking alignment and address
// spaces (cuda/emu/README.md).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes,
                                           fr::emu::Site site = fr::emu::Site::current()) {
  fr::emu::cp_async(dst, src, src_bytes, site);
}
__device__ __forceinline__ void cp_async_commit() { fr::emu::cp_async_commit(); }
template <int N>
__device__ __forceinline__ void cp_async_wait(fr::emu::Site site = fr::emu::Site::current()) {
  fr::emu::cp_async_wait(N, site);
}
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* p,
                                            fr::emu::Site site = fr::emu::Site::current()) {
  fr::emu::ldmatrix_x4(r, p, false, site);
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], const void* p,
                                                  fr::emu::Site site = fr::emu::Site::current()) {
  fr::emu::ldmatrix_x4(r, p, true, site);
}
template <class S>
__device__ __forceinline__ void mma16816(float (&d)[4], const unsigned (&a)[4], unsigned b0,
                                         unsigned b1,
                                         fr::emu::Site site = fr::emu::Site::current()) {
  constexpr auto t = std::is_same_v<S, __half> ? fr::emu::MmaType::kF16 : fr::emu::MmaType::kBF16;
  fr::emu::mma_m16n8k16(t, d, a, b0, b1, site);
}
#else
__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// 16-byte async copy; src_bytes = 0 zero-fills the destination (out-of-range tiles).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)),
               "l"(src), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p))
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p))
               : "memory");
}

template <class S>
__device__ __forceinline__ void mma16816(float (&d)[4], const unsigned (&a)[4], unsigned b0,
                                         unsigned b1);
template <>
__device__ __forceinline__ void mma16816<__half>(float (&d)[4], const unsigned (&a)[4],
                                                 unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&d)[4], const unsigned (&a)[4],
                                                        unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif  // FR_CUDA_EMULATOR

template <class S>
struct alignas(16) Vec8 {
  S v[8];
};
template <class S>
__device__ __forceinline__ Vec8<S> load8(const void* base, int64_t off) {
  return *reinterpret_cast<const Vec8<S>*>(static_cast<const S*>(base) + off);
}
template <class S>
__device__ __forceinline__ Vec8<S> zeros8() {
  Vec8<S> z;
#pragma unroll
  for (int e = 0; e < 8; ++e) z.v[e] = Cvt<S>::from(0.f);
  return z;
}
template <class S>
__device__ __forceinline__ void store8(S* dst, const Vec8<S>& v) {
  *reinterpret_cast<Vec8<S>*>(dst) = v;
}
// 8 per-channel floats from c (c % 8 == 0, the vector 16-byte aligned: the launchers check)
// in two 16-byte loads instead of eight.
struct Floats8 {
  float v[8];
};
__device__ __forceinline__ Floats8 load_floats8(const void* vec, int64_t c) {
  const float4* q = reinterpret_cast<const float4*>(static_cast<const float*>(vec) + c);
  const float4 lo = q[0], hi = q[1];
  return Floats8{{lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w}};
}

// 8 consecutive channels from c: prologue [relu](x*scale + shift), rounded to S.
template <class S>
__device__ __forceinline__ Vec8<S> prologue8(const Vec8<S>& x, const void* scale,
                                             const void* shift, bool relu, int64_t c) {
  Vec8<S> o;
  if (scale) {
    const Floats8 sc = load_floats8(scale, c), sh = load_floats8(shift, c);
#pragma unroll
    for (int e = 0; e < 8; ++e)  // channel e of the 8 loaded
      o.v[e] = Cvt<S>::from(prologue<float>(Cvt<S>::to(x.v[e]), sc.v, sh.v, relu, e));
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e)
      o.v[e] = Cvt<S>::from(prologue<float>(Cvt<S>::to(x.v[e]), nullptr, nullptr, relu, 0));
  }
  return o;
}
// 8 consecutive output channels from k: dy = a*dz + b*y + c, rounded to S.
template <class S>
__device__ __forceinline__ Vec8<S> bn_bwd8(const Vec8<S>& dz, const Vec8<S>& y, const void* a,
                                           const void* b, const void* c, int64_t k) {
  const Floats8 ca = load_floats8(a, k), cb = load_floats8(b, k), cc = load_floats8(c, k);
  Vec8<S> o;
#pragma unroll
  for (int e = 0; e < 8; ++e)
    o.v[e] = Cvt<S>::from(
        bn_bwd_apply<float>(Cvt<S>::to(dz.v[e]), Cvt<S>::to(y.v[e]), ca.v[e], cb.v[e], cc.v[e]));
  return o;
}

// A K-major copy of rows [r0, r0+64) x k [k0, k0+32) from src[row * ld + k] (rows < rows_total,
// k < k_end). vec: ld % 8 == 0 and src 16-byte aligned -> cp.async (zero-fill outside).
template <class S>
__device__ __forceinline__ void tc_copy_kmajor(const S* src, int64_t rows_total, int64_t ld,
                                               int64_t r0, int64_t k0, int64_t k_end, S* dst,
                                               bool vec) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    int row, kc;
    mma::kmajor_copy_slot(threadIdx.x, i, &row, &kc);
    const int64_t r = r0 + row, k = k0 + kc;
    S* d = dst + mma::kmajor_at(row, kc);
    if (vec) {
      const bool ok = r < rows_total && k < k_end;
      cp_async16(d, ok ? src + r * ld + k : src, ok ? 16 : 0);
    } else {
      Vec8<S> v;
#pragma unroll
      for (int e = 0; e < 8; ++e)
        v.v[e] = (r < rows_total && k + e < k_end) ? src[r * ld + k + e] : Cvt<S>::from(0.f);
      store8(d, v);
    }
  }
}

// conv_fwd: A(m, k) = prologue(x) at output pixel m through tap/channel k (K-major, fused),
// B(n, k) = w[n][k] (K-major copy). vec_a: C % 8 == 0 and x 16-byte aligned (a chunk is one
// 16-byte load inside one tap); else element loads (the stem's C = 3).
template <class S>
struct FwdTc {
  static constexpr bool kTransA = false, kTransB = false;
  ConvFwdParams p;
  bool vec_a, vec_b;
  __device__ FwdTc at(int64_t) const { return *this; }
  __device__ GemmSlice slice() const { return fwd_slice(p.s); }
  struct State {
    KMajorSlot slot;
    int64_t n0, n, pp, q;
    bool row_ok;
    Vec8<S> x[2];
    int64_t chan[2];  // channel of chunk h's first element; -1: zeros
  };
  __device__ State begin(int64_t m0, int64_t n0) const {
    State st{};
    st.slot = KMajorSlot::of(threadIdx.x);
    st.n0 = n0;
    st.row_ok = m0 + st.slot.row < fwd_gemm_m(p.s);
    if (st.row_ok) decode_m(p.s, m0 + st.slot.row, &st.n, &st.pp, &st.q);
    return st;
  }
  __device__ void fetch(State& st, S* As, S* Bs, int64_t k0, int64_t k_end) const {
    tc_copy_kmajor<S>(static_cast<const S*>(p.w), p.s.K, fwd_gemm_k(p.s), st.n0, k0, k_end, Bs,
                      vec_b);
    if (!vec_a) return;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t k = k0 + st.slot.kc + 8 * h;
      st.chan[h] = -1;
      if (!st.row_ok || k >= k_end) continue;
      int64_t c;
      const int64_t off = fwd_a_offset(p.s, st.n, st.pp, st.q, k, &c);
      if (off < 0) continue;  // padding: zero after the prologue
      st.x[h] = load8<S>(p.x, off);
      st.chan[h] = c;
    }
  }
  __device__ void stash(const State& st, S* As, S*, int64_t k0, int64_t k_end) const {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      Vec8<S> v;
      if (vec_a) {
        v = st.chan[h] < 0 ? zeros8<S>()
                           : prologue8<S>(st.x[h], p.in_scale, p.in_shift, p.in_relu, st.chan[h]);
      } else {
        const S* x = static_cast<const S*>(p.x);
        const float* sc = static_cast<const float*>(p.in_scale);
        const float* sh = static_cast<const float*>(p.in_shift);
        auto act = [&](int64_t off, int64_t c) {
          return round_to<S>(prologue<float>(Cvt<S>::to(x[off]), sc, sh, p.in_relu, c));
        };
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const int64_t k = k0 + st.slot.kc + 8 * h + e;
          v.v[e] = Cvt<S>::from(
              st.row_ok && k < k_end ? fwd_a_elem<float>(p.s, st.n, st.pp, st.q, k, act) : 0.f);
        }
      }
      store8(As + st.slot.at(h), v);
    }
  }
};

// conv_bwd_data, per stride phase: A(m, k) = dy at the output pixel that the phase's input
// pixel m reaches through its tap k (K-major, fused BN-backward map; 0 outside the image),
// B(c, k) = w[ko][r][s][c] (MN-major copy: 8 input channels are contiguous in KRSC). Needs
// K % 8 == 0, C % 8 == 0 and 16-byte aligned dz, y, w (else the launcher takes SIMT).
template <class S>
struct DgradTc {
  static constexpr bool kTransA = false, kTransB = true;
  ConvDgradParams p;
  DgradPhase f;
  __device__ DgradTc at(int64_t z) const { return {p, dgrad_phase(p.s, z)}; }
  __device__ GemmSlice slice() const { return dgrad_slice(p.s, f); }
  struct State {
    KMajorSlot a;
    MNMajorSlot b;
    int64_t cn, n, i, j;  // the thread's B channels (cn..cn+7); its A row (phase row)
    bool row_ok;
    Vec8<S> dz[2], y[2];
    int64_t chan[2];  // output channel of A chunk h; -1: zeros
  };
  __device__ State begin(int64_t m0, int64_t n0) const {
    State st{};
    st.a = KMajorSlot::of(threadIdx.x);
    st.b = MNMajorSlot::of(threadIdx.x);
    st.cn = n0 + st.b.rc;
    st.row_ok = m0 + st.a.row < dgrad_gemm_m(p.s, f);
    if (st.row_ok) decode_phase_row(f, m0 + st.a.row, &st.n, &st.i, &st.j);
    return st;
  }
  __device__ void fetch(State& st, S* As, S* Bs, int64_t k0, int64_t k_end) const {
    const S* w = static_cast<const S*>(p.w);
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int64_t k = k0 + st.b.kr + 16 * u;
      const bool ok = k < k_end && st.cn < p.s.C;
      const int64_t off = ok ? dgrad_b_offset(p.s, f, st.cn, k) : 0;
      cp_async16(Bs + st.b.at(u), w + off, ok ? 16 : 0);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t k = k0 + st.a.kc + 8 * h;
      st.chan[h] = -1;
      if (!st.row_ok || k >= k_end) continue;
      int64_t ko;
      const int64_t off = dgrad_a_offset(p.s, f, st.n, st.i, st.j, k, &ko);
      if (off < 0) continue;  // outside the image: zero after the BN-backward map
      st.dz[h] = load8<S>(p.dz, off);
      st.y[h] = load8<S>(p.y, off);
      st.chan[h] = ko;
    }
  }
  __device__ void stash(const State& st, S* As, S*, int64_t, int64_t) const {
#pragma unroll
    for (int h = 0; h < 2; ++h)
      store8(As + st.a.at(h), st.chan[h] < 0 ? zeros8<S>()
                                             : bn_bwd8<S>(st.dz[h], st.y[h], p.a, p.b, p.c,
                                                          st.chan[h]));
  }
};

// conv_bwd_weight: A(ko, i) = dy at output pixel i, channel ko (MN-major, fused), B(j, i) =
// the forward activation of pixel i through tap/channel j (MN-major, fused prologue; 0 on
// padding). Needs K % 8 == 0 and 16-byte aligned dz, y. kVecB: C % 8 == 0 and x 16-byte
// aligned; else element loads for B (the stem's C = 3), in their own instantiation so the
// common path keeps its registers.
template <class S, bool kVecB>
struct WgradTc {
  static constexpr bool kTransA = true, kTransB = true;
  ConvWgradParams p;
  int64_t z;
  __device__ WgradTc at(int64_t zz) const { return {p, zz}; }
  __device__ GemmSlice slice() const { return wgrad_slice(p.s, p.kchunk, z); }
  struct State {
    MNMajorSlot slot;
    int64_t ko;         // the thread's A channels ko..ko+7
    int64_t j;          // the thread's B columns j..j+7 ...
    int64_t r, t, c;    // ... vec_b: tap (r, t), channels c..c+7
    bool a_ok, b_ok;
    Vec8<S> dz[2], y[2], x[2];
    bool dy_ok[2], x_ok[2];
  };
  __device__ State begin(int64_t m0, int64_t n0) const {
    State st{};
    st.slot = MNMajorSlot::of(threadIdx.x);
    st.ko = m0 + st.slot.rc;
    st.a_ok = st.ko < p.s.K;
    st.j = n0 + st.slot.rc;
    st.b_ok = st.j < fwd_gemm_k(p.s);
    // wgrad_b_offset, with the column's tap decoded once: it is the same every stage.
    if (st.b_ok && kVecB) decode_k(p.s, st.j, p.s.C, &st.r, &st.t, &st.c);
    return st;
  }
  __device__ void fetch(State& st, S*, S*, int64_t k0, int64_t k_end) const {
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int64_t i = k0 + st.slot.kr + 16 * u;  // output pixel
      st.dy_ok[u] = st.a_ok && i < k_end;
      if (st.dy_ok[u]) {
        st.dz[u] = load8<S>(p.dz, i * p.s.K + st.ko);
        st.y[u] = load8<S>(p.y, i * p.s.K + st.ko);
      }
      st.x_ok[u] = false;
      if (!kVecB || !st.b_ok || i >= k_end) continue;
      int64_t n, pp, q;
      decode_m(p.s, i, &n, &pp, &q);
      const int64_t off = fwd_input_offset(p.s, n, pp, q, st.r, st.t, st.c);
      if (off < 0) continue;
      st.x[u] = load8<S>(p.x, off);
      st.x_ok[u] = true;
    }
  }
  __device__ void stash(const State& st, S* As, S* Bs, int64_t k0, int64_t k_end) const {
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      store8(As + st.slot.at(u),
             st.dy_ok[u] ? bn_bwd8<S>(st.dz[u], st.y[u], p.a, p.b, p.c, st.ko) : zeros8<S>());
      Vec8<S> b;
      if constexpr (kVecB)
        b = st.x_ok[u] ? prologue8<S>(st.x[u], p.in_scale, p.in_shift, p.in_relu, st.c)
                       : zeros8<S>();
      else
        b = b_elements(st, k0 + st.slot.kr + 16 * u, k_end);
      store8(Bs + st.slot.at(u), b);
    }
  }
  // B's 8 columns j.. at pixel i element by element (wgrad_b_elem), for C % 8 != 0.
  __device__ Vec8<S> b_elements(const State& st, int64_t i, int64_t k_end) const {
    const S* x = static_cast<const S*>(p.x);
    const float* sc = static_cast<const float*>(p.in_scale);
    const float* sh = static_cast<const float*>(p.in_shift);
    auto act = [&](int64_t off, int64_t c) {
      return round_to<S>(prologue<float>(Cvt<S>::to(x[off]), sc, sh, p.in_relu, c));
    };
    Vec8<S> v;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const bool ok = i < k_end && st.j + e < fwd_gemm_k(p.s);
      v.v[e] = Cvt<S>::from(ok ? wgrad_b_elem<float>(p.s, st.j + e, i, act) : 0.f);
    }
    return v;
  }
};

// One BK=32 stage of MMAs for this warp's 32x32 tile (fragment addresses: mma_layout.h).
template <class S, bool kTransA, bool kTransB>
__device__ __forceinline__ void tc_compute(const S* As, const S* Bs, float (&acc)[2][4][4],
                                           int warp, int lane) {
#pragma unroll
  for (int ks = 0; ks < TC_BK; ks += 16) {
    unsigned a[2][4], b[2][4];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
      const S* at = As + mma::a_frag_addr(kTransA, lane, mma::warp_row(warp) + mi * 16, ks);
      if constexpr (kTransA)
        ldmatrix_x4_trans(a[mi], at);
      else
        ldmatrix_x4(a[mi], at);
    }
#pragma unroll
    for (int nj = 0; nj < 2; ++nj) {
      const S* at = Bs + mma::b_frag_addr(kTransB, lane, mma::warp_col(warp) + nj * 16, ks);
      if constexpr (kTransB)
        ldmatrix_x4_trans(b[nj], at);
      else
        ldmatrix_x4(b[nj], at);
    }
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int ni = 0; ni < 4; ++ni)
        mma16816<S>(acc[mi][ni], a[mi], b[ni / 2][(ni % 2) * 2], b[ni / 2][(ni % 2) * 2 + 1]);
  }
}

// The tensor-core GEMM: CTA (x, y, z) computes rows [64x, 64x+64) x columns [64y, 64y+64) of
// grid slice z (common/igemm.h GemmSlice: wgrad's split ranges start at multiples of TC_BK)
// over the slice's reduction range, then runs the op's epilogue on the fp32 tile in smem. At
// most 168 registers, so at least 3 CTAs (12 warps) share an SM and hide each other's loads
// (4 would cap registers at 128: the bf16 dgrad/wgrad then spill).
template <class S, class Ops, class Epi>
__global__ void __launch_bounds__(TC_THREADS, 3)
    tc_conv_kernel(Ops ops_all, Epi epi) {
  FR_SHARED(__align__(16) unsigned char, smem, [TC_SMEM_BYTES]);
  S* const As = reinterpret_cast<S*>(smem);
  S* const Bs = As + TC_STAGES * TC_TILE_ELEMS;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t m0 = int64_t(blockIdx.x) * BM, n0 = int64_t(blockIdx.y) * BN;
  const Ops ops = ops_all.at(blockIdx.z);
  const GemmSlice sl = ops.slice();
  const int64_t k_begin = sl.k_begin, k_end = sl.k_end;
  const int64_t ktiles = k_end > k_begin ? (k_end - k_begin + TC_BK - 1) / TC_BK : 0;
  auto st = ops.begin(m0, n0);
  auto a_stage = [&](int64_t kt) { return As + int(kt % TC_STAGES) * TC_TILE_ELEMS; };
  auto b_stage = [&](int64_t kt) { return Bs + int(kt % TC_STAGES) * TC_TILE_ELEMS; };

  float acc[2][4][4] = {};
#pragma unroll
  for (int s = 0; s < TC_STAGES - 1; ++s) {
    if (s < ktiles) {
      ops.fetch(st, a_stage(s), b_stage(s), k_begin + s * TC_BK, k_end);
      ops.stash(st, a_stage(s), b_stage(s), k_begin + s * TC_BK, k_end);
    }
    cp_async_commit();  // always commit: keeps the group count in step with the stages
  }
  for (int64_t kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<TC_STAGES - 2>();  // stage kt has landed (for this thread) ...
    __syncthreads();                 // ... for all threads; stage kt-1 is free again
    const int64_t next = kt + TC_STAGES - 1, k_next = k_begin + next * TC_BK;
    if (next < ktiles) ops.fetch(st, a_stage(next), b_stage(next), k_next, k_end);
    tc_compute<S, Ops::kTransA, Ops::kTransB>(a_stage(kt), b_stage(kt), acc, warp, lane);
    if (next < ktiles) ops.stash(st, a_stage(next), b_stage(next), k_next, k_end);
    cp_async_commit();
  }
  cp_async_wait<0>();
  __syncthreads();  // the accumulator tile reuses the pipeline's smem

  float* Cs = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int row = mma::warp_row(warp) + mi * 16 + mma::acc_row(lane, e);
        const int col = mma::warp_col(warp) + ni * 8 + mma::acc_col(lane, e);
        Cs[row * LDC + col] = acc[mi][ni][e];
      }
  __syncthreads();
  epi(Cs, m0, n0);
}

// ================================================================ fixed-order reductions
// Tile partials -> per-channel results through cuda/merge.cuh (parallel, fixed order).

// conv_fwd's tile summaries; the tile mean pivot + offset is only exact in double.
struct FwdTileStats {
  const float* ws;
  int64_t plane, C;  // plane = tiles * C
  __device__ Welford<double> operator()(int64_t i, int64_t c) const {
    const int64_t at = i * C + c;
    Welford<double> w;
    w.count = ws[at];
    w.mean = double(ws[plane + at]) + double(ws[2 * plane + at]);
    w.m2 = ws[3 * plane + at];
    return w;
  }
};
struct StoreStats {
  float* mean;
  float* m2;
  __device__ void operator()(int64_t, int64_t c, const Welford<double>& w) const {
    mean[c] = float(w.mean);
    m2[c] = float(w.m2);
  }
};

// conv_bwd_data's tile sums of dx and dx*(prev_y - prev_mean).
struct DgradTileSums {
  const float* ws;
  int64_t plane, C;
  __device__ Sums<2> operator()(int64_t i, int64_t c) const {
    return Sums<2>{{double(ws[i * C + c]), double(ws[plane + i * C + c])}};
  }
};
struct StoreDgradSums {
  const float* invstd;
  float* sum_dx;
  float* sum_dx_xhat;
  __device__ void operator()(int64_t, int64_t c, const Sums<2>& t) const {
    sum_dx[c] = float(t.v[0]);
    sum_dx_xhat[c] = float(t.v[1] * double(invstd[c]));
  }
};

template <class Acc>
Acc* merge_results(void* workspace, int64_t partials) {
  return reinterpret_cast<Acc*>(static_cast<float*>(workspace) + merge_results_offset(partials));
}

// Per dw element: sum the split-K partials in split order, store in the weight dtype/format.
template <class O>
__global__ void __launch_bounds__(256)
    reduce_wgrad_kernel(const float* ws, int64_t splits, ConvShape s, bool krsc, O* dw) {
  const int64_t cols = s.R * s.S * s.C, total = s.K * cols;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  float acc = 0.f;
  for (int64_t z = 0; z < splits; ++z) acc += ws[z * total + i];
  dw[wgrad_out_offset(s, i / cols, i % cols, krsc)] = Cvt<O>::from(acc);
}

// ================================================================ launchers
unsigned blocks_for(int64_t n, int threads) { return unsigned((n + threads - 1) / threads); }
// 16-byte vector loads need 16-byte aligned bases (null: nothing is loaded). The choice
// depends on pointers, so a view at an odd storage offset takes the other kernel: the same
// values then give results that differ in rounding (each choice is deterministic).
bool aligned16(const void* q) { return reinterpret_cast<uintptr_t>(q) % 16 == 0; }
// The backward tensor-core kernels read 8 channels at a time of both C and K.
bool vec8_operands(const ConvShape& s) { return s.C % 8 == 0 && s.K % 8 == 0; }

template <class S>
cudaError_t conv_fwd_typed(const ConvFwdParams& p, cudaStream_t stream) {
  const int64_t M = fwd_gemm_m(p.s), kd = fwd_gemm_k(p.s);
  const dim3 grid(unsigned(conv_tiles(M, BM)), unsigned(conv_tiles(p.s.K, BN)));  // one slice
  if constexpr (sizeof(S) == 2) {
    const bool vec_a = p.s.C % 8 == 0 && aligned16(p.x) && aligned16(p.in_scale) &&
                       aligned16(p.in_shift);
    const bool vec_b = kd % 8 == 0 && aligned16(p.w);
    FR_LAUNCH(grid, TC_THREADS, 0, stream, tc_conv_kernel<S>)(FwdTc<S>{p, vec_a, vec_b},
                                                              FwdEpilogue<S>{p});
  } else {
    FR_LAUNCH(grid, SIMT_THREADS, 0, stream, simt_conv_kernel)(FwdOperands<S>{p},
                                                               FwdEpilogue<S>{p});
  }
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess || !p.stats) return e;
  const int64_t tiles = grid.x, K = p.s.K;
  return merge_partials(FwdTileStats{static_cast<const float*>(p.workspace), tiles * K, K},
                        StoreStats{static_cast<float*>(p.mean), static_cast<float*>(p.m2)},
                        tiles, K, merge_groups(tiles, K),
                        merge_results<Welford<double>>(p.workspace, 4 * tiles * K), stream);
}

template <class S>
cudaError_t conv_dgrad_typed(const ConvDgradParams& p, cudaStream_t stream) {
  // Slice z: stride phase z (common/igemm.h DgradPhase).
  const dim3 grid(unsigned(dgrad_row_tiles(p.s)), unsigned(conv_tiles(p.s.C, BN)),
                  unsigned(dgrad_phases(p.s)));
  bool on_tensor_cores = false;
  if constexpr (sizeof(S) == 2) {
    on_tensor_cores = vec8_operands(p.s) && aligned16(p.dz) && aligned16(p.y) &&
                      aligned16(p.w) && aligned16(p.a) && aligned16(p.b) && aligned16(p.c);
    if (on_tensor_cores)
      FR_LAUNCH(grid, TC_THREADS, 0, stream, tc_conv_kernel<S>)(DgradTc<S>{p, {}},
                                                                DgradEpilogue<S>{p});
  }
  if (!on_tensor_cores)
    FR_LAUNCH(grid, SIMT_THREADS, 0, stream, simt_conv_kernel)(DgradOperands<S>{p, {}},
                                                               DgradEpilogue<S>{p});
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess || !p.prev_y) return e;
  const int64_t tiles = dgrad_tiles(p.s), C = p.s.C;
  return merge_partials(
      DgradTileSums{static_cast<const float*>(p.workspace), tiles * C, C},
      StoreDgradSums{static_cast<const float*>(p.prev_invstd), static_cast<float*>(p.sum_dx),
                     static_cast<float*>(p.sum_dx_xhat)},
      tiles, C, merge_groups(tiles, C), merge_results<Sums<2>>(p.workspace, 2 * tiles * C),
      stream);
}

template <class S>
cudaError_t conv_wgrad_typed(const ConvWgradParams& p, DType out, cudaStream_t stream) {
  const int64_t cols = fwd_gemm_k(p.s);
  // Slice z: split z of the N*P*Q reduction (common/igemm.h wgrad_slice). Split boundaries on
  // multiples of both kernels' BK keep every split's stages full; splits past the end write
  // zero partials, still summed.
  static_assert(kConvTileK % TC_BK == 0 && kConvTileK % SIMT_BK == 0);
  const dim3 grid(unsigned(conv_tiles(p.s.K, BM)), unsigned(conv_tiles(cols, BN)),
                  unsigned(p.splits));
  bool on_tensor_cores = false;
  if constexpr (sizeof(S) == 2) {
    // dy in 16-byte vectors; the activations too when C % 8 == 0, else element by element.
    on_tensor_cores = p.s.K % 8 == 0 && aligned16(p.dz) && aligned16(p.y) && aligned16(p.a) &&
                      aligned16(p.b) && aligned16(p.c);
    const bool vec_b = p.s.C % 8 == 0 && aligned16(p.x) && aligned16(p.in_scale) &&
                       aligned16(p.in_shift);
    if (on_tensor_cores && vec_b)
      FR_LAUNCH(grid, TC_THREADS, 0, stream, tc_conv_kernel<S>)(WgradTc<S, true>{p, 0},
                                                                WgradEpilogue{p});
    else if (on_tensor_cores)
      FR_LAUNCH(grid, TC_THREADS, 0, stream, tc_conv_kernel<S>)(WgradTc<S, false>{p, 0},
                                                                WgradEpilogue{p});
  }
  if (!on_tensor_cores)
    FR_LAUNCH(grid, SIMT_THREADS, 0, stream, simt_conv_kernel)(WgradOperands<S>{p, 0},
                                                               WgradEpilogue{p});
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  const float* ws = static_cast<const float*>(p.workspace);
  const unsigned blocks = blocks_for(p.s.K * cols, 256);
  switch (out) {
    case DType::kFloat:
      FR_LAUNCH(blocks, 256, 0, stream, reduce_wgrad_kernel)(ws, p.splits, p.s, p.dw_krsc,
                                                             static_cast<float*>(p.dw));
      break;
    case DType::kDouble:
      FR_LAUNCH(blocks, 256, 0, stream, reduce_wgrad_kernel)(ws, p.splits, p.s, p.dw_krsc,
                                                             static_cast<double*>(p.dw));
      break;
    case DType::kHalf:
      FR_LAUNCH(blocks, 256, 0, stream, reduce_wgrad_kernel)(ws, p.splits, p.s, p.dw_krsc,
                                                             static_cast<__half*>(p.dw));
      break;
    case DType::kBFloat16:
      FR_LAUNCH(blocks, 256, 0, stream, reduce_wgrad_kernel)(ws, p.splits, p.s, p.dw_krsc,
                                                             static_cast<__nv_bfloat16*>(p.dw));
      break;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_conv_fwd(const ConvFwdParams& p, DType data, cudaStream_t stream) {
  switch (data) {
    case DType::kFloat: return conv_fwd_typed<float>(p, stream);
    case DType::kHalf: return conv_fwd_typed<__half>(p, stream);
    case DType::kBFloat16: return conv_fwd_typed<__nv_bfloat16>(p, stream);
    default: return cudaErrorInvalidValue;  // no float64 kernels
  }
}

cudaError_t launch_conv_dgrad(const ConvDgradParams& p, DType data, cudaStream_t stream) {
  switch (data) {
    case DType::kFloat: return conv_dgrad_typed<float>(p, stream);
    case DType::kHalf: return conv_dgrad_typed<__half>(p, stream);
    case DType::kBFloat16: return conv_dgrad_typed<__nv_bfloat16>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t launch_conv_wgrad(const ConvWgradParams& p, DType data, DType out,
                              cudaStream_t stream) {
  switch (data) {
    case DType::kFloat: return conv_wgrad_typed<float>(p, out, stream);
    case DType::kHalf: return conv_wgrad_typed<__half>(p, out, stream);
    case DType::kBFloat16: return conv_wgrad_typed<__nv_bfloat16>(p, out, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace fr::cuda
