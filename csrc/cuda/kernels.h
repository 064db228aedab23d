// Interface between the CUDA kernels (.cu, CUDA headers only) and their launchers (.cpp, ATen):
// raw pointers and plain parameter structs, no torch types.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

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

// out = relu(y*scale + shift + [residual*res_scale + res_shift]); all data in one layout.
struct BlockEndParams {
  const void* y;
  const void* residual;
  void* out;
  const void* scale;
  const void* shift;
  const void* res_scale;  // null: identity
  const void* res_shift;
  Layout L;
};
cudaError_t launch_block_end(const BlockEndParams& p, DType data, cudaStream_t stream);

// dz = d_out masked by out > 0; per-channel sum(dz), sum(dz*xhat), sum(dz*xhat_d).
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

}  // namespace fr::cuda
