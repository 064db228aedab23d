// CUDA launchers of conv_fwd, conv_bwd_data, conv_bwd_weight: argument checks, device guard,
// current stream, NHWC staging, dtype mapping; the kernels live in conv_*.cu[h].
//
// Limits (clear errors otherwise): groups == 1, float32/float16/bfloat16 data (no float64
// kernels), non-empty tensors.
#include <torch/library.h>

#include <limits>

#include "cuda/device.h"
#include "cuda/kernels.h"
#include "op_utils.h"

namespace fr::cuda {
namespace {

constexpr auto kCL = at::MemoryFormat::ChannelsLast;

DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat;
    case at::kDouble: return DType::kDouble;
    case at::kHalf: return DType::kHalf;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "fused_resnet: unsupported dtype ", t);
  }
}

const void* opt_data(const OptTensor& t) { return t ? t->const_data_ptr() : nullptr; }

// Data tensor of a CUDA conv op: CUDA, 4-D, a dtype with CUDA kernels, non-empty.
void check_cuda_data(const Tensor& t, const char* op, const char* name) {
  check_data(t, op, name);
  TORCH_CHECK(on_device(t), op, ": ", name, " must be a ", kDeviceName, " tensor, got ",
              t.device());
  TORCH_CHECK(t.scalar_type() != at::kDouble, op,
              ": the CUDA kernels support float32, float16 and bfloat16, not float64 (", name,
              " is float64); use the cpp backend on CPU or the reference backend");
  TORCH_CHECK(t.numel() > 0, op, ": ", name, " is empty (shape ", t.sizes(), ")");
}

// Geometry shared by the three ops; `in` is the logical NCHW input size.
// cp.async, ldmatrix and bf16 mma.sync need sm_80+: a clear error, not "no kernel image".
void check_arch(const char* op, const at::Device& device) {
  const int major = compute_capability_major(device);
  TORCH_CHECK(major >= 8, op, ": the fused CUDA kernels need compute capability 8.0 or newer, "
              "got ", major, ".x; use backend='triton' or 'reference' on this GPU");
}

ConvShape conv_shape(const char* op, at::IntArrayRef in, const Tensor& weight,
                     at::ScalarType wdtype, const at::Device& device, int64_t stride,
                     int64_t padding, int64_t dilation, int64_t groups) {
  check_conv_args(stride, padding, dilation, groups, op);
  check_arch(op, device);
  TORCH_CHECK(groups == 1, op, ": the CUDA kernels support groups == 1 only, got groups=",
              groups);
  TORCH_CHECK(weight.dim() == 4, op, ": weight must be 4-D (K, C, R, S), got shape ",
              weight.sizes());
  TORCH_CHECK(weight.scalar_type() == wdtype, op, ": weight must have dtype ", wdtype, ", got ",
              weight.scalar_type());
  TORCH_CHECK(weight.device() == device, op, ": weight is on ", weight.device(), ", expected ",
              device);
  TORCH_CHECK(in[0] > 0 && in[1] > 0 && in[2] > 0 && in[3] > 0, op,
              ": the input must be non-empty, got size ", in);
  TORCH_CHECK(weight.size(1) == in[1], op, ": weight ", weight.sizes(), " does not match ",
              in[1], " input channels");
  const ConvShape s = make_conv_shape(in[0], in[1], in[2], in[3], weight.size(0), weight.size(2),
                                      weight.size(3), stride, padding, dilation, groups);
  TORCH_CHECK(s.P >= 1 && s.Q >= 1, op, ": input ", in, " is too small for kernel ",
              weight.sizes(), " (stride ", stride, ", padding ", padding, ", dilation ", dilation,
              ")");
  TORCH_CHECK(s.K >= 1 && s.C >= 1, op, ": weight ", weight.sizes(), " has no channels");
  // Grid x counts 64-row tiles; grid y (64-column tiles) is limited to 65535.
  const int64_t rows = std::max(s.N * s.P * s.Q, s.N * s.H * s.W);
  TORCH_CHECK(conv_tiles(rows, kConvTileM) <= std::numeric_limits<int32_t>::max(), op,
              ": too many output pixels for one launch (", rows, ")");
  TORCH_CHECK(conv_tiles(std::max(s.C, s.R * s.S * s.C), kConvTileN) <= 65535 &&
                  conv_tiles(s.K, kConvTileN) <= 65535,
              op, ": too many channels for the CUDA kernels (C=", s.C, ", K=", s.K, ")");
  TORCH_CHECK(dgrad_phases(s) <= 65535, op, ": stride ", stride, " over a ", in[2], "x", in[3],
              " input gives too many dgrad phases for one launch");
  return s;
}

// A per-channel float32 vector as a contiguous tensor (absent: undefined).
OptTensor vec(const OptTensor& t) { return contiguous(t); }

std::tuple<Tensor, Tensor, Tensor> conv_fwd(
    const Tensor& x_in, const Tensor& weight, int64_t stride, int64_t padding, int64_t dilation,
    int64_t groups, const OptTensor& in_scale, const OptTensor& in_shift, bool in_relu,
    const OptTensor& out_scale, const OptTensor& out_shift, const OptTensor& residual_in,
    const OptTensor& res_scale, const OptTensor& res_shift, bool out_relu, bool stats) {
  const char* op = "conv_fwd";
  check_cuda_data(x_in, op, "x");
  const auto dev = x_in.device();
  const ConvShape s = conv_shape(op, x_in.sizes(), weight, x_in.scalar_type(), dev, stride,
                                 padding, dilation, groups);
  check_affine(in_scale, in_shift, s.C, at::kFloat, dev, op, "in_scale", "in_shift");
  check_affine(out_scale, out_shift, s.K, at::kFloat, dev, op, "out_scale", "out_shift");
  const bool has_res = residual_in.has_value();
  if (has_res) {
    check_optional_data(residual_in, {s.N, s.K, s.P, s.Q}, x_in, op, "residual", "x");
    check_affine(res_scale, res_shift, s.K, at::kFloat, dev, op, "res_scale", "res_shift");
  }
  DeviceGuard guard(dev);
  const Tensor x = x_in.contiguous(kCL), w = weight.contiguous(kCL);  // NHWC, KRSC
  const Tensor res = has_res ? residual_in->contiguous(kCL) : Tensor();
  const OptTensor is = vec(in_scale), ib = vec(in_shift), os = vec(out_scale),
                  ob = vec(out_shift);
  const OptTensor rs = has_res ? vec(res_scale) : std::nullopt;
  const OptTensor rb = has_res ? vec(res_shift) : std::nullopt;
  Tensor y = at::empty({s.N, s.K, s.P, s.Q}, x.options().memory_format(kCL));
  Tensor mean = empty_stats(x_in), m2 = empty_stats(x_in), ws;
  if (stats) {
    mean = at::empty({s.K}, x.options().dtype(at::kFloat));
    m2 = at::empty({s.K}, x.options().dtype(at::kFloat));
    ws = at::empty({conv_fwd_workspace_elems(s)}, x.options().dtype(at::kFloat));
  }
  ConvFwdParams p{};
  p.x = x.const_data_ptr();
  p.w = w.const_data_ptr();
  p.in_scale = opt_data(is);
  p.in_shift = opt_data(ib);
  p.out_scale = opt_data(os);
  p.out_shift = opt_data(ob);
  p.residual = has_res ? res.const_data_ptr() : nullptr;
  p.res_scale = opt_data(rs);
  p.res_shift = opt_data(rb);
  p.y = y.data_ptr();
  p.mean = stats ? mean.data_ptr() : nullptr;
  p.m2 = stats ? m2.data_ptr() : nullptr;
  p.workspace = stats ? ws.data_ptr() : nullptr;
  p.s = s;
  p.in_relu = in_relu;
  p.out_relu = out_relu;
  p.stats = stats;
  p.target = device_target(dev);
  FR_CUDA_CHECK(launch_conv_fwd(p, dtype_of(x.scalar_type()), current_stream()));
  return {y.contiguous(memory_format(x_in)), mean, m2};
}

// dz (CUDA data), y and the coefficients (float32: the kernels' per-channel vectors).
void check_dy_inputs(const char* op, const Tensor& dz, const Tensor& y, const Tensor& a,
                     const Tensor& b, const Tensor& c) {
  check_cuda_data(dz, op, "dz");
  check_dy_operands(op, dz, y, a, b, c, at::kFloat);
}

std::tuple<Tensor, Tensor, Tensor> conv_bwd_data(
    const Tensor& dz_in, const Tensor& y_in, const Tensor& a, const Tensor& b, const Tensor& c,
    const Tensor& weight, at::IntArrayRef input_size, int64_t stride, int64_t padding,
    int64_t dilation, int64_t groups, const OptTensor& residual_in, const OptTensor& prev_y_in,
    const OptTensor& prev_scale, const OptTensor& prev_shift, const OptTensor& prev_mean,
    const OptTensor& prev_invstd) {
  const char* op = "conv_bwd_data";
  check_dy_inputs(op, dz_in, y_in, a, b, c);
  check_dgrad_operands(op, dz_in, input_size, residual_in, prev_y_in, prev_scale, prev_shift,
                       prev_mean, prev_invstd, at::kFloat);
  const auto dev = dz_in.device();
  const ConvShape s = conv_shape(op, input_size, weight, dz_in.scalar_type(), dev, stride,
                                 padding, dilation, groups);
  TORCH_CHECK(s.K == dz_in.size(1) && s.P == dz_in.size(2) && s.Q == dz_in.size(3), op, ": dz ",
              dz_in.sizes(), " is not the output of a conv of input ", input_size,
              " with weight ", weight.sizes());
  const bool has_prev = prev_y_in.has_value();
  DeviceGuard guard(dev);
  const Tensor dz = dz_in.contiguous(kCL), y = y_in.contiguous(kCL), w = weight.contiguous(kCL);
  const Tensor ca = a.contiguous(), cb = b.contiguous(), cc = c.contiguous();
  const Tensor res = residual_in ? residual_in->contiguous(kCL) : Tensor();
  const Tensor py = has_prev ? prev_y_in->contiguous(kCL) : Tensor();
  const OptTensor ps = has_prev ? vec(prev_scale) : std::nullopt;
  const OptTensor pb = has_prev ? vec(prev_shift) : std::nullopt;
  const OptTensor pm = has_prev ? vec(prev_mean) : std::nullopt;
  const OptTensor pi = has_prev ? vec(prev_invstd) : std::nullopt;
  Tensor dx = at::empty(input_size, dz.options().memory_format(kCL));
  Tensor sum_dx = empty_stats(dz_in), sum_dx_xhat = empty_stats(dz_in), ws;
  if (has_prev) {
    sum_dx = at::empty({s.C}, dz.options().dtype(at::kFloat));
    sum_dx_xhat = at::empty({s.C}, dz.options().dtype(at::kFloat));
    ws = at::empty({conv_dgrad_workspace_elems(s)}, dz.options().dtype(at::kFloat));
  }
  ConvDgradParams p{};
  p.dz = dz.const_data_ptr();
  p.y = y.const_data_ptr();
  p.a = ca.const_data_ptr();
  p.b = cb.const_data_ptr();
  p.c = cc.const_data_ptr();
  p.w = w.const_data_ptr();
  p.residual = res.defined() ? res.const_data_ptr() : nullptr;
  p.prev_y = has_prev ? py.const_data_ptr() : nullptr;
  p.prev_scale = opt_data(ps);
  p.prev_shift = opt_data(pb);
  p.prev_mean = opt_data(pm);
  p.prev_invstd = opt_data(pi);
  p.dx = dx.data_ptr();
  p.sum_dx = has_prev ? sum_dx.data_ptr() : nullptr;
  p.sum_dx_xhat = has_prev ? sum_dx_xhat.data_ptr() : nullptr;
  p.workspace = has_prev ? ws.data_ptr() : nullptr;
  p.s = s;
  p.target = device_target(dev);
  FR_CUDA_CHECK(launch_conv_dgrad(p, dtype_of(dz.scalar_type()), current_stream()));
  return {dx.contiguous(memory_format(dz_in)), sum_dx, sum_dx_xhat};
}

Tensor conv_bwd_weight(const Tensor& x_in, const OptTensor& in_scale, const OptTensor& in_shift,
                       bool in_relu, const Tensor& dz_in, const Tensor& y_in, const Tensor& a,
                       const Tensor& b, const Tensor& c, const Tensor& weight, int64_t stride,
                       int64_t padding, int64_t dilation, int64_t groups) {
  const char* op = "conv_bwd_weight";
  check_cuda_data(x_in, op, "x");
  check_dy_inputs(op, dz_in, y_in, a, b, c);
  check_wgrad_operands(op, x_in, dz_in, weight);
  const auto dev = x_in.device();
  const ConvShape s = conv_shape(op, x_in.sizes(), weight, weight.scalar_type(), dev, stride,
                                 padding, dilation, groups);
  TORCH_CHECK(dz_in.size(0) == s.N && s.K == dz_in.size(1) && s.P == dz_in.size(2) &&
                  s.Q == dz_in.size(3),
              op, ": dz ", dz_in.sizes(), " is not the output of a conv of x ", x_in.sizes(),
              " with weight ", weight.sizes());
  check_affine(in_scale, in_shift, s.C, at::kFloat, dev, op, "in_scale", "in_shift");
  DeviceGuard guard(dev);
  const Tensor x = x_in.contiguous(kCL), dz = dz_in.contiguous(kCL), y = y_in.contiguous(kCL);
  const Tensor ca = a.contiguous(), cb = b.contiguous(), cc = c.contiguous();
  const OptTensor is = vec(in_scale), ib = vec(in_shift);
  const auto wfmt = memory_format(weight);
  Tensor dw = at::empty(weight.sizes(), weight.options().memory_format(wfmt));
  const DeviceTarget target = device_target(dev);
  Tensor ws = at::empty({conv_wgrad_workspace_elems(s, target)}, x.options().dtype(at::kFloat));
  ConvWgradParams p{};
  p.x = x.const_data_ptr();
  p.in_scale = opt_data(is);
  p.in_shift = opt_data(ib);
  p.dz = dz.const_data_ptr();
  p.y = y.const_data_ptr();
  p.a = ca.const_data_ptr();
  p.b = cb.const_data_ptr();
  p.c = cc.const_data_ptr();
  p.dw = dw.data_ptr();
  p.workspace = ws.data_ptr();
  p.s = s;
  p.in_relu = in_relu;
  p.dw_krsc = wfmt == kCL;
  p.target = target;
  FR_CUDA_CHECK(launch_conv_wgrad(p, dtype_of(x.scalar_type()), dtype_of(weight.scalar_type()),
                                   current_stream()));
  return dw;
}

}  // namespace

TORCH_LIBRARY_IMPL(FR_CUDA_OPS, FR_CUDA_KEY, m) {
  m.impl("conv_fwd", &conv_fwd);
  m.impl("conv_bwd_data", &conv_bwd_data);
  m.impl("conv_bwd_weight", &conv_bwd_weight);
}

}  // namespace fr::cuda
