// Shared by the CPU (.cpp, host compiler) and CUDA (.cu, nvcc) code: no torch headers here.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FR_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FR_HOST_DEVICE inline
#endif

namespace fr {

// Overloads instead of std:: so the same call works in device code.
FR_HOST_DEVICE float fr_sqrt(float v) { return sqrtf(v); }
FR_HOST_DEVICE double fr_sqrt(double v) { return sqrt(v); }

}  // namespace fr
