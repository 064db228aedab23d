// conv_bwd_weight: the CUDA kernel launches (split-K over grid z) and the fixed-order split
// reduction (kernels: conv_*.cuh). CUDA headers and csrc/common only (docs/design.md §4).
#include "cuda/conv_epilogues.cuh"
#include "cuda/conv_simt.cuh"
#include "cuda/conv_tc_operands.cuh"

namespace fr::cuda {
namespace {

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
