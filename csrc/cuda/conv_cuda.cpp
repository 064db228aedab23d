// CUDA launchers of conv_fwd, conv_bwd_data, conv_bwd_weight: the CUDA limits of the argument
// checks (the checks and NHWC staging themselves: conv_staging.h), device guard, current
// stream, workspaces, dtype mapping; the kernels live in conv_*.cu[h].
//
// Limits (clear errors otherwise): groups == 1, float32/float16/bfloat16 data (no float64
// kernels), non-empty tensors.
#include <torch/library.h>

#include <limits>

#include "cuda/device.h"
#include "cuda/kernels.h"
#include "conv_staging.h"

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
const void* opt_data(const Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }

// A data tensor (x, dz) of a CUDA conv op: on the device, non-empty.
void check_cuda_tensor(const Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(on_device(t), op, ": ", name, " must be a ", kDeviceName, " tensor, got ",
              t.device());
  TORCH_CHECK(t.numel() > 0, op, ": ", name, " is empty (shape ", t.sizes(), ")");
}

// The device and the launch grids (conv_staging.h checks the rest of the geometry).
void check_cuda_shape(const ConvShape& s, const at::Device& device, const char* op) {
  // cp.async, ldmatrix and bf16 mma.sync need sm_80+: a clear error, not "no kernel image".
  const int major = compute_capability_major(device);
  TORCH_CHECK(major >= 8, op, ": the fused CUDA kernels need compute capability 8.0 or newer, "
              "got ", major, ".x; use backend='triton' or 'reference' on this GPU");
  TORCH_CHECK(s.N > 0 && s.C > 0 && s.H > 0 && s.W > 0, op,
              ": the input must be non-empty, got size [", s.N, ", ", s.C, ", ", s.H, ", ", s.W,
              "]");
  TORCH_CHECK(s.K >= 1, op, ": the weight has no output channels");
  // Grid x counts 64-row tiles; grid y (64-column tiles) is limited to 65535.
  const int64_t rows = std::max(s.N * s.P * s.Q, s.N * s.H * s.W);
  TORCH_CHECK(conv_tiles(rows, kConvTileM) <= std::numeric_limits<int32_t>::max(), op,
              ": too many output pixels for one launch (", rows, ")");
  TORCH_CHECK(conv_tiles(std::max(s.C, s.R * s.S * s.C), kConvTileN) <= 65535 &&
                  conv_tiles(s.K, kConvTileN) <= 65535,
              op, ": too many channels for the CUDA kernels (C=", s.C, ", K=", s.K, ")");
  TORCH_CHECK(dgrad_phases(s) <= 65535, op, ": stride ", s.stride, " over a ", s.H, "x", s.W,
              " input gives too many dgrad phases for one launch");
}

constexpr ConvBackend kCuda{true, false, "the CUDA kernels", check_cuda_tensor,
                            check_cuda_shape};

// The staging's ATen calls run on their tensors' device; the guard is for the launch (the
// current stream) and the workspaces.
std::tuple<Tensor, Tensor, Tensor> conv_fwd(
    const Tensor& x, const Tensor& weight, int64_t stride, int64_t padding, int64_t dilation,
    int64_t groups, const OptTensor& in_scale, const OptTensor& in_shift, bool in_relu,
    const OptTensor& out_scale, const OptTensor& out_shift, const OptTensor& residual,
    const OptTensor& res_scale, const OptTensor& res_shift, bool out_relu, bool stats) {
  const ConvFwdArgs st =
      stage_conv_fwd(kCuda, "conv_fwd", x, weight, stride, padding, dilation, groups, in_scale,
                     in_shift, out_scale, out_shift, residual, res_scale, res_shift, stats);
  const ConvShape& s = st.s;
  DeviceGuard guard(x.device());
  Tensor y = st.new_y();
  Tensor ws;
  if (stats) ws = at::empty({conv_fwd_workspace_elems(s)}, x.options().dtype(at::kFloat));
  ConvFwdParams p{};
  p.x = st.x.const_data_ptr();
  p.w = st.w.const_data_ptr();
  p.in_scale = opt_data(st.in_scale);
  p.in_shift = opt_data(st.in_shift);
  p.out_scale = opt_data(st.out_scale);
  p.out_shift = opt_data(st.out_shift);
  p.residual = opt_data(st.residual);
  p.res_scale = opt_data(st.res_scale);
  p.res_shift = opt_data(st.res_shift);
  p.y = y.data_ptr();
  p.mean = stats ? st.mean.data_ptr() : nullptr;
  p.m2 = stats ? st.m2.data_ptr() : nullptr;
  p.workspace = stats ? ws.data_ptr() : nullptr;
  p.s = s;
  p.in_relu = in_relu;
  p.out_relu = out_relu;
  p.stats = stats;
  p.target = device_target(x.device());
  FR_CUDA_CHECK(launch_conv_fwd(p, dtype_of(x.scalar_type()), current_stream()));
  return {y.contiguous(st.out_fmt), st.mean, st.m2};
}

std::tuple<Tensor, Tensor, Tensor> conv_bwd_data(
    const Tensor& dz, const Tensor& y, const Tensor& a, const Tensor& b, const Tensor& c,
    const Tensor& weight, at::IntArrayRef input_size, int64_t stride, int64_t padding,
    int64_t dilation, int64_t groups, const OptTensor& residual, const OptTensor& prev_y,
    const OptTensor& prev_scale, const OptTensor& prev_shift, const OptTensor& prev_mean,
    const OptTensor& prev_invstd) {
  const ConvBwdDataArgs st = stage_conv_bwd_data(
      kCuda, "conv_bwd_data", dz, y, a, b, c, weight, input_size, stride, padding, dilation,
      groups, residual, prev_y, prev_scale, prev_shift, prev_mean, prev_invstd);
  const ConvShape& s = st.s;
  const bool has_prev = st.prev_y.defined();
  DeviceGuard guard(dz.device());
  Tensor ws;
  if (has_prev)
    ws = at::empty({conv_dgrad_workspace_elems(s)}, dz.options().dtype(at::kFloat));
  ConvDgradParams p{};
  p.dz = st.dy.dz.const_data_ptr();
  p.y = st.dy.y.const_data_ptr();
  p.a = st.dy.a.const_data_ptr();
  p.b = st.dy.b.const_data_ptr();
  p.c = st.dy.c.const_data_ptr();
  p.w = st.w.const_data_ptr();
  p.residual = opt_data(st.residual);
  p.prev_y = opt_data(st.prev_y);
  p.prev_scale = opt_data(st.prev_scale);
  p.prev_shift = opt_data(st.prev_shift);
  p.prev_mean = opt_data(st.prev_mean);
  p.prev_invstd = opt_data(st.prev_invstd);
  p.dx = st.dx.data_ptr();
  p.sum_dx = has_prev ? st.sum_dx.data_ptr() : nullptr;
  p.sum_dx_xhat = has_prev ? st.sum_dx_xhat.data_ptr() : nullptr;
  p.workspace = has_prev ? ws.data_ptr() : nullptr;
  p.s = s;
  p.target = device_target(dz.device());
  FR_CUDA_CHECK(launch_conv_dgrad(p, dtype_of(dz.scalar_type()), current_stream()));
  return {st.dx.contiguous(st.out_fmt), st.sum_dx, st.sum_dx_xhat};
}

Tensor conv_bwd_weight(const Tensor& x, const OptTensor& in_scale, const OptTensor& in_shift,
                       bool in_relu, const Tensor& dz, const Tensor& y, const Tensor& a,
                       const Tensor& b, const Tensor& c, const Tensor& weight, int64_t stride,
                       int64_t padding, int64_t dilation, int64_t groups) {
  const ConvBwdWeightArgs st =
      stage_conv_bwd_weight(kCuda, "conv_bwd_weight", x, in_scale, in_shift, dz, y, a, b, c,
                            weight, stride, padding, dilation, groups);
  const ConvShape& s = st.s;
  DeviceGuard guard(x.device());
  Tensor dw = at::empty(weight.sizes(), weight.options().memory_format(st.w_fmt));
  const DeviceTarget target = device_target(x.device());
  Tensor ws = at::empty({conv_wgrad_workspace_elems(s, target)}, x.options().dtype(at::kFloat));
  ConvWgradParams p{};
  p.x = st.x.const_data_ptr();
  p.in_scale = opt_data(st.in_scale);
  p.in_shift = opt_data(st.in_shift);
  p.dz = st.dy.dz.const_data_ptr();
  p.y = st.dy.y.const_data_ptr();
  p.a = st.dy.a.const_data_ptr();
  p.b = st.dy.b.const_data_ptr();
  p.c = st.dy.c.const_data_ptr();
  p.dw = dw.data_ptr();
  p.workspace = ws.data_ptr();
  p.s = s;
  p.in_relu = in_relu;
  p.dw_krsc = st.w_fmt == kCL;
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
