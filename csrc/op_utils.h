// ATen-side helpers shared by the CPU kernels and the CUDA launchers (.cpp only, never .cu).
#pragma once

// Narrow ATen headers instead of ATen/ATen.h (every op): ~40% less parse time per file.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <optional>
#include <utility>
#include <string>

#include "common/layout.h"

namespace fr {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// Statistics / per-channel coefficient dtype: float64 for float64 data, else float32.
inline at::ScalarType stat_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// reference.memory_format: channels_last only when the tensor is channels-last and not also
// contiguous (ambiguous sizes have the same memory order either way).
inline at::MemoryFormat memory_format(const Tensor& t) {
  if (t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous())
    return at::MemoryFormat::ChannelsLast;
  return at::MemoryFormat::Contiguous;
}

// The [outer, C, inner] view of a 4-D tensor stored in `fmt`.
inline Layout layout_of(at::IntArrayRef sizes, at::MemoryFormat fmt) {
  int64_t N = sizes[0], C = sizes[1], HW = sizes[2] * sizes[3];
  if (fmt == at::MemoryFormat::ChannelsLast) return Layout{N * HW, C, 1};
  return Layout{N, C, HW};
}

inline void check_data(const Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be 4-D (N, C, H, W), got ", t.dim(), "-D");
  auto d = t.scalar_type();
  TORCH_CHECK(d == at::kFloat || d == at::kDouble || d == at::kHalf || d == at::kBFloat16, op,
              ": ", name, " must be float32, float64, float16 or bfloat16, got ", d);
}

inline void check_like(const Tensor& t, const Tensor& ref, const char* op, const char* name,
                       const char* ref_name) {
  TORCH_CHECK(t.sizes() == ref.sizes(), op, ": ", name, " must have the shape of ", ref_name,
              " ", ref.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have the dtype of ",
              ref_name, " (", ref.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ",
              ref_name, " is on ", ref.device());
}

// A per-channel vector: 1-D, C elements, the statistics dtype, on `device`.
inline void check_channel(const Tensor& t, int64_t C, at::ScalarType sd, const at::Device& device,
                          const char* op, const char* name) {
  TORCH_CHECK(t.dim() == 1 && t.numel() == C, op, ": ", name,
              " must be a 1-D per-channel tensor of ", C, " elements, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == sd, op, ": ", name, " must have dtype ", sd,
              " (the statistics dtype of the data), got ", t.scalar_type());
  TORCH_CHECK(t.device() == device, op, ": ", name, " is on ", t.device(), ", expected ", device);
}

// Optional (scale, shift) pair: both or neither.
inline void check_affine(const OptTensor& scale, const OptTensor& shift, int64_t C,
                         at::ScalarType sd, const at::Device& device, const char* op,
                         const char* scale_name, const char* shift_name) {
  TORCH_CHECK(scale.has_value() == shift.has_value(), op, ": ", scale_name, " and ", shift_name,
              " must be given together");
  if (scale) {
    check_channel(*scale, C, sd, device, op, scale_name);
    check_channel(*shift, C, sd, device, op, shift_name);
  }
}

inline void check_conv_args(int64_t stride, int64_t padding, int64_t dilation, int64_t groups,
                            const char* op) {
  TORCH_CHECK(stride >= 1, op, ": stride must be >= 1, got ", stride);
  TORCH_CHECK(padding >= 0, op, ": padding must be >= 0, got ", padding);
  TORCH_CHECK(dilation >= 1, op, ": dilation must be >= 1, got ", dilation);
  TORCH_CHECK(groups >= 1, op, ": groups must be >= 1, got ", groups);
}

// An optional data tensor (a residual, a saved activation): `shape`, and `like`'s dtype and
// device.
inline void check_optional_data(const OptTensor& t, at::IntArrayRef shape, const Tensor& like,
                                const char* op, const char* name, const char* like_name) {
  if (!t) return;
  TORCH_CHECK(t->sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ",
              t->sizes());
  TORCH_CHECK(t->scalar_type() == like.scalar_type() && t->device() == like.device(), op, ": ",
              name, " must match ", like_name, "'s dtype and device");
}

// conv_bwd_weight's operands beyond the dy inputs: dz pairs with x; weight gives the dtype.
inline void check_wgrad_operands(const char* op, const Tensor& x, const Tensor& dz,
                                 const Tensor& weight) {
  TORCH_CHECK(dz.scalar_type() == x.scalar_type() && dz.device() == x.device(), op,
              ": dz must match x's dtype and device");
  TORCH_CHECK(at::isFloatingType(weight.scalar_type()), op,
              ": weight must be floating point, got ", weight.scalar_type());
}

// dz, y and the BN-backward coefficients a, b, c of conv_bwd_data / conv_bwd_weight; `vec`
// is the coefficients' dtype. The backend checks dz itself (device, dtypes it serves).
inline void check_dy_operands(const char* op, const Tensor& dz, const Tensor& y, const Tensor& a,
                              const Tensor& b, const Tensor& c, at::ScalarType vec) {
  check_like(y, dz, op, "y", "dz");
  check_channel(a, dz.size(1), vec, dz.device(), op, "a");
  check_channel(b, dz.size(1), vec, dz.device(), op, "b");
  check_channel(c, dz.size(1), vec, dz.device(), op, "c");
}

// conv_bwd_data's input_size and its optional operands: residual and prev_y shaped like the
// input; with prev_y, the previous BN's per-channel vectors (dtype `vec`).
inline void check_dgrad_operands(const char* op, const Tensor& dz, at::IntArrayRef input_size,
                                 const OptTensor& residual, const OptTensor& prev_y,
                                 const OptTensor& prev_scale, const OptTensor& prev_shift,
                                 const OptTensor& prev_mean, const OptTensor& prev_invstd,
                                 at::ScalarType vec) {
  TORCH_CHECK(input_size.size() == 4 && input_size[0] == dz.size(0), op,
              ": input_size must be [N, C, H, W] with N = dz.size(0), got ", input_size);
  check_optional_data(residual, input_size, dz, op, "residual", "dz");
  check_optional_data(prev_y, input_size, dz, op, "prev_y", "dz");
  if (!prev_y) return;
  const int64_t C = input_size[1];
  check_affine(prev_scale, prev_shift, C, vec, dz.device(), op, "prev_scale", "prev_shift");
  TORCH_CHECK(prev_mean && prev_invstd, op, ": prev_y needs prev_mean and prev_invstd");
  check_channel(*prev_mean, C, vec, dz.device(), op, "prev_mean");
  check_channel(*prev_invstd, C, vec, dz.device(), op, "prev_invstd");
}

// t in dtype `d`: t itself when it has it (Tensor::to dispatches an op even then).
inline Tensor as_dtype(const Tensor& t, at::ScalarType d) {
  return t.scalar_type() == d ? t : t.to(d);
}

inline OptTensor contiguous(const OptTensor& t) {
  return t ? OptTensor(t->contiguous()) : std::nullopt;
}

// Per-channel data pointer (tensor made contiguous by the caller), or null for an absent optional.
template <class T>
inline const T* opt_ptr(const OptTensor& t) {
  return t ? t->data_ptr<T>() : nullptr;
}

inline Tensor empty_stats(const Tensor& like) {
  return at::empty({0}, like.options().dtype(stat_dtype(like.scalar_type())));
}

// ---- Argument checks of the elementwise / BN ops, shared by the CPU and CUDA kernels. ----

inline void check_bn_finalize(const Tensor& mean, const Tensor& m2, int64_t count,
                              const OptTensor& weight, const OptTensor& bias,
                              const OptTensor& running_mean, const OptTensor& running_var,
                              const OptTensor& num_batches_tracked,
                              std::optional<double> momentum, bool update_running_stats) {
  const char* op = "bn_finalize";
  TORCH_CHECK(mean.dim() == 1, op, ": mean must be 1-D, got shape ", mean.sizes());
  auto sd = mean.scalar_type();
  TORCH_CHECK(sd == at::kFloat || sd == at::kDouble, op,
              ": mean must be float32 or float64 (a statistics dtype), got ", sd);
  const int64_t C = mean.numel();
  check_channel(m2, C, sd, mean.device(), op, "m2");
  TORCH_CHECK(count > 0, op, ": count must be > 0, got ", count);
  for (auto [t, name] : {std::pair{&weight, "weight"}, std::pair{&bias, "bias"}}) {
    if (!*t) continue;
    TORCH_CHECK((*t)->dim() == 1 && (*t)->numel() == C, op, ": ", name, " must be 1-D with ", C,
                " elements, got shape ", (*t)->sizes());
    TORCH_CHECK((*t)->device() == mean.device(), op, ": ", name, " is on ", (*t)->device(),
                ", expected ", mean.device());
  }
  if (!update_running_stats) return;
  TORCH_CHECK(running_mean && running_var, op,
              ": update_running_stats needs running_mean and running_var");
  for (auto [t, name] : {std::pair{&running_mean, "running_mean"},
                         std::pair{&running_var, "running_var"}}) {
    TORCH_CHECK((*t)->dim() == 1 && (*t)->numel() == C, op, ": ", name, " must be 1-D with ", C,
                " elements, got shape ", (*t)->sizes());
    TORCH_CHECK(at::isFloatingType((*t)->scalar_type()), op, ": ", name,
                " must be floating point, got ", (*t)->scalar_type());
    TORCH_CHECK((*t)->device() == mean.device(), op, ": ", name, " is on ", (*t)->device(),
                ", expected ", mean.device());
  }
  TORCH_CHECK(momentum || num_batches_tracked, op,
              ": momentum=None (cumulative average) needs num_batches_tracked");
  if (num_batches_tracked) {
    TORCH_CHECK(num_batches_tracked->numel() == 1 &&
                    num_batches_tracked->scalar_type() == at::kLong,
                op, ": num_batches_tracked must be a one-element int64 tensor, got ",
                num_batches_tracked->scalar_type(), " of shape ", num_batches_tracked->sizes());
    TORCH_CHECK(num_batches_tracked->device() == mean.device(), op,
                ": num_batches_tracked is on ", num_batches_tracked->device(), ", expected ",
                mean.device());
  }
}

// A contiguous copy in dtype `sd` to compute on, or `t` itself when it already is one;
// copy_back() writes the working copy into `t` when they differ.
inline Tensor working_copy(const Tensor& t, at::ScalarType sd) {
  return (t.scalar_type() == sd && t.is_contiguous()) ? t : t.to(sd).contiguous();
}
inline OptTensor working_copy(const OptTensor& t, at::ScalarType sd) {
  if (!t) return std::nullopt;
  return working_copy(*t, sd);
}
inline void copy_back(const Tensor& t, const Tensor& work) {
  if (!work.is_same(t)) t.copy_(work);
}

inline void check_block_end(const Tensor& y, const Tensor& scale, const Tensor& shift,
                            const Tensor& residual, const OptTensor& res_scale,
                            const OptTensor& res_shift) {
  const char* op = "block_end";
  check_data(y, op, "y");
  auto sd = stat_dtype(y.scalar_type());
  const int64_t C = y.size(1);
  check_channel(scale, C, sd, y.device(), op, "scale");
  check_channel(shift, C, sd, y.device(), op, "shift");
  check_like(residual, y, op, "residual", "y");
  check_affine(res_scale, res_shift, C, sd, y.device(), op, "res_scale", "res_shift");
}

// Drop path's per-sample factors of the residual branch: (N,) in the statistics dtype.
inline void check_branch_scale(const OptTensor& branch_scale, const Tensor& data, const char* op) {
  if (!branch_scale) return;
  const Tensor& t = *branch_scale;
  TORCH_CHECK(t.dim() == 1 && t.numel() == data.size(0), op,
              ": branch_scale must be a 1-D per-sample tensor of ", data.size(0),
              " elements, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == stat_dtype(data.scalar_type()), op,
              ": branch_scale must have dtype ", stat_dtype(data.scalar_type()),
              " (the statistics dtype of the data), got ", t.scalar_type());
  TORCH_CHECK(t.device() == data.device(), op, ": branch_scale is on ", t.device(),
              ", expected ", data.device());
}

// bn_backward: the sums, scale and statistics per channel in one statistics dtype; weight and
// bias (any floating dtype: the gradients take it) with as many elements.
inline void check_bn_backward(const Tensor& sum_dz, const Tensor& sum_dz_xhat, int64_t count,
                              const Tensor& scale, const Tensor& mean, const Tensor& invstd,
                              const OptTensor& weight, const OptTensor& bias) {
  const char* op = "bn_backward";
  const auto sd = scale.scalar_type();
  TORCH_CHECK(sd == at::kFloat || sd == at::kDouble, op,
              ": scale must be float32 or float64 (a statistics dtype), got ", sd);
  TORCH_CHECK(scale.dim() == 1, op, ": scale must be 1-D, got shape ", scale.sizes());
  const int64_t C = scale.numel();
  for (auto [t, name] : {std::pair{&sum_dz, "sum_dz"}, std::pair{&sum_dz_xhat, "sum_dz_xhat"},
                         std::pair{&mean, "mean"}, std::pair{&invstd, "invstd"}})
    check_channel(*t, C, sd, scale.device(), op, name);
  TORCH_CHECK(count > 0, op, ": count must be > 0, got ", count);
  for (auto [t, name] : {std::pair{&weight, "weight"}, std::pair{&bias, "bias"}}) {
    if (!*t) continue;
    TORCH_CHECK((*t)->dim() == 1 && (*t)->numel() == C, op, ": ", name, " must be 1-D with ", C,
                " elements, got shape ", (*t)->sizes());
    TORCH_CHECK(at::isFloatingType((*t)->scalar_type()), op, ": ", name,
                " must be floating point, got ", (*t)->scalar_type());
    TORCH_CHECK((*t)->device() == scale.device(), op, ": ", name, " is on ", (*t)->device(),
                ", expected ", scale.device());
  }
}

inline void check_block_end_bwd(const Tensor& d_out, const Tensor& out, const Tensor& y,
                                const Tensor& mean, const Tensor& invstd, const OptTensor& y_d,
                                const OptTensor& mean_d, const OptTensor& invstd_d) {
  const char* op = "block_end_bwd";
  check_data(d_out, op, "d_out");
  check_like(out, d_out, op, "out", "d_out");
  check_like(y, d_out, op, "y", "d_out");
  auto sd = stat_dtype(d_out.scalar_type());
  const int64_t C = d_out.size(1);
  check_channel(mean, C, sd, d_out.device(), op, "mean");
  check_channel(invstd, C, sd, d_out.device(), op, "invstd");
  if (y_d) {
    check_like(*y_d, d_out, op, "y_d", "d_out");
    TORCH_CHECK(mean_d && invstd_d, op, ": y_d needs mean_d and invstd_d");
    check_channel(*mean_d, C, sd, d_out.device(), op, "mean_d");
    check_channel(*invstd_d, C, sd, d_out.device(), op, "invstd_d");
  }
}

}  // namespace fr
