// What the CUDA launchers (conv_cuda.cpp, bn_cuda.cpp) need from the device: a guard, the
// current stream, error checks, the compute capability, and where their ops register.
// With -DFR_CUDA_EMULATOR the same launchers serve CPU tensors through the CUDA execution
// emulator (cuda/emu/README.md) as the ops of torch.ops.fused_resnet_cuda_emu.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#if defined(FR_CUDA_EMULATOR)

namespace fr::emu {
const char* last_fault();
cudaError_t get_last_error();
}  // namespace fr::emu

namespace fr::cuda {
struct DeviceGuard {
  explicit DeviceGuard(const at::Device&) {}
};
inline cudaStream_t current_stream() { return nullptr; }
inline bool on_device(const at::Tensor& t) { return t.is_cpu(); }
constexpr const char* kDeviceName = "CPU (CUDA emulator)";
inline int compute_capability_major(const at::Device&) { return 9; }
}  // namespace fr::cuda

#define FR_CUDA_CHECK(expr)                                                        \
  do {                                                                             \
    const cudaError_t fr_err = (expr);                                             \
    ::fr::emu::get_last_error();                                                   \
    TORCH_CHECK(fr_err == cudaSuccess, ::fr::emu::last_fault());                   \
  } while (0)
#define FR_CUDA_OPS fused_resnet_cuda_emu
#define FR_CUDA_KEY CPU

#else

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace fr::cuda {
using DeviceGuard = c10::cuda::CUDAGuard;
inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }
inline bool on_device(const at::Tensor& t) { return t.is_cuda(); }
constexpr const char* kDeviceName = "CUDA";
inline int compute_capability_major(const at::Device& device) {
  int major = 0;
  C10_CUDA_CHECK(
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device.index()));
  return major;
}
}  // namespace fr::cuda

#define FR_CUDA_CHECK(expr) C10_CUDA_CHECK(expr)
#define FR_CUDA_OPS fused_resnet
#define FR_CUDA_KEY CUDA

#endif
