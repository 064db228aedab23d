// conv_bwd_weight: the CUDA kernel launches (split-K over grid z) and the fixed-order split
// reduction (kernels: conv_*.cuh). CUDA headers and csrc/common only (docs/design.md §4).
#include "cuda/conv_epilogues.cuh"
#include "cuda/conv_simt.cuh"
#include "cuda/conv_tc_operands.cuh"

namespace fr::cuda {
namespace {

// Per dw element: sum the split-K partials in split order, store in the weight dtype/format.
template <class O>
__global__ void __launch_bounds__(kReduceThreads)
    reduce_wgrad_kernel(const float* ws, int64_t splits, ConvShape s, bool krsc, O* dw) {
  const int64_t cols = s.R * s.S * s.C, total = s.K * cols;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  float acc = 0.f;
  for (int64_t z = 0; z < splits; ++z) acc += ws[z * total + i];
  dw[wgrad_out_offset(s, i / cols, i % cols, krsc)] = Cvt<O>::from(acc);
}


template <class S>
cudaError_t conv_wgrad_typed(const ConvWgradParams& p, DType data, DType out,
                             cudaStream_t stream) {
  // Slice z: split z of the N*P*Q reduction (common/igemm.h wgrad_slice). Split boundaries on
  // multiples of both kernels' BK keep every split's stages full; splits past the end write
  // zero partials, still summed.
  static_assert(kConvTileK % TC_BK == 0 && kConvTileK % SIMT_BK == 0);
  // dy in 16-byte vectors (tensor cores); the activations too when also aligned.
  const bool dy_aligned = aligned16(p.dz) && aligned16(p.y) && aligned16(p.a) &&
                          aligned16(p.b) && aligned16(p.c);
  const bool act_aligned = aligned16(p.x) && aligned16(p.in_scale) && aligned16(p.in_shift);
  const OpLaunchPlan plan = conv_wgrad_plan(p.s, data, out, dy_aligned, act_aligned, p.target);
  ConvWgradParams q = p;
  q.splits = plan.splits;
  q.kchunk = plan.kchunk;
  const KernelLaunch& gemm = plan.launches[0];
  if constexpr (sizeof(S) == 2) {
    if (gemm.kernel == Kernel::kConvTc)
      FR_LAUNCH_AS(gemm, stream, tc_conv_kernel<S>)(WgradTc<S, true>{q, 0}, WgradEpilogue{q});
    else if (gemm.kernel == Kernel::kConvTcScalarB)
      FR_LAUNCH_AS(gemm, stream, tc_conv_kernel<S>)(WgradTc<S, false>{q, 0}, WgradEpilogue{q});
  }
  if (gemm.kernel == Kernel::kConvSimt)
    FR_LAUNCH_AS(gemm, stream, simt_conv_kernel)(WgradOperands<S>{q, 0}, WgradEpilogue{q});
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  const float* ws = static_cast<const float*>(q.workspace);
  const KernelLaunch& reduce = plan.launches[1];
  switch (out) {
    case DType::kFloat:
      FR_LAUNCH_AS(reduce, stream, reduce_wgrad_kernel)(ws, q.splits, q.s, q.dw_krsc,
                                                        static_cast<float*>(q.dw));
      break;
    case DType::kDouble:
      FR_LAUNCH_AS(reduce, stream, reduce_wgrad_kernel)(ws, q.splits, q.s, q.dw_krsc,
                                                        static_cast<double*>(q.dw));
      break;
    case DType::kHalf:
      FR_LAUNCH_AS(reduce, stream, reduce_wgrad_kernel)(ws, q.splits, q.s, q.dw_krsc,
                                                        static_cast<__half*>(q.dw));
      break;
    case DType::kBFloat16:
      FR_LAUNCH_AS(reduce, stream, reduce_wgrad_kernel)(ws, q.splits, q.s, q.dw_krsc,
                                                        static_cast<__nv_bfloat16*>(q.dw));
      break;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_conv_wgrad(const ConvWgradParams& p, DType data, DType out,
                              cudaStream_t stream) {
  switch (data) {
    case DType::kFloat: return conv_wgrad_typed<float>(p, data, out, stream);
    case DType::kHalf: return conv_wgrad_typed<__half>(p, data, out, stream);
    case DType::kBFloat16: return conv_wgrad_typed<__nv_bfloat16>(p, data, out, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace fr::cuda
