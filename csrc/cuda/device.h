// What the CUDA launchers (conv_cuda.cpp, bn_cuda.cpp) need from the device: a guard, the
// current stream, error checks, the compute capability, the launch plans' target (SMs,
// shared memory), and where their ops register.
// With -DFR_CUDA_EMULATOR the same launchers serve CPU tensors through the CUDA execution
// emulator (cuda/emu/README.md) as the ops of torch.ops.fused_resnet_cuda_emu.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#include "cuda/launch_plan.h"

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
// The emulated device plans like an H100 SXM (sm_90, 132 SMs, 227 KB of opt-in shared memory).
inline DeviceTarget device_target(const at::Device&) { return {90, 132, 232448}; }
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
inline int device_attribute(cudaDeviceAttr attr, const at::Device& device) {
  int value = 0;  // the driver caches these: a cheap call
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attr, device.index()));
  return value;
}
inline int compute_capability_major(const at::Device& device) {
  return device_attribute(cudaDevAttrComputeCapabilityMajor, device);
}
inline DeviceTarget device_target(const at::Device& device) {
  return {10 * compute_capability_major(device) +
              device_attribute(cudaDevAttrComputeCapabilityMinor, device),
          device_attribute(cudaDevAttrMultiProcessorCount, device),
          device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, device)};
}
}  // namespace fr::cuda

#define FR_CUDA_CHECK(expr) C10_CUDA_CHECK(expr)
#define FR_CUDA_OPS fused_resnet
#define FR_CUDA_KEY CUDA

#endif
