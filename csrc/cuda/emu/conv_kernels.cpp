// The conv kernels (cuda/conv_fwd.cu, conv_dgrad.cu, conv_wgrad.cu) compiled as host C++ for the
// emulator (README.md), in one translation unit: emu.h comes first, as a force-included header
// would.
#include "cuda/emu/emu.h"
#include "cuda/conv_dgrad.cu"
#include "cuda/conv_fwd.cu"
#include "cuda/conv_wgrad.cu"
