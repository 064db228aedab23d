// The schemas of torch.ops.fused_resnet_cuda_emu: the cuda backend's launchers
// (cuda/conv_cuda.cpp, cuda/bn_cuda.cpp, built with -DFR_CUDA_EMULATOR) register their CPU
// kernels there, and fused_resnet/ops.py serves them as backend "cuda" on CPU tensors under
// FUSED_RESNET_CUDA_EMULATOR=1. tests/test_cuda_emu_ops.py builds this library.
#include "op_schemas.h"

TORCH_LIBRARY(fused_resnet_cuda_emu, m) { fr::define_fused_ops(m); }
