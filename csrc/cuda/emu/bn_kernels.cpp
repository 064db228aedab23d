// cuda/bn_kernels.cu compiled as host C++ for the emulator (README.md): emu.h comes first,
// as a force-included header would.
#include "cuda/emu/emu.h"
#include "cuda/bn_kernels.cu"
