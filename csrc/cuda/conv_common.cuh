// The CUDA conv kernels (NHWC implicit GEMM, groups == 1): what the three ops share.
// One translation unit per op (conv_fwd.cu, conv_dgrad.cu, conv_wgrad.cu) includes the
// epilogues (conv_epilogues.cuh), the SIMT GEMM and its loaders (conv_simt.cuh), and the
// tensor-core GEMM (conv_tc.cuh) with its operand policies (conv_tc_operands.cuh).
//
//
// Checked without a GPU: nvcc compiles it, ptxas reports no spills and the SASS of the 16-bit
// kernels contains HMMA (tests/test_cuda_build.py), the CPU twin (cpu/conv_igemm_cpu.cpp) checks
// the same index/prologue/padding/epilogue/stats math, and the kernels themselves run on the
// CUDA execution emulator (cuda/emu, tests/test_cuda_emu*.py).
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
// CUDA headers and csrc/common only (docs/design.md §4).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/fusion.h"
#include "common/igemm.h"
#include "common/stats.h"
#include "cuda/hooks.h"
#include "cuda/kernels.h"
#include "cuda/merge.cuh"

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

// ================================================================ launcher helpers
// 16-byte vector loads need 16-byte aligned bases (null: nothing is loaded). The choice
// depends on pointers, so a view at an odd storage offset takes the other kernel: the same
// values then give results that differ in rounding (each choice is deterministic).
inline bool aligned16(const void* q) { return reinterpret_cast<uintptr_t>(q) % 16 == 0; }

// A conv workspace's merge results (kernels.h merge_results_offset).
template <class Acc>
Acc* merge_results(void* workspace, int64_t partials) {
  return reinterpret_cast<Acc*>(static_cast<float*>(workspace) + merge_results_offset(partials));
}

}  // namespace
}  // namespace fr::cuda
