// The tensor-core conv GEMM (fp16/bf16: ldmatrix + mma.sync m16n8k16, a cp.async pipeline)
// and its primitives; the per-op operand policies are in conv_tc_operands.cuh.
// CUDA headers and csrc/common only (docs/design.md §4).
#pragma once

#include "cuda/conv_common.cuh"
#include "cuda/mma_layout.h"

namespace fr::cuda {
namespace {

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
constexpr int TC_THREADS = kTcThreads;  // cuda/launch_plan.h
constexpr int TC_BK = kTcBK;
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

}  // namespace
}  // namespace fr::cuda
