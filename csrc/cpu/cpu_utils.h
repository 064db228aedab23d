// Parallel loops over the [outer, C, inner] view (common/macros.h Layout) for the CPU kernels.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common/layout.h"

namespace fr::cpu {

// ~32K elements per task: enough work to amortise the parallel_for overhead.
inline int64_t outer_grain(const Layout& L) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, L.C * L.inner));
}

// f(c, offset, len) for each contiguous run of `len` elements of channel c (len = H*W for
// NCHW, 1 for channels-last), in parallel over `outer`.
template <class F>
void for_each_run(const Layout& L, const F& f) {
  at::parallel_for(0, L.outer, outer_grain(L), [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o)
      for (int64_t c = 0; c < L.C; ++c) f(c, (o * L.C + c) * L.inner, L.inner);
  });
}

// Calls f(std::bool_constant<flags>...) for runtime `flags`, so that a loop body sees them
// as constants: the compiler then drops the dead branches and can vectorise the loop.
template <class F>
void static_flags(F&& f) {
  f();
}
template <class F, class... Rest>
void static_flags(F&& f, bool first, Rest... rest) {
  if (first)
    static_flags([&](auto... bs) { f(std::true_type{}, bs...); }, rest...);
  else
    static_flags([&](auto... bs) { f(std::false_type{}, bs...); }, rest...);
}

// Per-channel reduction with a deterministic result: `outer` is cut into chunks fixed by the
// shape alone (never by the thread count), f(acc, c, offset, len) folds a run into its chunk's
// accumulator for channel c, and the chunks are merged in order by merge(total, part).
template <class Acc, class F, class Merge>
std::vector<Acc> reduce_runs(const Layout& L, const F& f, const Merge& merge) {
  const int64_t grain = outer_grain(L);
  const int64_t nchunk = (L.outer + grain - 1) / grain;
  std::vector<Acc> part(nchunk * L.C);
  at::parallel_for(0, nchunk, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ch = begin; ch < end; ++ch) {
      Acc* acc = part.data() + ch * L.C;
      const int64_t o_end = std::min(L.outer, (ch + 1) * grain);
      for (int64_t o = ch * grain; o < o_end; ++o)
        for (int64_t c = 0; c < L.C; ++c) f(acc[c], c, (o * L.C + c) * L.inner, L.inner);
    }
  });
  std::vector<Acc> total(L.C);
  for (int64_t ch = 0; ch < nchunk; ++ch)
    for (int64_t c = 0; c < L.C; ++c) merge(total[c], part[ch * L.C + c]);
  return total;
}

// K plain sums per channel, accumulated in double.
template <int K>
struct Sums {
  double v[K] = {};
};

template <int K>
inline void add_sums(Sums<K>& total, const Sums<K>& part) {
  for (int k = 0; k < K; ++k) total.v[k] += part.v[k];
}

}  // namespace fr::cpu
