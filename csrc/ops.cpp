// The schemas of every C++ op, in one place. Semantics: the function of the same name in
// fused_resnet/reference.py. Kernels: cpu/*.cpp (CPU), cuda/*.cpp (CUDA).
#include <torch/library.h>

#include "op_schemas.h"

TORCH_LIBRARY(fused_resnet, m) {
  fr::define_fused_ops(m);
  // BN backward's coefficients and parameter gradients (reference.bn_backward; an absent
  // parameter's gradient is an empty tensor): a CPU kernel only, for the cpp backend. (The
  // Triton backend registers its own, bn_backward_triton.)
  m.def(
      "bn_backward(Tensor sum_dz, Tensor sum_dz_xhat, int count, Tensor scale, Tensor mean, "
      "Tensor invstd, bool batch_stats, Tensor? weight, Tensor? bias) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // conv_bwd_weight and conv_bwd_data of one conv in one call (reference.conv_bwd): a CPU
  // kernel only, for the cpp backend, which then maps the output gradient once for both.
  m.def(
      "conv_bwd(Tensor x, Tensor? in_scale, Tensor? in_shift, bool in_relu, Tensor dz, "
      "Tensor y, Tensor a, Tensor b, Tensor c, Tensor weight, int stride, int padding, "
      "int dilation, int groups, Tensor? residual, Tensor? prev_mean, Tensor? prev_invstd) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // A 3x3 convolution (stride 1, padding 1) by Winograd's F(4x4, 3x3) from the transformed
  // weight u [36, C, K] (winograd.transform_weight), plus bias, an optional residual and an
  // optional ReLU; `workspace` (scratch, overwritten) holds its intermediates when large
  // enough. Also returns whether the whole output is finite (else the caller recomputes it
  // directly). A CPU kernel only, for eval blocks on the CPU (fused_resnet/winograd.py).
  m.def("winograd_conv3x3(Tensor x, Tensor u, Tensor bias, Tensor? residual, bool relu, "
        "Tensor(a!)? workspace=None) -> (Tensor, bool)");
  // Test-only: the CPU twins of the CUDA conv_fwd / conv_bwd_data / conv_bwd_weight
  // (cpu/conv_igemm_cpu.cpp), same args, same semantics. The leading underscore keeps them
  // out of the public op set.
  m.def(
      "_conv_fwd_igemm(Tensor x, Tensor weight, int stride, int padding, int dilation, "
      "int groups, Tensor? in_scale, Tensor? in_shift, bool in_relu, Tensor? out_scale, "
      "Tensor? out_shift, Tensor? residual, Tensor? res_scale, Tensor? res_shift, "
      "bool out_relu, bool stats) -> (Tensor, Tensor, Tensor)");
  m.def(
      "_conv_bwd_data_igemm(Tensor dz, Tensor y, Tensor a, Tensor b, Tensor c, Tensor weight, "
      "int[] input_size, int stride, int padding, int dilation, int groups, Tensor? residual, "
      "Tensor? prev_y, Tensor? prev_scale, Tensor? prev_shift, Tensor? prev_mean, "
      "Tensor? prev_invstd) -> (Tensor, Tensor, Tensor)");
  m.def(
      "_conv_bwd_weight_igemm(Tensor x, Tensor? in_scale, Tensor? in_shift, bool in_relu, "
      "Tensor dz, Tensor y, Tensor a, Tensor b, Tensor c, Tensor weight, int stride, "
      "int padding, int dilation, int groups) -> Tensor");
}
