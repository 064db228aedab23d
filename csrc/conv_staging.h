// The argument checks and operand staging of conv_fwd, conv_bwd_data and conv_bwd_weight: one
// function per op, shared by the three conv launchers -- the cpp backend (cpu/conv_cpu.cpp,
// ATen GEMM), the CPU twins of the CUDA kernels (cpu/conv_igemm_cpu.cpp) and the CUDA
// launchers (cuda/conv_cuda.cpp). A ConvBackend says what differs between them.
#pragma once

#include "common/igemm.h"
#include "op_utils.h"

namespace fr {

struct ConvBackend {
  // The implicit-GEMM kernels (CUDA, and their CPU twins): groups == 1, data staged NHWC and
  // the filter KRSC. Otherwise the ATen GEMM: any groups; data staged in the caller's memory
  // format, x and weight passed as given (ATen takes any strides).
  bool implicit_gemm;
  bool float64;      // float64 data (the CUDA kernels have none)
  const char* name;  // whose limits a rejected argument hits, in messages: "the CUDA kernels"
  // Checks beyond the dispatcher's, null on CPU: of each data tensor (device kind, non-empty)
  // and of the geometry (compute capability, launch-grid limits).
  void (*check_tensor)(const Tensor& t, const char* op, const char* what) = nullptr;
  void (*check_shape)(const ConvShape& s, const at::Device& device, const char* op) = nullptr;
};

// x (conv_fwd, conv_bwd_weight) or dz: 4-D, a floating dtype the backend serves.
inline void check_conv_data(const ConvBackend& be, const Tensor& t, const char* op,
                            const char* name) {
  check_data(t, op, name);
  if (be.check_tensor) be.check_tensor(t, op, name);
  TORCH_CHECK(be.float64 || t.scalar_type() != at::kDouble, op, ": ", be.name,
              " support float32, float16 and bfloat16, not float64 (", name,
              " is float64); use the cpp backend on CPU or the reference backend");
}

// The conv arguments and a weight of `wdtype` on `device` against the logical NCHW input
// size `in`; the geometry.
inline ConvShape check_conv_geometry(const ConvBackend& be, const char* op, at::IntArrayRef in,
                                     const Tensor& weight, at::ScalarType wdtype,
                                     const at::Device& device, int64_t stride, int64_t padding,
                                     int64_t dilation, int64_t groups) {
  check_conv_args(stride, padding, dilation, groups, op);
  TORCH_CHECK(!be.implicit_gemm || groups == 1, op, ": ", be.name,
              " support groups == 1 only, got groups=", groups);
  TORCH_CHECK(weight.dim() == 4, op, ": weight must be 4-D (K, C/groups, R, S), got shape ",
              weight.sizes());
  TORCH_CHECK(weight.scalar_type() == wdtype, op, ": weight must have dtype ", wdtype, ", got ",
              weight.scalar_type());
  TORCH_CHECK(weight.device() == device, op, ": weight is on ", weight.device(), ", expected ",
              device);
  TORCH_CHECK(in[1] % groups == 0 && weight.size(1) * groups == in[1], op, ": weight ",
              weight.sizes(), " does not match ", in[1], " input channels with groups=", groups);
  TORCH_CHECK(weight.size(0) % groups == 0, op, ": ", weight.size(0),
              " output channels are not divisible by groups=", groups);
  const ConvShape s = make_conv_shape(in[0], in[1], in[2], in[3], weight.size(0), weight.size(2),
                                      weight.size(3), stride, padding, dilation, groups);
  TORCH_CHECK(s.P >= 1 && s.Q >= 1, op, ": input ", in, " is too small for kernel ",
              weight.sizes(), " (stride ", stride, ", padding ", padding, ", dilation ", dilation,
              ")");
  if (be.check_shape) be.check_shape(s, device, op);
  return s;
}

// The memory format data is staged in: NHWC for the implicit GEMM, else the caller's `t`'s.
inline at::MemoryFormat staging_format(const ConvBackend& be, const Tensor& t) {
  return be.implicit_gemm ? at::MemoryFormat::ChannelsLast : memory_format(t);
}

// A GEMM operand (x, weight): NHWC / KRSC for the implicit GEMM, else as given.
inline Tensor gemm_operand(const ConvBackend& be, const Tensor& t) {
  return be.implicit_gemm ? t.contiguous(at::MemoryFormat::ChannelsLast) : t;
}

inline Tensor staged(const OptTensor& t, at::MemoryFormat fmt) {
  return t ? t->contiguous(fmt) : Tensor();
}

// A per-channel output: (n,) in the statistics dtype of `like` when `used`, else (0,).
inline Tensor channel_output(const Tensor& like, int64_t n, bool used) {
  return used ? at::empty({n}, like.options().dtype(stat_dtype(like.scalar_type())))
              : empty_stats(like);
}

// ---------------------------------------------------------------- conv_fwd
struct ConvFwdArgs {
  ConvShape s;
  at::MemoryFormat fmt;      // of the staged data and outputs
  at::MemoryFormat out_fmt;  // x's: the outputs are returned in it
  Tensor x, w;               // gemm_operand
  Tensor residual;           // in fmt, or undefined
  OptTensor in_scale, in_shift, out_scale, out_shift, res_scale, res_shift;  // contiguous
  Tensor mean, m2;           // the statistics outputs: (K,) with stats, else (0,)

  // A fresh output y, (N, K, P, Q) in fmt. Not allocated up front: the cpp backend writes
  // its epilogue into the GEMM's output when the dtypes allow.
  Tensor new_y() const { return at::empty({s.N, s.K, s.P, s.Q}, x.options().memory_format(fmt)); }
};

inline ConvFwdArgs stage_conv_fwd(const ConvBackend& be, const char* op, const Tensor& x,
                                  const Tensor& weight, int64_t stride, int64_t padding,
                                  int64_t dilation, int64_t groups, const OptTensor& in_scale,
                                  const OptTensor& in_shift, const OptTensor& out_scale,
                                  const OptTensor& out_shift, const OptTensor& residual,
                                  const OptTensor& res_scale, const OptTensor& res_shift,
                                  bool stats) {
  check_conv_data(be, x, op, "x");
  const auto sd = stat_dtype(x.scalar_type());
  const auto dev = x.device();
  const ConvShape s = check_conv_geometry(be, op, x.sizes(), weight, x.scalar_type(), dev,
                                          stride, padding, dilation, groups);
  check_affine(in_scale, in_shift, s.C, sd, dev, op, "in_scale", "in_shift");
  check_affine(out_scale, out_shift, s.K, sd, dev, op, "out_scale", "out_shift");
  const bool has_res = residual.has_value();
  if (has_res) {
    check_optional_data(residual, {s.N, s.K, s.P, s.Q}, x, op, "residual", "x");
    check_affine(res_scale, res_shift, s.K, sd, dev, op, "res_scale", "res_shift");
  }
  ConvFwdArgs st{s, staging_format(be, x), memory_format(x)};
  st.x = gemm_operand(be, x);
  st.w = gemm_operand(be, weight);
  st.residual = staged(residual, st.fmt);
  st.in_scale = contiguous(in_scale);
  st.in_shift = contiguous(in_shift);
  st.out_scale = contiguous(out_scale);
  st.out_shift = contiguous(out_shift);
  st.res_scale = has_res ? contiguous(res_scale) : std::nullopt;  // unused without a residual
  st.res_shift = has_res ? contiguous(res_shift) : std::nullopt;
  st.mean = channel_output(x, s.K, stats);
  st.m2 = channel_output(x, s.K, stats);
  return st;
}

// ------------------------------------------------ the backward ops' dz, y and a, b, c
// dz (data), y like dz, and the BN-backward coefficients in the statistics dtype.
inline void check_dy_inputs(const ConvBackend& be, const char* op, const Tensor& dz,
                            const Tensor& y, const Tensor& a, const Tensor& b, const Tensor& c) {
  check_conv_data(be, dz, op, "dz");
  check_dy_operands(op, dz, y, a, b, c, stat_dtype(dz.scalar_type()));
}

struct DyOperands {
  Tensor dz, y;    // in the staging format
  Tensor a, b, c;  // contiguous
};

inline DyOperands stage_dy(const Tensor& dz, const Tensor& y, const Tensor& a, const Tensor& b,
                           const Tensor& c, at::MemoryFormat fmt) {
  return {dz.contiguous(fmt), y.contiguous(fmt), a.contiguous(), b.contiguous(), c.contiguous()};
}

// ---------------------------------------------------------------- conv_bwd_data
struct ConvBwdDataArgs {
  ConvShape s;
  at::MemoryFormat fmt;      // of the staged data and outputs
  at::MemoryFormat out_fmt;  // dz's: the outputs are returned in it
  DyOperands dy;
  Tensor w;                  // gemm_operand
  Tensor residual, prev_y;   // in fmt, or undefined
  OptTensor prev_scale, prev_shift, prev_mean, prev_invstd;  // contiguous, with prev_y only
  Tensor dx;                 // the output: input_size, in fmt
  Tensor sum_dx, sum_dx_xhat;  // the sums outputs: (C,) with prev_y, else (0,)
};

inline ConvBwdDataArgs stage_conv_bwd_data(
    const ConvBackend& be, const char* op, const Tensor& dz, const Tensor& y, const Tensor& a,
    const Tensor& b, const Tensor& c, const Tensor& weight, at::IntArrayRef input_size,
    int64_t stride, int64_t padding, int64_t dilation, int64_t groups, const OptTensor& residual,
    const OptTensor& prev_y, const OptTensor& prev_scale, const OptTensor& prev_shift,
    const OptTensor& prev_mean, const OptTensor& prev_invstd) {
  check_dy_inputs(be, op, dz, y, a, b, c);
  check_dgrad_operands(op, dz, input_size, residual, prev_y, prev_scale, prev_shift, prev_mean,
                       prev_invstd, stat_dtype(dz.scalar_type()));
  const ConvShape s = check_conv_geometry(be, op, input_size, weight, dz.scalar_type(),
                                          dz.device(), stride, padding, dilation, groups);
  TORCH_CHECK(s.K == dz.size(1) && s.P == dz.size(2) && s.Q == dz.size(3), op, ": dz ",
              dz.sizes(), " is not the output of a conv of input ", input_size, " with weight ",
              weight.sizes());
  const bool has_prev = prev_y.has_value();
  ConvBwdDataArgs st{s, staging_format(be, dz), memory_format(dz)};
  st.dy = stage_dy(dz, y, a, b, c, st.fmt);
  st.w = gemm_operand(be, weight);
  st.residual = staged(residual, st.fmt);
  st.prev_y = staged(prev_y, st.fmt);
  if (has_prev) {
    st.prev_scale = contiguous(prev_scale);
    st.prev_shift = contiguous(prev_shift);
    st.prev_mean = contiguous(prev_mean);
    st.prev_invstd = contiguous(prev_invstd);
  }
  st.dx = at::empty(input_size, dz.options().memory_format(st.fmt));
  st.sum_dx = channel_output(dz, s.C, has_prev);
  st.sum_dx_xhat = channel_output(dz, s.C, has_prev);
  return st;
}

// ---------------------------------------------------------------- conv_bwd_weight
struct ConvBwdWeightArgs {
  ConvShape s;
  at::MemoryFormat fmt;    // of the staged dz and y
  at::MemoryFormat w_fmt;  // the weight's: dw is returned in it
  Tensor x;                // gemm_operand
  OptTensor in_scale, in_shift;  // contiguous
  DyOperands dy;
};

inline ConvBwdWeightArgs stage_conv_bwd_weight(
    const ConvBackend& be, const char* op, const Tensor& x, const OptTensor& in_scale,
    const OptTensor& in_shift, const Tensor& dz, const Tensor& y, const Tensor& a,
    const Tensor& b, const Tensor& c, const Tensor& weight, int64_t stride, int64_t padding,
    int64_t dilation, int64_t groups) {
  check_conv_data(be, x, op, "x");
  check_dy_inputs(be, op, dz, y, a, b, c);
  check_wgrad_operands(op, x, dz, weight);
  // weight gives only the shape, the output dtype (any floating type) and the memory format.
  const ConvShape s = check_conv_geometry(be, op, x.sizes(), weight, weight.scalar_type(),
                                          x.device(), stride, padding, dilation, groups);
  TORCH_CHECK(dz.size(0) == s.N && s.K == dz.size(1) && s.P == dz.size(2) && s.Q == dz.size(3),
              op, ": dz ", dz.sizes(), " is not the output of a conv of x ", x.sizes(),
              " with weight ", weight.sizes());
  check_affine(in_scale, in_shift, s.C, stat_dtype(x.scalar_type()), x.device(), op,
               "in_scale", "in_shift");
  ConvBwdWeightArgs st{s, staging_format(be, dz), memory_format(weight)};
  st.x = gemm_operand(be, x);
  st.in_scale = contiguous(in_scale);
  st.in_shift = contiguous(in_shift);
  st.dy = stage_dy(dz, y, a, b, c, st.fmt);
  return st;
}

}  // namespace fr
