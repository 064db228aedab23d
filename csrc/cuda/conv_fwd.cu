// conv_fwd: the CUDA kernel launches and the statistics merge (kernels: conv_*.cuh).
// CUDA headers and csrc/common only (docs/design.md §4).
#include "cuda/conv_epilogues.cuh"
#include "cuda/conv_simt.cuh"
#include "cuda/conv_tc_operands.cuh"
#include "cuda/merge.cuh"

namespace fr::cuda {
namespace {

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


template <class S>
cudaError_t conv_fwd_typed(const ConvFwdParams& p, DType data, cudaStream_t stream) {
  const OpLaunchPlan plan = conv_fwd_plan(p.s, data, p.stats, p.residual != nullptr, p.target);
  const KernelLaunch& gemm = plan.launches[0];  // one slice
  if constexpr (sizeof(S) == 2) {
    if (gemm.kernel == Kernel::kConvTc) {
      // 16-byte operand loads where channels and pointers allow (else element loads).
      const bool vec_a = p.s.C % 8 == 0 && aligned16(p.x) && aligned16(p.in_scale) &&
                         aligned16(p.in_shift);
      const bool vec_b = fwd_gemm_k(p.s) % 8 == 0 && aligned16(p.w);
      FR_LAUNCH_AS(gemm, stream, tc_conv_kernel<S>)(FwdTc<S>{p, vec_a, vec_b},
                                                     FwdEpilogue<S>{p});
    }
  }
  if (gemm.kernel == Kernel::kConvSimt)
    FR_LAUNCH_AS(gemm, stream, simt_conv_kernel)(FwdOperands<S>{p}, FwdEpilogue<S>{p});
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess || !p.stats) return e;
  const int64_t tiles = gemm.grid.x, K = p.s.K;
  return merge_partials(FwdTileStats{static_cast<const float*>(p.workspace), tiles * K, K},
                        StoreStats{static_cast<float*>(p.mean), static_cast<float*>(p.m2)},
                        tiles, K, plan, 1,
                        merge_results<Welford<double>>(p.workspace, 4 * tiles * K), stream);
}

}  // namespace

cudaError_t launch_conv_fwd(const ConvFwdParams& p, DType data, cudaStream_t stream) {
  switch (data) {
    case DType::kFloat: return conv_fwd_typed<float>(p, data, stream);
    case DType::kHalf: return conv_fwd_typed<__half>(p, data, stream);
    case DType::kBFloat16: return conv_fwd_typed<__nv_bfloat16>(p, data, stream);
    default: return cudaErrorInvalidValue;  // no float64 kernels
  }
}

}  // namespace fr::cuda
