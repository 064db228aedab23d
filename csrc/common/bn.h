// BatchNorm finalize (forward) and backward-coefficient math, per channel.
// Semantics: fused_resnet/reference.py bn_finalize and bn_bwd_coeffs.
#pragma once

#include "common/macros.h"

namespace fr {

template <class T>
FR_HOST_DEVICE T bn_invstd(T m2, T count, T eps) {
  return T(1) / fr_sqrt(m2 / count + eps);
}

// scale = weight*invstd, shift = bias - mean*scale (weight/bias may be null: 1 and 0).
template <class T>
FR_HOST_DEVICE void bn_scale_shift(T mean, T invstd, const T* weight, const T* bias, int64_t c,
                                   T* scale, T* shift) {
  T s = weight ? invstd * weight[c] : invstd;
  T b = -mean * s;
  if (bias) b = b + bias[c];
  *scale = s;
  *shift = b;
}

// nn.BatchNorm2d's update factor: momentum, or the cumulative average 1/num_batches_tracked
// (num_batches_tracked already incremented) when momentum is None.
template <class T>
FR_HOST_DEVICE T bn_momentum_factor(bool has_momentum, T momentum, int64_t num_batches_tracked) {
  return has_momentum ? momentum : T(1) / T(num_batches_tracked);
}

template <class T>
FR_HOST_DEVICE T bn_running_update(T running, T batch_value, T factor) {
  return running + factor * (batch_value - running);
}

// running_var takes the unbiased variance.
template <class T>
FR_HOST_DEVICE T bn_unbiased_var(T m2, int64_t count) {
  return m2 / T(count > 1 ? count - 1 : 1);
}

// Backward of BN with batch statistics as dy = a*dz + b*y + c (y = raw conv output):
//   a = scale, b = -scale*invstd*sum(dz*xhat)/count, c = -scale*sum(dz)/count - b*mean.
// With fixed statistics (eval / frozen) it is dy = scale*dz: b = c = 0.
template <class T>
FR_HOST_DEVICE void bn_bwd_coeffs(T sum_dz, T sum_dz_xhat, T count, T scale, T mean, T invstd,
                                  bool batch_stats, T* a, T* b, T* c) {
  *a = scale;
  if (!batch_stats) {
    *b = T(0);
    *c = T(0);
    return;
  }
  T bb = -scale * invstd * sum_dz_xhat / count;
  *b = bb;
  *c = -scale * sum_dz / count - bb * mean;
}

}  // namespace fr
