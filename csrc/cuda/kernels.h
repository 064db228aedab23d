// Interface between the CUDA kernels (.cu, CUDA headers only) and their launchers (.cpp, ATen):
// raw pointers and plain parameter structs, no torch types.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

#include "common/igemm.h"
#include "common/layout.h"

namespace fr::cuda {

enum class DType : int { kFloat, kDouble, kHalf, kBFloat16 };

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
};

// Per-CTA partial sums go to a workspace [3][chunks][C] that a second kernel reduces in a
// fixed order: deterministic, no atomics. ~1024 CTAs keep every SM busy.
inline int64_t block_end_bwd_chunks(const Layout& L) {
  constexpr int64_t kTargetCtas = 1024;
  if (L.inner == 1) {  // channels-last: CTA = 32 channels x a range of pixels
    const int64_t ctiles = (L.C + 31) / 32;
    return std::max<int64_t>(
        1, std::min((L.outer + 63) / 64, std::max<int64_t>(1, kTargetCtas / ctiles)));
  }
  // NCHW: CTA = one channel x a range of images
  return std::max<int64_t>(1, std::min(L.outer, std::max<int64_t>(1, kTargetCtas / L.C)));
}
inline int64_t block_end_bwd_workspace_elems(const Layout& L) {
  return 3 * block_end_bwd_chunks(L) * L.C;
}
cudaError_t launch_block_end_bwd(const BlockEndBwdParams& p, DType data, cudaStream_t stream);

// ---------------------------------------------------------------- conv ops (conv_*.cu)
// All data NHWC (the launcher makes it channels_last-contiguous), weight KRSC, groups == 1,
// float32 / float16 / bfloat16 data (no float64 kernels); per-channel vectors are float32.
// CTA tile of every conv kernel: common/igemm.h (kConvTileM x kConvTileN, steps of kConvTileK).

// Per-tile partials [parts][C] are merged per channel in a fixed order by cuda/merge.cuh, in
// two levels: up to ceil(parts / 64) groups, so that ~512 CTAs of 32 channels share the first
// (a group may be short or even empty: an empty group merges as the identity).
inline int64_t merge_groups(int64_t parts, int64_t C) {
  const int64_t cblocks = (C + 31) / 32;
  return std::max<int64_t>(1, std::min((parts + 63) / 64, std::max<int64_t>(1, 512 / cblocks)));
}
// A conv workspace: `partials` floats, then (8-byte aligned: rounded up to an even count) the
// first merge level's results, `acc_doubles` doubles per group and channel.
inline int64_t merge_results_offset(int64_t partials) { return partials + partials % 2; }
inline int64_t conv_workspace_elems(int64_t partials, int64_t parts, int64_t C,
                                    int64_t acc_doubles) {
  return merge_results_offset(partials) + 2 * acc_doubles * merge_groups(parts, C) * C;
}

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
};
// Per-tile Welford partials [count, pivot, mean - pivot, m2][tiles][K] (floats), then the
// merge's Welford<double> group results.
inline int64_t conv_fwd_workspace_elems(const ConvShape& s) {
  const int64_t tiles = conv_tiles(fwd_gemm_m(s), kConvTileM);
  return conv_workspace_elems(4 * tiles * s.K, tiles, s.K, 3);
}
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
};
// Per-tile partial sums [sum dx, sum dx*(prev_y - prev_mean)][tiles][C] (floats; tiles of
// every stride phase), then the merge's group sums (2 doubles).
inline int64_t conv_dgrad_workspace_elems(const ConvShape& s) {
  const int64_t tiles = dgrad_tiles(s);
  return conv_workspace_elems(2 * tiles * s.C, tiles, s.C, 2);
}
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
  void* workspace;  // conv_wgrad_workspace_elems floats (split-K partials)
  ConvShape s;
  int64_t splits;
  int64_t kchunk;  // conv_wgrad_kchunk(s, splits): computed once on the host
  bool in_relu;
  bool dw_krsc;
};
// Split-K partials of conv_wgrad_splits (common/igemm.h) splits.
inline int64_t conv_wgrad_workspace_elems(const ConvShape& s) {
  return conv_wgrad_splits(s) * s.K * s.R * s.S * s.C;
}
cudaError_t launch_conv_wgrad(const ConvWgradParams& p, DType data, DType out,
                              cudaStream_t stream);

}  // namespace fr::cuda
