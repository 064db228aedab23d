// The memory view every per-channel loop (CPU and CUDA) is written against.
#pragma once

#include "common/macros.h"

namespace fr {

// Logical NCHW tensor in memory as [outer, C, inner]: element (o, c, i) lives at
// (o*C + c)*inner + i. Contiguous NCHW: outer=N, inner=H*W. Channels-last: outer=N*H*W,
// inner=1. All per-channel loops (CPU and CUDA) are written against this view.
struct Layout {
  int64_t outer;
  int64_t C;
  int64_t inner;
  FR_HOST_DEVICE int64_t numel() const { return outer * C * inner; }
  FR_HOST_DEVICE int64_t channel(int64_t idx) const { return (idx / inner) % C; }
};

}  // namespace fr
