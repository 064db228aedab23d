// CUDA launchers of bn_finalize, block_end, block_end_bwd: argument checks, device guard,
// current stream, dtype mapping; the kernels live in bn_kernels.cu.
#include <torch/library.h>

#include "cuda/device.h"
#include "cuda/kernels.h"
#include "op_utils.h"

namespace fr::cuda {
namespace {

DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat;
    case at::kDouble: return DType::kDouble;
    case at::kHalf: return DType::kHalf;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "fused_resnet: unsupported dtype ", t);
  }
}

void check_cuda(const Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(on_device(t), op, ": ", name, " must be a ", kDeviceName, " tensor, got ",
              t.device());
}

const void* opt_data(const OptTensor& t) { return t ? t->const_data_ptr() : nullptr; }

std::tuple<Tensor, Tensor, Tensor> bn_finalize(
    const Tensor& mean_in, const Tensor& m2_in, int64_t count, const OptTensor& weight,
    const OptTensor& bias, const OptTensor& running_mean, const OptTensor& running_var,
    const OptTensor& num_batches_tracked, std::optional<double> momentum, double eps,
    bool update_running_stats) {
  check_cuda(mean_in, "bn_finalize", "mean");
  check_bn_finalize(mean_in, m2_in, count, weight, bias, running_mean, running_var,
                    num_batches_tracked, momentum, update_running_stats);
  DeviceGuard guard(mean_in.device());
  const auto sd = mean_in.scalar_type();
  const Tensor mean = mean_in.contiguous(), m2 = m2_in.contiguous();
  const OptTensor w = working_copy(weight, sd), b = working_copy(bias, sd);
  Tensor scale = at::empty_like(mean), shift = at::empty_like(mean), invstd = at::empty_like(mean);
  Tensor rm, rv, nbt;
  if (update_running_stats) {
    rm = working_copy(*running_mean, sd);
    rv = working_copy(*running_var, sd);
    if (num_batches_tracked) nbt = working_copy(*num_batches_tracked, at::kLong);
  }
  BnFinalizeParams p{};
  p.mean = mean.const_data_ptr();
  p.m2 = m2.const_data_ptr();
  p.weight = opt_data(w);
  p.bias = opt_data(b);
  p.scale = scale.data_ptr();
  p.shift = shift.data_ptr();
  p.invstd = invstd.data_ptr();
  p.running_mean = rm.defined() ? rm.data_ptr() : nullptr;
  p.running_var = rv.defined() ? rv.data_ptr() : nullptr;
  p.num_batches_tracked = nbt.defined() ? nbt.data_ptr<int64_t>() : nullptr;
  p.C = mean.numel();
  p.count = count;
  p.momentum = momentum.value_or(0.0);
  p.has_momentum = momentum.has_value();
  p.eps = eps;
  p.update = update_running_stats;
  p.target = device_target(mean_in.device());
  FR_CUDA_CHECK(launch_bn_finalize(p, dtype_of(sd), current_stream()));
  if (update_running_stats) {
    copy_back(*running_mean, rm);
    copy_back(*running_var, rv);
    if (num_batches_tracked) copy_back(*num_batches_tracked, nbt);
  }
  return {scale, shift, invstd};
}

Tensor block_end(const Tensor& y_in, const Tensor& scale_in, const Tensor& shift_in,
                 const Tensor& residual_in, const OptTensor& res_scale,
                 const OptTensor& res_shift, const OptTensor& branch_scale) {
  check_cuda(y_in, "block_end", "y");
  check_block_end(y_in, scale_in, shift_in, residual_in, res_scale, res_shift);
  check_branch_scale(branch_scale, y_in, "block_end");
  DeviceGuard guard(y_in.device());
  const auto fmt = memory_format(y_in);
  // Same memory order for all operands (a copy only when residual's layout differs).
  const Tensor y = y_in.contiguous(fmt), res = residual_in.contiguous(fmt);
  const Tensor scale = scale_in.contiguous(), shift = shift_in.contiguous();
  const OptTensor rs = contiguous(res_scale), rb = contiguous(res_shift);
  const OptTensor bs = contiguous(branch_scale);
  Tensor out = at::empty(y.sizes(), y.options().memory_format(fmt));
  BlockEndParams p{};
  p.y = y.const_data_ptr();
  p.residual = res.const_data_ptr();
  p.out = out.data_ptr();
  p.scale = scale.const_data_ptr();
  p.shift = shift.const_data_ptr();
  p.res_scale = opt_data(rs);
  p.res_shift = opt_data(rb);
  p.branch_scale = opt_data(bs);
  p.per_sample = y.numel() / std::max<int64_t>(y.size(0), 1);
  p.L = layout_of(y.sizes(), fmt);
  p.target = device_target(y_in.device());
  FR_CUDA_CHECK(launch_block_end(p, dtype_of(y.scalar_type()), current_stream()));
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> block_end_bwd(
    const Tensor& d_out_in, const Tensor& out_in, const Tensor& y_in, const Tensor& mean_in,
    const Tensor& invstd_in, const OptTensor& y_d_in, const OptTensor& mean_d_in,
    const OptTensor& invstd_d_in, const OptTensor& branch_scale) {
  check_cuda(d_out_in, "block_end_bwd", "d_out");
  check_block_end_bwd(d_out_in, out_in, y_in, mean_in, invstd_in, y_d_in, mean_d_in, invstd_d_in);
  check_branch_scale(branch_scale, d_out_in, "block_end_bwd");
  const OptTensor bs = contiguous(branch_scale);
  DeviceGuard guard(d_out_in.device());
  const auto fmt = memory_format(d_out_in);
  const Tensor d_out = d_out_in.contiguous(fmt), out = out_in.contiguous(fmt),
               y = y_in.contiguous(fmt);
  const Tensor mean = mean_in.contiguous(), invstd = invstd_in.contiguous();
  const bool has_d = y_d_in.has_value();
  const Tensor y_d = has_d ? y_d_in->contiguous(fmt) : Tensor();
  const Tensor mean_d = has_d ? mean_d_in->contiguous() : Tensor();
  const Tensor invstd_d = has_d ? invstd_d_in->contiguous() : Tensor();
  const Layout L = layout_of(d_out.sizes(), fmt);
  TORCH_CHECK(L.C < 65536, "block_end_bwd: at most 65535 channels on CUDA, got ", L.C);
  Tensor dz = at::empty(d_out.sizes(), d_out.options().memory_format(fmt));
  Tensor sum_dz = at::empty({L.C}, mean.options()), sum_dz_xhat = at::empty({L.C}, mean.options());
  Tensor sum_dz_xhat_d = has_d ? at::empty({L.C}, mean.options()) : empty_stats(d_out);
  Tensor workspace = at::empty({block_end_bwd_workspace_elems(L)}, mean.options());
  BlockEndBwdParams p{};
  p.d_out = d_out.const_data_ptr();
  p.out = out.const_data_ptr();
  p.y = y.const_data_ptr();
  p.y_d = has_d ? y_d.const_data_ptr() : nullptr;
  p.dz = dz.data_ptr();
  p.mean = mean.const_data_ptr();
  p.invstd = invstd.const_data_ptr();
  p.mean_d = has_d ? mean_d.const_data_ptr() : nullptr;
  p.invstd_d = has_d ? invstd_d.const_data_ptr() : nullptr;
  p.sum_dz = sum_dz.data_ptr();
  p.sum_dz_xhat = sum_dz_xhat.data_ptr();
  p.sum_dz_xhat_d = has_d ? sum_dz_xhat_d.data_ptr() : nullptr;
  p.workspace = workspace.data_ptr();
  p.branch_scale = opt_data(bs);
  p.per_sample = d_out.numel() / std::max<int64_t>(d_out.size(0), 1);
  p.L = L;
  p.target = device_target(d_out_in.device());
  FR_CUDA_CHECK(launch_block_end_bwd(p, dtype_of(d_out.scalar_type()), current_stream()));
  return {dz, sum_dz, sum_dz_xhat, sum_dz_xhat_d};
}

}  // namespace

TORCH_LIBRARY_IMPL(FR_CUDA_OPS, FR_CUDA_KEY, m) {
  m.impl("bn_finalize", &bn_finalize);
  m.impl("block_end", &block_end);
  m.impl("block_end_bwd", &block_end_bwd);
}

}  // namespace fr::cuda
