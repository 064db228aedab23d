// Interface between the CUDA kernels (.cu, CUDA headers only) and their launchers (.cpp, ATen):
// raw pointers and plain parameter structs, no torch types. Each launch_* executes its op's
// launch plan (cuda/launch_plan.h) for the device `target` (the launcher passes the real one).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/igemm.h"
#include "common/layout.h"
#include "cuda/launch_plan.h"

namespace fr::cuda {

// Per-channel vectors are in the statistics dtype (double for kDouble data, else float).
struct BnFinalizeParams {
  const void* mean;
  const void* m2;
  const void* weight;  // null: 1
  const void* bias;    // null: 0
  void* scale;
  void* shift;
  void* invstd;
  void* running_mean;  // updated in place when update
  void* running_var;
  int64_t* num_batches_tracked;  // may be null; incremented when update
  int64_t C;
  int64_t count;
  double momentum;
  bool has_momentum;  // false: cumulative average 1/num_batches_tracked
  double eps;
  bool update;
  DeviceTarget target;
};
cudaError_t launch_bn_finalize(const BnFinalizeParams& p, DType stat, cudaStream_t stream);

// out = relu((y*scale + shift)[*branch_scale[n]] + [residual*res_scale + res_shift]); all
// data in one layout.
struct BlockEndParams {
  const void* y;
  const void* residual;
  void* out;
  const void* scale;
  const void* shift;
  const void* res_scale;  // null: identity
  const void* res_shift;
  const void* branch_scale;  // null: no drop path; else (N,) per-sample factors
  int64_t per_sample;        // elements per sample (C*H*W)
  Layout L;
  DeviceTarget target;
};
cudaError_t launch_block_end(const BlockEndParams& p, DType data, cudaStream_t stream);

// dz = d_out masked by out > 0; per-channel sum(dz_b), sum(dz_b*xhat), sum(dz*xhat_d) with
// dz_b = dz[*branch_scale[n]] (the residual branch's gradient under drop path).
struct BlockEndBwdParams {
  const void* d_out;
  const void* out;
  const void* y;
  const void* y_d;  // null: no projection shortcut
  void* dz;
  const void* mean;
  const void* invstd;
  const void* mean_d;
  const void* invstd_d;
  void* sum_dz;
  void* sum_dz_xhat;
  void* sum_dz_xhat_d;
  void* workspace;  // block_end_bwd_workspace_elems(L) elements of the statistics dtype
  const void* branch_scale;  // null: no drop path; else (N,) per-sample factors
  int64_t per_sample;        // elements per sample (C*H*W)
  Layout L;
  DeviceTarget target;
};

cudaError_t launch_block_end_bwd(const BlockEndBwdParams& p, DType data, cudaStream_t stream);

// ---------------------------------------------------------------- conv ops (conv_*.cu)
// All data NHWC (the launcher makes it channels_last-contiguous), weight KRSC, groups == 1,
// float32 / float16 / bfloat16 data (no float64 kernels); per-channel vectors are float32.
// CTA tile of every conv kernel: common/igemm.h (kConvTileM x kConvTileN, steps of kConvTileK).

struct ConvFwdParams {
  const void* x;
  const void* w;
  const void* in_scale;  // null: no affine prologue
  const void* in_shift;
  const void* out_scale;  // null: identity
  const void* out_shift;
  const void* residual;  // null: none
  const void* res_scale;
  const void* res_shift;
  void* y;
  void* mean;       // stats: float32[K]
  void* m2;
  void* workspace;  // stats: conv_fwd_workspace_elems floats
  ConvShape s;
  bool in_relu;
  bool out_relu;
  bool stats;
  DeviceTarget target;
};
cudaError_t launch_conv_fwd(const ConvFwdParams& p, DType data, cudaStream_t stream);

struct ConvDgradParams {
  const void* dz;
  const void* y;
  const void* a;  // dy = a*dz + b*y + c, float32[K]
  const void* b;
  const void* c;
  const void* w;
  const void* residual;    // null: none
  const void* prev_y;      // null: no ReLU mask and no sums
  const void* prev_scale;  // null: identity
  const void* prev_shift;
  const void* prev_mean;
  const void* prev_invstd;
  void* dx;
  void* sum_dx;  // prev_y: float32[C]
  void* sum_dx_xhat;
  void* workspace;  // prev_y: conv_dgrad_workspace_elems floats
  ConvShape s;
  DeviceTarget target;
};
cudaError_t launch_conv_dgrad(const ConvDgradParams& p, DType data, cudaStream_t stream);

struct ConvWgradParams {
  const void* x;
  const void* in_scale;  // null: no affine prologue
  const void* in_shift;
  const void* dz;
  const void* y;
  const void* a;
  const void* b;
  const void* c;
  void* dw;         // weight dtype `out`, KRSC when dw_krsc else KCRS
  void* workspace;  // conv_wgrad_workspace_elems(s, target) floats (split-K partials)
  ConvShape s;
  int64_t splits;  // set by launch_conv_wgrad from its plan (the kernels read them)
  int64_t kchunk;  // conv_wgrad_kchunk(s, splits)
  bool in_relu;
  bool dw_krsc;
  DeviceTarget target;
};
cudaError_t launch_conv_wgrad(const ConvWgradParams& p, DType data, DType out,
                              cudaStream_t stream);

// A planned launch's grid and block as CUDA dims, and the launch itself:
//   FR_LAUNCH_AS(launch, stream, kernel)(args...) == kernel<<<grid, block, smem, stream>>>(args...)
inline dim3 grid_of(const KernelLaunch& l) {
  return dim3(unsigned(l.grid.x), unsigned(l.grid.y), unsigned(l.grid.z));
}
inline dim3 block_of(const KernelLaunch& l) {
  return dim3(unsigned(l.block.x), unsigned(l.block.y), unsigned(l.block.z));
}
#define FR_LAUNCH_AS(l, stream, ...) \
  FR_LAUNCH(::fr::cuda::grid_of(l), ::fr::cuda::block_of(l), (l).smem, stream, __VA_ARGS__)

}  // namespace fr::cuda
