// Elementwise fusion math (prologue, epilogue, ReLU and its backward, BN-backward map).
// T is the statistics/accumulate type (float or double); callers convert data to T.
#pragma once

#include "common/macros.h"

namespace fr {

// ReLU as torch.relu: NaN propagates (fmaxf(NaN, 0) would return 0; NaN <= 0 is false).
// One comparison and a select: branch-free, so CPU loops vectorise.
template <class T>
FR_HOST_DEVICE T relu(T v) {
  return v <= T(0) ? T(0) : v;
}

// ReLU backward as torch's threshold_backward: zero where pre <= 0; a NaN pre-activation
// compares false, so its gradient passes.
template <class T, class G>
FR_HOST_DEVICE G relu_bwd(G grad, T pre) {
  return pre <= T(0) ? G(0) : grad;
}

// reference._affine: v*scale[c] + shift[c], or v itself when there is no scale.
template <class T>
FR_HOST_DEVICE T maybe_affine(T v, const T* scale, const T* shift, int64_t c) {
  return scale ? v * scale[c] + shift[c] : v;
}

// Conv prologue: [relu](x*scale + shift). The caller rounds the result to the data dtype
// (the activation that feeds the GEMM is stored in the data dtype).
template <class T>
FR_HOST_DEVICE T prologue(T x, const T* scale, const T* shift, bool do_relu, int64_t c) {
  T a = maybe_affine(x, scale, shift, c);
  return do_relu ? relu(a) : a;
}

// Conv / block-end epilogue: [relu](v*scale + shift + [res*res_scale + res_shift]).
// `res` is ignored unless has_res.
template <class T>
FR_HOST_DEVICE T epilogue(T v, const T* scale, const T* shift, bool has_res, T res,
                          const T* res_scale, const T* res_shift, bool do_relu, int64_t c) {
  T out = maybe_affine(v, scale, shift, c);
  if (has_res) out = out + maybe_affine(res, res_scale, res_shift, c);
  return do_relu ? relu(out) : out;
}

// Block end with stochastic depth: relu((v*scale + shift)*branch + res*res_scale + res_shift).
// `branch` is the sample's drop-path factor (0 or 1/keep_prob; exactly 1 without drop path).
template <class T>
FR_HOST_DEVICE T block_end_value(T v, const T* scale, const T* shift, T branch, T res,
                                 const T* res_scale, const T* res_shift, int64_t c) {
  return relu(maybe_affine(v, scale, shift, c) * branch + maybe_affine(res, res_scale, res_shift, c));
}

// The drop-path factor of flat element `idx` (samples are outermost in NCHW and NHWC alike),
// 1 when there is no drop path (branch_scale null).
template <class T>
FR_HOST_DEVICE T branch_factor(const T* branch_scale, int64_t idx, int64_t per_sample) {
  return branch_scale ? branch_scale[idx / per_sample] : T(1);
}

// BN backward as a per-channel affine map of the raw conv output y: dy = a*dz + b*y + c.
template <class T>
FR_HOST_DEVICE T bn_bwd_apply(T dz, T y, T a, T b, T c) {
  return dz * a + y * b + c;
}

}  // namespace fr
