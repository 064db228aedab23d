// The two hooks through which the kernels launch and declare shared memory, so that the same
// sources also run in the CUDA execution emulator (cuda/emu/, -DFR_CUDA_EMULATOR). Under nvcc
// they are plain CUDA: the generated PTX is the same as without them.
//   FR_LAUNCH(grid, block, smem, stream, kernel)(args...)
//       == kernel<<<grid, block, smem, stream>>>(args...)
//   FR_SHARED(type, name, dims);  ==  __shared__ type name dims;
#pragma once

#if defined(FR_CUDA_EMULATOR)
#ifndef FR_LAUNCH
#error "emulator builds force-include cuda/emu/emu.h (g++ -include cuda/emu/emu.h)"
#endif
#else
#define FR_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define FR_SHARED(type, name, dims) __shared__ type name dims
#endif
