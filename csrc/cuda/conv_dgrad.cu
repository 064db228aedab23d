// conv_bwd_data: the CUDA kernel launches (one grid slice per stride phase) and the sums'
// merge (kernels: conv_*.cuh). CUDA headers and csrc/common only (docs/design.md §4).
#include "cuda/conv_epilogues.cuh"
#include "cuda/conv_simt.cuh"
#include "cuda/conv_tc_operands.cuh"
#include "cuda/merge.cuh"

namespace fr::cuda {
namespace {

// ================================================================ fixed-order reductions
// Tile partials -> per-channel results through cuda/merge.cuh (parallel, fixed order).

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


template <class S>
cudaError_t conv_dgrad_typed(const ConvDgradParams& p, DType data, cudaStream_t stream) {
  // The tensor-core loaders read dz, y, w and a, b, c in 16-byte vectors.
  const bool aligned = aligned16(p.dz) && aligned16(p.y) && aligned16(p.w) && aligned16(p.a) &&
                       aligned16(p.b) && aligned16(p.c);
  const OpLaunchPlan plan = conv_dgrad_plan(p.s, data, p.prev_y != nullptr,
                                            p.residual != nullptr, aligned, p.target);
  const KernelLaunch& gemm = plan.launches[0];  // slice z: stride phase z (common/igemm.h)
  if constexpr (sizeof(S) == 2) {
    if (gemm.kernel == Kernel::kConvTc)
      FR_LAUNCH_AS(gemm, stream, tc_conv_kernel<S>)(DgradTc<S>{p, {}}, DgradEpilogue<S>{p});
  }
  if (gemm.kernel == Kernel::kConvSimt)
    FR_LAUNCH_AS(gemm, stream, simt_conv_kernel)(DgradOperands<S>{p, {}}, DgradEpilogue<S>{p});
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess || !p.prev_y) return e;
  const int64_t tiles = dgrad_tiles(p.s), C = p.s.C;
  return merge_partials(
      DgradTileSums{static_cast<const float*>(p.workspace), tiles * C, C},
      StoreDgradSums{static_cast<const float*>(p.prev_invstd), static_cast<float*>(p.sum_dx),
                     static_cast<float*>(p.sum_dx_xhat)},
      tiles, C, plan, 1, merge_results<Sums<2>>(p.workspace, 2 * tiles * C), stream);
}

}  // namespace

cudaError_t launch_conv_dgrad(const ConvDgradParams& p, DType data, cudaStream_t stream) {
  switch (data) {
    case DType::kFloat: return conv_dgrad_typed<float>(p, data, stream);
    case DType::kHalf: return conv_dgrad_typed<__half>(p, data, stream);
    case DType::kBFloat16: return conv_dgrad_typed<__nv_bfloat16>(p, data, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace fr::cuda
