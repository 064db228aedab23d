// The schemas of the six fused ops, in one place: registered by ops.cpp for fused_resnet
// and by the CUDA emulator's module (cuda/emu/module.cpp) for fused_resnet_cuda_emu.
// Semantics: the functions of the same names in fused_resnet/reference.py.
#pragma once

#include <torch/library.h>

namespace fr {

inline void define_fused_ops(torch::Library& m) {
  m.def(
      "conv_fwd(Tensor x, Tensor weight, int stride, int padding, int dilation, int groups, "
      "Tensor? in_scale, Tensor? in_shift, bool in_relu, Tensor? out_scale, Tensor? out_shift, "
      "Tensor? residual, Tensor? res_scale, Tensor? res_shift, bool out_relu, bool stats) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "bn_finalize(Tensor mean, Tensor m2, int count, Tensor? weight, Tensor? bias, "
      "Tensor(a!)? running_mean, Tensor(b!)? running_var, Tensor(c!)? num_batches_tracked, "
      "float? momentum, float eps, bool update_running_stats) -> (Tensor, Tensor, Tensor)");
  m.def(
      "block_end(Tensor y, Tensor scale, Tensor shift, Tensor residual, Tensor? res_scale, "
      "Tensor? res_shift, Tensor? branch_scale=None) -> Tensor");
  m.def(
      "block_end_bwd(Tensor d_out, Tensor out, Tensor y, Tensor mean, Tensor invstd, "
      "Tensor? y_d, Tensor? mean_d, Tensor? invstd_d, Tensor? branch_scale=None) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "conv_bwd_data(Tensor dz, Tensor y, Tensor a, Tensor b, Tensor c, Tensor weight, "
      "int[] input_size, int stride, int padding, int dilation, int groups, Tensor? residual, "
      "Tensor? prev_y, Tensor? prev_scale, Tensor? prev_shift, Tensor? prev_mean, "
      "Tensor? prev_invstd) -> (Tensor, Tensor, Tensor)");
  m.def(
      "conv_bwd_weight(Tensor x, Tensor? in_scale, Tensor? in_shift, bool in_relu, Tensor dz, "
      "Tensor y, Tensor a, Tensor b, Tensor c, Tensor weight, int stride, int padding, "
      "int dilation, int groups) -> Tensor");
}

}  // namespace fr
